//! The domain output of a decision: allow or deny, why, which rule, what it was decided on, and how it
//! was reached.

use super::host::{NormalizedHost, normalize_host};
use super::identity::Identity;
use super::rule::{Condition, Rule};
use super::verdict::Verdict;

/// Why a decision was made. A fixed set: these codes appear in metrics, headers and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// An enforced ALLOW rule matched.
    AllowedByRule,
    /// No rule matched and `defaultAction` is ALLOW.
    DefaultAllow,
    /// An enforced DENY rule matched.
    DeniedByRule,
    /// No rule matched and `defaultAction` is DENY.
    NoMatchingRule,
    /// No rule matched, the default is DENY, and the caller had no usable identity (none, malformed, or
    /// from an untrusted trust domain): says why rules with `from` could not match.
    InvalidPrincipal,
    /// The check names no destination host (no `:authority`; no SNI on TCP).
    NoDestinationHost,
    /// The destination is neither a DNS name nor an IP literal.
    InvalidHost,
    /// The TLS SNI names a different host than the HTTP `:authority` (domain fronting).
    SniHostMismatch,
    /// The check itself could not be read: not a well-formed CheckRequest, too large, compressed, or
    /// cut off. Decided before the rules are consulted.
    InvalidRequest,
    /// The server had too many checks in flight and refused this one without consulting the rules.
    /// Answered with HTTP 503, so it is not mistaken for a policy deny.
    Overloaded,
}

impl Reason {
    /// Every reason, for documentation and for pre-registering metrics.
    pub const ALL: [Self; 10] = [
        Self::AllowedByRule,
        Self::DefaultAllow,
        Self::DeniedByRule,
        Self::NoMatchingRule,
        Self::InvalidPrincipal,
        Self::NoDestinationHost,
        Self::InvalidHost,
        Self::SniHostMismatch,
        Self::InvalidRequest,
        Self::Overloaded,
    ];

    /// The verdict a decision with this reason carries.
    pub fn verdict(self) -> Verdict {
        match self {
            Self::AllowedByRule | Self::DefaultAllow => Verdict::Allow,
            _ => Verdict::Deny,
        }
    }

    /// The stable reason code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllowedByRule => "allowed_by_rule",
            Self::DefaultAllow => "default_allow",
            Self::DeniedByRule => "denied_by_rule",
            Self::NoMatchingRule => "no_matching_rule",
            Self::InvalidPrincipal => "invalid_principal",
            Self::NoDestinationHost => "no_destination_host",
            Self::InvalidHost => "invalid_host",
            Self::SniHostMismatch => "sni_host_mismatch",
            Self::InvalidRequest => "invalid_request",
            Self::Overloaded => "overloaded",
        }
    }
}

/// What dry-run rules would have decided had they been enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DryRunVerdict<'a> {
    /// The dry-run rule that would have decided, or else the first dry-run rule that matched.
    pub rule: &'a Rule,
    /// The outcome with dry-run rules enforced.
    pub verdict: Verdict,
}

/// Who asked to go where, as the policy read it from the request, borrowed from it. Logs and metrics
/// take these from the decision instead of reading the request again, so they cannot name another
/// caller or host than the one decided on (e.g. by skipping the trust-domain check, or by taking
/// Istio's cluster SNI for the destination).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Facts<'a> {
    /// The caller, when it presented a well-formed SPIFFE ID of a trusted trust domain; `None` for
    /// callers that rules with `from` cannot match.
    pub caller: Option<Identity<'a>>,
    /// The destination host the policy picked, as the request spelled it, without a port: the
    /// `:authority` host on HTTP (the whole `:authority` when it is malformed); on TCP
    /// `destination.service`, else the TLS SNI, skipping Istio's cluster SNI. Empty when the request
    /// names none.
    pub host: &'a str,
    /// The destination port.
    pub port: Option<u16>,
}

impl Facts<'_> {
    /// `host` normalised as rules see it (lower case, no trailing dot, canonical IP literal), written
    /// into `scratch` when it has to be rewritten; `None` when it is no valid host.
    pub fn normalized_host<'s>(
        &'s self,
        scratch: &'s mut Option<NormalizedHost>,
    ) -> Option<&'s str> {
        normalize_host(self.host, scratch)
    }
}

/// The outcome of a check. Borrows from the policy (the rules) and from the request (the facts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision<'a> {
    /// Allow or deny.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// The deciding rule, if one decided.
    pub rule: Option<&'a Rule>,
    /// Present when at least one dry-run rule matched.
    pub dry_run: Option<DryRunVerdict<'a>>,
    /// The caller and destination the decision was made on.
    pub facts: Facts<'a>,
}

impl<'a> Decision<'a> {
    /// A deny with `reason` and no rule or facts: for checks refused before the request could be read.
    pub fn refused(reason: Reason) -> Self {
        Self::refused_with(reason, Facts::default())
    }

    /// A deny with `reason` and no rule, about what `facts` say.
    pub(super) fn refused_with(reason: Reason, facts: Facts<'a>) -> Self {
        Self {
            verdict: reason.verdict(),
            reason,
            rule: None,
            dry_run: None,
            facts,
        }
    }

    /// True when the dry-run verdict differs from the enforced one.
    pub fn dry_run_disagrees(&self) -> bool {
        self.dry_run.is_some_and(|d| d.verdict != self.verdict)
    }
}

/// A trusted caller identity, owned so an explanation outlives its request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedIdentity {
    /// Trust domain.
    pub trust_domain: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
}

/// Per-rule result in an explanation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleTrace<'p> {
    /// The rule.
    pub rule: &'p Rule,
    /// `Ok` if it matched, else the first condition it failed.
    pub outcome: Result<(), Condition>,
}

/// A decision with how it was reached.
#[derive(Clone, Debug)]
pub struct Explanation<'a> {
    /// The decision, exactly as `decide` returns it.
    pub decision: Decision<'a>,
    /// The caller, when it had a trusted identity.
    pub identity: Option<OwnedIdentity>,
    /// Why the caller has no trusted identity, when it has none.
    pub identity_problem: Option<&'static str>,
    /// The normalised destination host, when there was a valid one.
    pub host: Option<String>,
    /// Every rule in evaluation order; empty when the request was refused before rules were consulted.
    pub rules: Vec<RuleTrace<'a>>,
}
