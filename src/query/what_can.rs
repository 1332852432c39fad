//! `what-can`: the caller is fixed, so each rule's caller conditions are settled and its destination
//! conditions are the residual.

use std::fmt::Write as _;

use crate::policy::{Identity, OwnedIdentity, Policy, Protocol, Rule, Verdict};

use super::Reach;
use super::caller::{CallerCondition, identity_problem, trusted_identity};
use super::destination::DestinationCondition;
use super::who_can::request_to;

/// What is left of a rule once the caller is fixed.
#[derive(Clone, Debug)]
pub struct DestinationResidual<'p> {
    /// The rule.
    pub rule: &'p Rule,
    /// The destinations it matches.
    pub destination: DestinationCondition<'p>,
}

impl DestinationResidual<'_> {
    fn to_text(&self) -> String {
        format!("{} (rule {})", self.destination.to_text(), self.rule.name)
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "rule": self.rule.name,
            "action": self.rule.action.as_rule_str(),
            "destination": self.destination.to_json(),
        })
    }
}

/// The destinations one caller may reach.
#[derive(Debug)]
pub struct WhatCan<'p> {
    policy: &'p Policy,
    /// The principal as asked ("" for none).
    pub principal: String,
    /// The caller's trusted identity, if the principal gives one.
    pub identity: Option<OwnedIdentity>,
    /// Why the principal gives no trusted identity.
    pub identity_problem: Option<&'static str>,
    /// HTTP requests or TCP connections.
    pub protocol: Protocol,
    /// Enforced ALLOW rules that match the caller.
    pub allowed: Vec<DestinationResidual<'p>>,
    /// Enforced DENY rules that match the caller: they win over any grant.
    pub denied: Vec<DestinationResidual<'p>>,
    /// Dry-run rules that match the caller; they never change a decision.
    pub dry_run: Vec<DestinationResidual<'p>>,
}

/// Where the caller `principal` ("" for none) may go over `protocol`, under `policy`.
pub fn what_can<'p>(policy: &'p Policy, principal: &str, protocol: Protocol) -> WhatCan<'p> {
    let identity = trusted_identity(policy.settings(), principal);
    let mut answer = WhatCan {
        policy,
        principal: principal.to_owned(),
        identity: identity.map(|id| OwnedIdentity {
            trust_domain: id.trust_domain.to_owned(),
            namespace: id.namespace.to_owned(),
            service_account: id.service_account.to_owned(),
        }),
        identity_problem: identity_problem(policy.settings(), principal),
        protocol,
        allowed: Vec::new(),
        denied: Vec::new(),
        dry_run: Vec::new(),
    };
    for rule in policy.rules() {
        let Some(residual) = residual(rule, identity.as_ref(), protocol) else {
            continue;
        };
        match (rule.dry_run, rule.action) {
            (true, _) => answer.dry_run.push(residual),
            (false, Verdict::Allow) => answer.allowed.push(residual),
            (false, Verdict::Deny) => answer.denied.push(residual),
        }
    }
    answer
}

/// The rule's residual for the caller, or `None` when it cannot match the caller (or any destination).
fn residual<'p>(
    rule: &'p Rule,
    identity: Option<&Identity<'_>>,
    protocol: Protocol,
) -> Option<DestinationResidual<'p>> {
    if !CallerCondition::of(rule).matches(identity) {
        return None;
    }
    let destination = DestinationCondition::of(rule.to.as_ref(), rule.action, protocol)?;
    (!destination.is_nowhere()).then_some(DestinationResidual { rule, destination })
}

impl WhatCan<'_> {
    /// True when `decide` allows this caller a request to `host` (as the request names it: the HTTP
    /// authority or the TCP SNI) on `port`, with `method` and `path` (ignored on TCP).
    pub fn allows(&self, host: &str, port: Option<u16>, method: &str, path: &str) -> bool {
        let request = request_to(host, self.protocol, port, method, path);
        let mut scratch = None;
        let Ok(host) = self.policy.destination_host(&request, &mut scratch) else {
            return false;
        };
        let http = super::http_input(self.protocol, method, path);
        let matches =
            |r: &DestinationResidual<'_>| r.destination.matches(r.rule.action, host, port, http);
        super::allowed_by(&self.denied, &self.allowed, self.default(), matches)
    }

    /// The default action: where no rule matches.
    pub fn default(&self) -> Verdict {
        self.policy.settings().default_action
    }

    /// Nowhere, everywhere, or some destinations, when that is certain from the residuals.
    pub fn reach(&self) -> Reach {
        let everywhere = |r: &DestinationResidual<'_>| r.destination.is_everywhere();
        if self.denied.iter().any(everywhere)
            || (self.default() == Verdict::Deny && self.allowed.is_empty())
        {
            Reach::Nothing
        } else if self.denied.is_empty()
            && (self.default() == Verdict::Allow || self.allowed.iter().any(everywhere))
        {
            Reach::Everything
        } else {
            Reach::Some
        }
    }

    /// The carve-outs that take something away from `grant` (share a destination with it).
    pub fn exceptions<'a>(
        &'a self,
        grant: &'a DestinationCondition<'_>,
    ) -> impl Iterator<Item = &'a DestinationResidual<'a>> + 'a {
        self.denied
            .iter()
            .filter(move |deny| deny.destination.overlaps(grant))
    }

    fn caller_text(&self) -> String {
        match (&self.identity, self.identity_problem) {
            (Some(id), _) => format!(
                "namespace {}, service account {} (trust domain {})",
                id.namespace, id.service_account, id.trust_domain
            ),
            (None, problem) => format!(
                "no trusted identity: {}",
                problem.unwrap_or("trust domain is not in trustDomains")
            ),
        }
    }

    /// `principal (protocol) — default DENY`, the caller, then each grant with what DENY rules take
    /// away from it, and the dry-run rules.
    pub fn to_text(&self) -> String {
        let default = self.default();
        let principal = if self.principal.is_empty() {
            "(no principal)"
        } else {
            &self.principal
        };
        let mut out = String::new();
        let protocol = self.protocol.as_str();
        let _ = writeln!(
            out,
            "{principal} ({protocol}) — default {}",
            default.as_rule_str()
        );
        let _ = writeln!(out, "caller: {}", self.caller_text());
        let _ = writeln!(out, "allowed:");
        let anywhere = DestinationCondition::default();
        match (self.reach(), default) {
            (Reach::Nothing, _) => {
                let _ = writeln!(out, "  nothing");
                for deny in self.denied.iter().filter(|d| d.destination.is_everywhere()) {
                    let _ = writeln!(out, "  (rule {} denies every destination)", deny.rule.name);
                }
            }
            // Under a default ALLOW the grants change no decision: only the carve-outs matter.
            (_, Verdict::Allow) => {
                self.write_grant(&mut out, "any host (default ALLOW)", &anywhere)
            }
            (Reach::Everything | Reach::Some, Verdict::Deny) => {
                for grant in &self.allowed {
                    self.write_grant(&mut out, &grant.to_text(), &grant.destination);
                }
            }
        }
        if !self.dry_run.is_empty() {
            let _ = writeln!(out, "dry run (never enforced):");
            for rule in &self.dry_run {
                let _ = writeln!(
                    out,
                    "  {} {}",
                    rule.rule.action.as_rule_str(),
                    rule.to_text()
                );
            }
        }
        out
    }

    fn write_grant(&self, out: &mut String, grant_text: &str, grant: &DestinationCondition<'_>) {
        let _ = writeln!(out, "  {grant_text}");
        for deny in self.exceptions(grant) {
            let _ = writeln!(out, "    except {}", deny.to_text());
        }
    }

    /// The answer as JSON (schema in the README section of `query`).
    pub fn to_json(&self) -> serde_json::Value {
        let list = |residuals: &[DestinationResidual<'_>]| -> Vec<serde_json::Value> {
            residuals.iter().map(DestinationResidual::to_json).collect()
        };
        let allowed: Vec<serde_json::Value> = self
            .allowed
            .iter()
            .map(|grant| {
                let mut json = grant.to_json();
                let except: Vec<&str> = self
                    .exceptions(&grant.destination)
                    .map(|deny| deny.rule.name.as_str())
                    .collect();
                json["except"] = except.into();
                json
            })
            .collect();
        let id = self.identity.as_ref();
        serde_json::json!({
            "query": "what-can",
            "principal": self.principal,
            "protocol": self.protocol.as_str(),
            "caller": {
                "trusted": id.is_some(),
                "trust_domain": id.map(|i| &i.trust_domain),
                "namespace": id.map(|i| &i.namespace),
                "service_account": id.map(|i| &i.service_account),
                "identity_problem": self.identity_problem,
            },
            "default": self.default().as_str(),
            "reach": self.reach().as_str(),
            "allowed": allowed,
            "except": list(&self.denied),
            "dry_run": list(&self.dry_run),
            "rules_sha256": self.policy.digest(),
        })
    }
}
