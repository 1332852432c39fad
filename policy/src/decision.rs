//! The decision: [`Policy::decide`] turns an [`EgressRequest`] into a [`Decision`].
//!
//! Order (README, "Decision semantics"): the request must name a valid destination; then enforced DENY
//! rules (any match denies), then enforced ALLOW rules (any match allows), else `defaultAction`.
//! Dry-run rules are evaluated as if they were enforced too, and what that would have decided is reported
//! beside the real outcome, never instead of it.

use super::guardrail::Guardrails;
use super::host::{NormalizedHost, authority_parts, is_istio_cluster_sni, normalize_host};
use super::identity::{Caller, Identity};
use super::index::{RuleIndex, Wanted, kind, kind_of};
use super::rule::{HttpInput, MatchInput, Rule};
use super::verdict::Verdict;

pub use super::outcome::{
    Decision, DryRunVerdict, Explanation, Facts, OwnedIdentity, Reason, RuleTrace,
};
pub use super::request::{EgressRequest, HttpRequest, Protocol};

/// Top-level settings of a rule set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Outcome when no rule matches.
    pub default_action: Verdict,
    /// Trusted SPIFFE trust domains, sorted.
    pub trust_domains: Vec<String>,
    /// Deny HTTP requests whose SNI differs from their host.
    pub require_sni_matches_host: bool,
    /// Guardrails on tenant rule files; empty when the platform rules have no `tenants:` section.
    pub tenants: Guardrails,
}

/// A compiled rule set. Immutable: reloads build a new one and swap it in.
#[derive(Debug)]
pub struct Policy {
    settings: Settings,
    rules: Vec<Rule>,
    files: Vec<String>,
    digest: String,
    /// Finds candidate rules by host (and namespace) instead of scanning them all.
    index: RuleIndex,
    has_dry_run: bool,
}

// === impl Policy ===

impl Policy {
    pub(super) fn new(
        settings: Settings,
        rules: Vec<Rule>,
        files: Vec<String>,
        digest: String,
    ) -> Self {
        // Compiling pushes rules one by one; at 100k rules the spare capacity alone is megabytes.
        let mut rules = rules;
        rules.shrink_to_fit();
        Self {
            index: RuleIndex::new(&rules),
            has_dry_run: rules.iter().any(|r| r.dry_run),
            settings,
            rules,
            files,
            digest,
        }
    }

    /// The top-level settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// All rules, in evaluation order (files in the order read, rules in file order).
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The position of `rule` in [`Policy::rules`], when it is one of this policy's rules (a decision's
    /// rules are): found from its address, so it costs no search and rules need not store it.
    pub fn rule_position(&self, rule: &Rule) -> Option<usize> {
        let offset = std::ptr::from_ref(rule)
            .addr()
            .checked_sub(self.rules.as_ptr().addr())?;
        let position = offset / std::mem::size_of::<Rule>();
        self.rules
            .get(position)
            .filter(|candidate| std::ptr::eq(*candidate, rule))
            .map(|_| position)
    }

    /// The files the policy was compiled from.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// SHA-256 over the files' base names and contents: equal digests mean equal rule sets.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Decides a request. Pure and allocation-free; costs about the same whatever the number of rules.
    /// The decision borrows the rules from the policy and its [`Facts`] from the request.
    pub fn decide<'a>(&'a self, request: &EgressRequest<'a>) -> Decision<'a> {
        self.decide_with(request, |input| {
            let candidates = self.index.candidates(input.host);
            move |wanted, input: &MatchInput<'_>| {
                self.index.first(&candidates, &self.rules, wanted, input)
            }
        })
    }

    /// The normalised destination host of `request`, or why `decide` refuses the request before any
    /// rule is consulted (`no_destination_host`, `invalid_host`, `sni_host_mismatch`): the first step of
    /// [`Policy::decide`], for tools that reason about a destination without deciding (`query`).
    pub fn destination_host<'r: 's, 's>(
        &self,
        request: &EgressRequest<'r>,
        scratch: &'s mut Option<NormalizedHost>,
    ) -> Result<&'s str, Reason> {
        self.destination(request, scratch).1
    }

    /// Decides a request by checking every rule in order, without the index: the reference the index is
    /// tested against (property tests, benchmarks). Same results as [`Policy::decide`], in linear time.
    #[doc(hidden)]
    pub fn decide_linear<'a>(&'a self, request: &EgressRequest<'a>) -> Decision<'a> {
        self.decide_with(request, |_| {
            |wanted: Wanted, input: &MatchInput<'_>| {
                let first = |mask: u8| {
                    self.rules
                        .iter()
                        .find(|r| kind_of(r) & mask != 0 && r.check(input).is_ok())
                };
                first(wanted.primary).or_else(|| first(wanted.fallback))
            }
        })
    }

    /// The decision procedure, given `finder(input)`, which prepares for a request (the index looks up
    /// its host's buckets once) and returns `first(wanted, input)`: the first rule in rule order of a
    /// kind in `wanted.primary` (a mask of `index::kind` bits) that matches `input`, or failing that the
    /// first of a kind in `wanted.fallback`.
    fn decide_with<'a, F>(
        &'a self,
        request: &EgressRequest<'a>,
        finder: impl FnOnce(&MatchInput<'_>) -> F,
    ) -> Decision<'a>
    where
        F: Fn(Wanted, &MatchInput<'_>) -> Option<&'a Rule>,
    {
        let mut scratch = None;
        let (facts, host) = self.read(request, &mut scratch);
        let host = match host {
            Ok(host) => host,
            Err(reason) => return Decision::refused_with(reason, facts),
        };
        let input = match_input(request, &facts, host);
        let first = finder(&input);

        // Any matching DENY decides; else the first matching ALLOW.
        let enforced = Wanted {
            primary: kind::DENY,
            fallback: kind::ALLOW,
        };
        let mut decision = match first(enforced, &input) {
            Some(rule) => {
                let reason = match rule.action {
                    Verdict::Deny => Reason::DeniedByRule,
                    Verdict::Allow => Reason::AllowedByRule,
                };
                Decision {
                    verdict: reason.verdict(),
                    reason,
                    rule: Some(rule),
                    dry_run: None,
                    facts,
                }
            }
            None => self.default_decision(facts),
        };
        if self.has_dry_run {
            decision.dry_run = self.dry_run(&input, facts, first);
        }
        decision
    }

    /// Decides a request and records how every rule fared. Slower than `decide`; for `explain`.
    pub fn explain<'a>(&'a self, request: &EgressRequest<'a>) -> Explanation<'a> {
        let decision = self.decide(request);
        let identity = decision.facts.caller;
        let identity_problem = match Caller::parse(request.principal) {
            Caller::Missing => {
                Some("no principal (the connection presented no client certificate)")
            }
            Caller::Malformed => {
                Some("principal is not a SPIFFE ID of the form spiffe://<td>/ns/<ns>/sa/<sa>")
            }
            Caller::Spiffe(_) if identity.is_none() => Some("trust domain is not in trustDomains"),
            Caller::Spiffe(_) => None,
        };
        let owned_identity = identity.map(|id| OwnedIdentity {
            trust_domain: id.trust_domain.to_owned(),
            namespace: id.namespace.to_owned(),
            service_account: id.service_account.to_owned(),
        });
        let mut scratch = None;
        let (facts, host) = self.read(request, &mut scratch);
        let Ok(host) = host else {
            return Explanation {
                decision,
                identity: owned_identity,
                identity_problem,
                host: None,
                rules: Vec::new(),
            };
        };
        let input = match_input(request, &facts, host);
        let rules = self
            .rules
            .iter()
            .map(|rule| RuleTrace {
                rule,
                outcome: rule.check(&input),
            })
            .collect();
        Explanation {
            decision,
            identity: owned_identity,
            identity_problem,
            host: Some(host.to_owned()),
            rules,
        }
    }

    fn default_decision<'a>(&self, facts: Facts<'a>) -> Decision<'a> {
        let reason = match self.settings.default_action {
            Verdict::Allow => Reason::DefaultAllow,
            Verdict::Deny if facts.caller.is_some() => Reason::NoMatchingRule,
            Verdict::Deny => Reason::InvalidPrincipal,
        };
        Decision {
            verdict: reason.verdict(),
            reason,
            rule: None,
            dry_run: None,
            facts,
        }
    }

    /// The decision with dry-run rules enforced too, if any dry-run rule matched.
    fn dry_run<'a>(
        &self,
        input: &MatchInput<'_>,
        facts: Facts<'a>,
        first: impl Fn(Wanted, &MatchInput<'_>) -> Option<&'a Rule>,
    ) -> Option<DryRunVerdict<'a>> {
        let first_dry_run = first(Wanted::first_of(kind::DRY_DENY | kind::DRY_ALLOW), input)?;
        let with_dry_run_enforced = Wanted {
            primary: kind::DENY | kind::DRY_DENY,
            fallback: kind::ALLOW | kind::DRY_ALLOW,
        };
        let decider = first(with_dry_run_enforced, input);
        Some(match decider {
            Some(rule) if rule.dry_run => DryRunVerdict {
                rule,
                verdict: rule.action,
            },
            Some(rule) => DryRunVerdict {
                rule: first_dry_run,
                verdict: rule.action,
            },
            None => DryRunVerdict {
                rule: first_dry_run,
                verdict: self.default_decision(facts).verdict,
            },
        })
    }

    fn trusted<'a>(&self, caller: Caller<'a>) -> Option<Identity<'a>> {
        match caller {
            Caller::Spiffe(id)
                if self
                    .settings
                    .trust_domains
                    .iter()
                    .any(|td| td == id.trust_domain) =>
            {
                Some(id)
            }
            _ => None,
        }
    }

    /// Reads who is calling and where to from `request`: the facts a decision is made on, and the
    /// normalised destination host or the reason the request cannot be decided on it.
    fn read<'r: 's, 's>(
        &self,
        request: &EgressRequest<'r>,
        scratch: &'s mut Option<NormalizedHost>,
    ) -> (Facts<'r>, Result<&'s str, Reason>) {
        let (host, normalized) = self.destination(request, scratch);
        let facts = Facts {
            caller: self.trusted(Caller::parse(request.principal)),
            host,
            port: request.port,
        };
        (facts, normalized)
    }

    /// The destination host as the request spelled it (port dropped; empty when there is none), and
    /// its normalised form or the reason the request cannot be decided on it. The normalised host
    /// borrows from the request, or from `scratch` when normalising had to rewrite it.
    fn destination<'r: 's, 's>(
        &self,
        request: &EgressRequest<'r>,
        scratch: &'s mut Option<NormalizedHost>,
    ) -> (&'r str, Result<&'s str, Reason>) {
        let Some(http) = request.http else {
            let sni = [request.destination_service, request.sni]
                .into_iter()
                .find(|s| is_destination_sni(s));
            return match sni {
                Some(sni) => (sni, normalize_host(sni, scratch).ok_or(Reason::InvalidHost)),
                None => ("", Err(Reason::NoDestinationHost)),
            };
        };
        if http.authority.is_empty() {
            return ("", Err(Reason::NoDestinationHost));
        }
        let (raw, host) = authority_parts(http.authority, scratch);
        let host = host
            .ok_or(Reason::InvalidHost)
            .and_then(|host| self.agrees_with_sni(host, request.sni));
        (raw, host)
    }

    /// `host`, unless the TLS SNI names another one and the settings say they must agree.
    fn agrees_with_sni<'s>(&self, host: &'s str, sni: &str) -> Result<&'s str, Reason> {
        if is_destination_sni(sni) {
            // An SNI that is no host name (bytes that are not UTF-8 arrive as U+FFFD) is never a
            // legitimate client's: refused as such, whether or not SNI and host must agree.
            let mut sni_scratch = None;
            let sni = normalize_host(sni, &mut sni_scratch).ok_or(Reason::InvalidHost)?;
            if self.settings.require_sni_matches_host && sni != host {
                return Err(Reason::SniHostMismatch);
            }
        }
        Ok(host)
    }
}

/// True for an SNI that names where the caller is going: present, and not Istio's auto-generated SNI,
/// which names the gateway's cluster.
fn is_destination_sni(sni: &str) -> bool {
    !sni.is_empty() && !is_istio_cluster_sni(sni)
}

/// What rules are matched against: the facts, the normalised host, and the HTTP method and path
/// (without its query string).
fn match_input<'a>(
    request: &EgressRequest<'a>,
    facts: &Facts<'a>,
    host: &'a str,
) -> MatchInput<'a> {
    MatchInput {
        identity: facts.caller,
        host,
        port: facts.port,
        http: request.http.map(|http| HttpInput {
            method: http.method,
            path: http.path_without_query(),
        }),
    }
}

#[cfg(test)]
mod tests;
