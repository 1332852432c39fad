//! The decision: [`Policy::decide`] turns an [`EgressRequest`] into a [`Decision`].
//!
//! Order (README, "Decision semantics"): the request must name a valid destination; then enforced DENY
//! rules (any match denies), then enforced ALLOW rules (any match allows), else `defaultAction`.
//! Dry-run rules are evaluated as if they were enforced too, and what that would have decided is reported
//! beside the real outcome, never instead of it.

use super::host::{NormalizedHost, is_istio_cluster_sni, normalize_authority, normalize_host};
use super::identity::{Caller, Identity};
use super::index::{RuleIndex, Wanted, kind, kind_of};
use super::matcher::path_without_query;
use super::rule::{HttpInput, MatchInput, Rule};
use super::verdict::Verdict;

pub use super::outcome::{Decision, DryRunVerdict, Explanation, OwnedIdentity, Reason, RuleTrace};
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
    pub fn decide<'p>(&'p self, request: &EgressRequest<'_>) -> Decision<'p> {
        self.decide_with(request, |input| {
            let candidates = self.index.candidates(input.host);
            move |wanted, input: &MatchInput<'_>| {
                self.index.first(&candidates, &self.rules, wanted, input)
            }
        })
    }

    /// Decides a request by checking every rule in order, without the index: the reference the index is
    /// tested against (property tests, benchmarks). Same results as [`Policy::decide`], in linear time.
    #[doc(hidden)]
    pub fn decide_linear<'p>(&'p self, request: &EgressRequest<'_>) -> Decision<'p> {
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
    fn decide_with<'p, F>(
        &'p self,
        request: &EgressRequest<'_>,
        finder: impl FnOnce(&MatchInput<'_>) -> F,
    ) -> Decision<'p>
    where
        F: Fn(Wanted, &MatchInput<'_>) -> Option<&'p Rule>,
    {
        let caller = Caller::parse(request.principal);
        let mut scratch = None;
        let host = match self.destination(request, &mut scratch) {
            Ok(host) => host,
            Err(reason) => return Decision::refused(reason),
        };
        let input = self.match_input(request, caller, host);
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
                }
            }
            None => self.default_decision(input.identity.is_some()),
        };
        if self.has_dry_run {
            decision.dry_run = self.dry_run(&input, first);
        }
        decision
    }

    /// Decides a request and records how every rule fared. Slower than `decide`; for `explain`.
    pub fn explain<'p>(&'p self, request: &EgressRequest<'_>) -> Explanation<'p> {
        let decision = self.decide(request);
        let caller = Caller::parse(request.principal);
        let identity = self.trusted(caller);
        let identity_problem = match caller {
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
        let Ok(host) = self.destination(request, &mut scratch) else {
            return Explanation {
                decision,
                identity: owned_identity,
                identity_problem,
                host: None,
                rules: Vec::new(),
            };
        };
        let input = self.match_input(request, caller, host);
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

    fn default_decision<'p>(&self, has_identity: bool) -> Decision<'p> {
        let reason = match self.settings.default_action {
            Verdict::Allow => Reason::DefaultAllow,
            Verdict::Deny if has_identity => Reason::NoMatchingRule,
            Verdict::Deny => Reason::InvalidPrincipal,
        };
        Decision {
            verdict: reason.verdict(),
            reason,
            rule: None,
            dry_run: None,
        }
    }

    /// The decision with dry-run rules enforced too, if any dry-run rule matched.
    fn dry_run<'p>(
        &'p self,
        input: &MatchInput<'_>,
        first: impl Fn(Wanted, &MatchInput<'_>) -> Option<&'p Rule>,
    ) -> Option<DryRunVerdict<'p>> {
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
                verdict: self.default_decision(input.identity.is_some()).verdict,
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

    fn match_input<'a>(
        &self,
        request: &EgressRequest<'a>,
        caller: Caller<'a>,
        host: &'a str,
    ) -> MatchInput<'a> {
        MatchInput {
            identity: self.trusted(caller),
            host,
            port: request.port,
            http: request.http.map(|http| HttpInput {
                method: http.method,
                path: path_without_query(http.path),
            }),
        }
    }

    /// The normalised destination host, or the reason the request cannot be decided on it. The host
    /// borrows from the request, or from `scratch` when normalising had to rewrite it.
    fn destination<'a>(
        &self,
        request: &EgressRequest<'a>,
        scratch: &'a mut Option<NormalizedHost>,
    ) -> Result<&'a str, Reason> {
        // Istio's auto-generated SNI names the gateway's cluster, not where the caller is going.
        let real_sni = |sni: &str| !sni.is_empty() && !is_istio_cluster_sni(sni);
        let Some(http) = request.http else {
            let sni = [request.destination_service, request.sni]
                .into_iter()
                .find(|s| real_sni(s))
                .ok_or(Reason::NoDestinationHost)?;
            return normalize_host(sni, scratch).ok_or(Reason::InvalidHost);
        };
        if http.authority.is_empty() {
            return Err(Reason::NoDestinationHost);
        }
        let host = normalize_authority(http.authority, scratch).ok_or(Reason::InvalidHost)?;
        if real_sni(request.sni) {
            // An SNI that is no host name (bytes that are not UTF-8 arrive as U+FFFD) is never a
            // legitimate client's: refused as such, whether or not SNI and host must agree.
            let mut sni_scratch = None;
            let sni = normalize_host(request.sni, &mut sni_scratch).ok_or(Reason::InvalidHost)?;
            if self.settings.require_sni_matches_host && sni != host {
                return Err(Reason::SniHostMismatch);
            }
        }
        Ok(host)
    }
}
