//! Cheap checks for rules that are valid but can never do anything, or do less than they seem to.

use std::fmt;

use super::decision::Policy;
use super::matcher::{HostPattern, StringPattern};
use super::rule::{FromConditions, Rule};
use super::source::Location;
use super::verdict::Verdict;

/// Something valid but probably not what the author meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileWarning {
    /// Where it is.
    pub location: Location,
    /// What is suspicious.
    pub message: String,
}

impl fmt::Display for CompileWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: warning: {}", self.location, self.message)
    }
}

/// `*.x` patterns (exactly one label here) where a deeper name slipping past them widens what a rule
/// lets through: a DENY rule's `to.hosts`, and any rule's `to.notHosts`. Someone used to Istio, whose
/// `*.x` matches any depth, writes `*.x` meaning `**.x`; in an ALLOW rule's `to.hosts` the narrower
/// reading only refuses more, so it is not reported.
fn one_label_wildcards_that_leak(rule: &Rule) -> impl Iterator<Item = (&'static str, &str)> {
    let to = rule.to.as_ref();
    let hosts = to
        .filter(|_| rule.action == Verdict::Deny)
        .into_iter()
        .flat_map(|t| t.hosts.iter().map(|h| ("to.hosts", h)));
    let not_hosts = to
        .into_iter()
        .flat_map(|t| t.not_hosts.iter().map(|h| ("to.notHosts", h)));
    hosts
        .chain(not_hosts)
        .filter_map(|(field, host)| match host {
            HostPattern::OneLabel(suffix) => Some((field, suffix.as_str())),
            _ => None,
        })
}

/// Lists rules that can never match, and similar cheap-to-spot mistakes.
pub fn lint(policy: &Policy) -> Vec<CompileWarning> {
    let mut warnings = Vec::new();
    let location = |rule: &Rule| Location {
        file: policy.files()[rule.origin.file].clone(),
        line: rule.origin.line,
        column: 1,
    };
    let catch_all_deny = policy
        .rules()
        .iter()
        .find(|r| r.action == Verdict::Deny && !r.dry_run && r.from.is_none() && r.to.is_none());
    for rule in policy.rules() {
        if let Some(deny) = catch_all_deny
            && rule.action == Verdict::Allow
        {
            warnings.push(CompileWarning {
                location: location(rule),
                message: format!(
                    "rule {:?} can never allow anything: DENY rule {:?} matches every request and DENY rules are evaluated first",
                    rule.name, deny.name
                ),
            });
        }
        for (field, suffix) in one_label_wildcards_that_leak(rule) {
            let effect = match field {
                "to.hosts" => "so deeper names escape this DENY rule",
                _ => "so deeper names are not excluded and the rule applies to them",
            };
            warnings.push(CompileWarning {
                location: location(rule),
                message: format!(
                    "rule {:?}: {field} \"*{suffix}\" matches exactly one label (x{suffix}, not x.y{suffix}; Istio's \"*.\" matches any depth), {effect}; write \"**{suffix}\" to cover any depth",
                    rule.name
                ),
            });
        }
        for principal in rule.from.iter().flat_map(|f| f.principals.iter()) {
            if let StringPattern::Exact(p) | StringPattern::Prefix(p) = principal {
                let td = p.split('/').next().unwrap_or_default();
                let complete_td = matches!(principal, StringPattern::Exact(_)) || p.contains('/');
                if complete_td && !policy.settings().trust_domains.iter().any(|t| t == td) {
                    warnings.push(CompileWarning {
                        location: location(rule),
                        message: format!(
                            "rule {:?}: principal {p:?} is in trust domain {td:?}, which is not in trustDomains, so it never matches",
                            rule.name
                        ),
                    });
                }
            }
        }
    }
    // A deny list (default ALLOW) cannot name callers without a trusted identity by who they are: a
    // positive caller condition needs an identity, so DENY rules scoped that way let them through.
    // A DENY rule with only `not*` conditions and no `to` turns them all away, and then all is well.
    let rejects_every_anonymous_caller = policy.rules().iter().any(|r| {
        r.action == Verdict::Deny
            && !r.dry_run
            && r.to.is_none()
            && r.from.as_ref().is_none_or(|f| !f.has_positive_condition())
    });
    let identity_scoped_deny = policy.rules().iter().find(|r| {
        r.action == Verdict::Deny
            && !r.dry_run
            && r.from
                .as_ref()
                .is_some_and(FromConditions::has_positive_condition)
    });
    if let Some(deny) = identity_scoped_deny
        && policy.settings().default_action == Verdict::Allow
        && !rejects_every_anonymous_caller
    {
        warnings.push(CompileWarning {
            location: location(deny),
            message: format!(
                "defaultAction is ALLOW: callers without a trusted identity (no client certificate, a malformed ID, another trust domain) never match namespaces, serviceAccounts or principals, so DENY rules such as {:?} never apply to them and they are allowed; reject them with a DENY rule `from: {{notPrincipals: [\"*\"]}}`, or prefer defaultAction DENY with ALLOW rules",
                deny.name
            ),
        });
    }
    warnings
}
