//! What the filter answers: the outcome of a request (the policy's decision, or a fail-closed deny when
//! the configuration is invalid), the HTTP deny response, and the entries the access log reads. Pure.
//!
//! Everything a client or an access log sees is spelled exactly as the server spells it in its
//! CheckResponse (src/grpc/convert.rs in the server): the 403 body, the `x-egress-authz-reason` header,
//! and the keys `decision`, `reason`, `rule`, `dry_run_rule`, `dry_run_decision`, so one dashboard and
//! one client-side check serve both ways of enforcing.

use egress_authz_policy::{Decision, DryRunVerdict, Reason, Rule, Verdict};

/// Response header that tells the caller (and the gateway's access log) why a request was denied.
pub const REASON_HEADER: &str = "x-egress-authz-reason";

/// The reason code of every deny while the configuration is not a valid rule file. Not one of the
/// server's reasons: the server never serves without valid rules (it keeps the last good ones).
pub const INVALID_CONFIGURATION: &str = "invalid_configuration";

/// Why the filter decided as it did: one of the policy's reasons, or the configuration's failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FilterReason {
    /// The rules decided.
    Policy(Reason),
    /// There are no valid rules: every request is denied.
    InvalidConfiguration,
}

impl FilterReason {
    /// Every reason the filter reports, for pre-registering its counters.
    pub fn all() -> impl Iterator<Item = Self> {
        Reason::ALL
            .into_iter()
            .map(Self::Policy)
            .chain([Self::InvalidConfiguration])
    }

    /// The number of reasons in [`Self::all`].
    pub const COUNT: usize = Reason::ALL.len() + 1;

    /// The position of this reason in [`Self::all`].
    pub fn index(self) -> usize {
        match self {
            // A fieldless enum's cast is its declaration index, which is its place in `Reason::ALL`.
            Self::Policy(reason) => reason as usize,
            Self::InvalidConfiguration => Reason::ALL.len(),
        }
    }

    /// The stable reason code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Policy(reason) => reason.as_str(),
            Self::InvalidConfiguration => INVALID_CONFIGURATION,
        }
    }

    /// The verdict a decision with this reason carries.
    pub fn verdict(self) -> Verdict {
        match self {
            Self::Policy(reason) => reason.verdict(),
            Self::InvalidConfiguration => Verdict::Deny,
        }
    }
}

/// The filter's decision about one request or connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome<'a> {
    /// Allow or deny.
    pub verdict: Verdict,
    /// Why.
    pub reason: FilterReason,
    /// The deciding rule, if one decided.
    pub rule: Option<&'a Rule>,
    /// What dry-run rules would have decided, when one matched.
    pub dry_run: Option<DryRunVerdict<'a>>,
}

impl<'a> Outcome<'a> {
    /// The policy's decision, as the filter reports it.
    pub fn decided(decision: &Decision<'a>) -> Self {
        Self {
            verdict: decision.verdict,
            reason: FilterReason::Policy(decision.reason),
            rule: decision.rule,
            dry_run: decision.dry_run,
        }
    }

    /// The deny every request gets while the configuration is invalid.
    pub fn invalid_configuration() -> Self {
        Self {
            verdict: Verdict::Deny,
            reason: FilterReason::InvalidConfiguration,
            rule: None,
            dry_run: None,
        }
    }

    fn rule_name(&self) -> Option<&'a str> {
        self.rule.map(|rule| rule.name.as_str())
    }

    /// True when the dry-run verdict differs from the enforced one.
    pub fn dry_run_disagrees(&self) -> bool {
        self.dry_run.is_some_and(|d| d.verdict != self.verdict)
    }

    /// The local reply of an HTTP deny; `None` for an allow, which adds nothing upstream (the upstream
    /// is an external host and must learn nothing from the gateway).
    pub fn http_deny(&self) -> Option<DenyResponse> {
        if self.verdict == Verdict::Allow {
            return None;
        }
        let reason = self.reason.as_str();
        let rule = self.rule_name();
        let (header, text) = match rule {
            Some(rule) => (
                format!("{reason}; rule={rule}"),
                format!("egress-authz: {reason} (rule {rule})"),
            ),
            None => (reason.to_owned(), format!("egress-authz: {reason}")),
        };
        Some(DenyResponse {
            status: deny_status(self.reason),
            reason_header: header,
            body: format!("{text}\n"),
        })
    }

    /// The entries the access log shows, as (key, value): the server's dynamic-metadata keys, those
    /// that apply (no rule when none decided, no dry-run entries when no dry-run rule matched).
    pub fn log_entries(&self) -> impl Iterator<Item = (&'static str, &'a str)> {
        let dry_run = self.dry_run;
        [
            Some((log_keys::DECISION, self.verdict.as_str())),
            Some((log_keys::REASON, self.reason.as_str())),
            self.rule_name().map(|rule| (log_keys::RULE, rule)),
            dry_run.map(|d| (log_keys::DRY_RUN_RULE, d.rule.name.as_str())),
            dry_run.map(|d| (log_keys::DRY_RUN_DECISION, d.verdict.as_str())),
        ]
        .into_iter()
        .flatten()
    }
}

/// The HTTP status of a deny: 503 when the decision was shed (only the server sheds, but the mapping is
/// the server's, whole), 403 for every decision about the request itself.
fn deny_status(reason: FilterReason) -> u32 {
    match reason {
        FilterReason::Policy(Reason::Overloaded) => 503,
        _ => 403,
    }
}

/// An HTTP deny as the server's ext_authz answer makes Envoy send it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenyResponse {
    /// 403 (or 503 for a shed check).
    pub status: u32,
    /// The value of [`REASON_HEADER`]: `denied_by_rule; rule=NAME`, or the reason alone.
    pub reason_header: String,
    /// `egress-authz: REASON (rule NAME)` and a newline.
    pub body: String,
}

/// The keys of the decision in the access log: the server's dynamic-metadata keys.
pub mod log_keys {
    /// `allow` or `deny`.
    pub const DECISION: &str = "decision";
    /// The reason code.
    pub const REASON: &str = "reason";
    /// The deciding rule; absent when none decided.
    pub const RULE: &str = "rule";
    /// The dry-run rule that matched, when one did.
    pub const DRY_RUN_RULE: &str = "dry_run_rule";
    /// What dry-run rules would have decided (`allow`/`deny`), when one matched.
    pub const DRY_RUN_DECISION: &str = "dry_run_decision";

    /// Where the filter puts the entry `key`: the property `egress_authz.<key>`, which Envoy keeps in
    /// filter state as `wasm.egress_authz.<key>` (`%FILTER_STATE(wasm.egress_authz.reason:PLAIN)%` in
    /// an access log format). Spelled out, so publishing a decision builds no string.
    pub fn property(key: &str) -> Option<&'static str> {
        match key {
            DECISION => Some("egress_authz.decision"),
            REASON => Some("egress_authz.reason"),
            RULE => Some("egress_authz.rule"),
            DRY_RUN_RULE => Some("egress_authz.dry_run_rule"),
            DRY_RUN_DECISION => Some("egress_authz.dry_run_decision"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
