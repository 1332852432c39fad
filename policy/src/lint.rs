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

#[cfg(test)]
mod tests {
    use crate::test_fixtures::*;

    use super::*;

    #[test]
    fn lint_finds_rules_that_can_never_match() {
        let policy = mk_policy(
            r#"
    rules:
    - name: deny-everything
      action: DENY
    - name: allow-google
      to: {hosts: [developers.google.com]}
    - name: foreign
      from: {principals: ["other.domain/ns/a/sa/b"]}
    "#,
        );
        let warnings: Vec<String> = lint(&policy).into_iter().map(|w| w.message).collect();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("allow-google") && w.contains("deny-everything")),
            "{warnings:?}"
        );
        assert!(
            warnings.iter().any(|w| w.contains("other.domain")),
            "{warnings:?}"
        );
        assert!(lint(&mk_policy(DEPLOY_RULES)).is_empty());
        assert!(lint(&mk_policy(SERVICE_ACCOUNT_LEVEL)).is_empty());
        let deny_list: Vec<String> = lint(&mk_policy(NAMESPACE_LEVEL))
            .into_iter()
            .map(|w| w.message)
            .collect();
        assert_eq!(deny_list.len(), 1, "{deny_list:?}");
        assert!(
            deny_list[0].contains("callers without a trusted identity"),
            "{deny_list:?}"
        );
    }

    fn lint_messages(yaml: &str) -> Vec<String> {
        lint(&mk_policy(yaml))
            .into_iter()
            .map(|w| w.to_string())
            .collect()
    }

    #[test]
    fn lint_warns_where_a_one_label_wildcard_lets_deeper_names_through() {
        let cases: &[(&str, &[&str])] = &[
            (
                "rules:\n- name: d\n  action: DENY\n  to: {hosts: [\"*.example.com\"]}\n",
                &[
                    "rules.yaml:2:1: warning: rule \"d\": to.hosts \"*.example.com\"",
                    "**.example.com",
                ],
            ),
            (
                "rules:\n- name: a\n  to: {hosts: [\"**.example.com\"], notHosts: [\"*.internal.example.com\"]}\n",
                &[
                    "rules.yaml:2:1: warning: rule \"a\": to.notHosts \"*.internal.example.com\"",
                    "**.internal.example.com",
                ],
            ),
            (
                "rules:\n- name: ok\n- name: d\n  action: DENY\n  dryRun: true\n  to: {notHosts: [\"*.a.com\"], hosts: [\"*.b.com\"]}\n",
                &[
                    "rules.yaml:3:1: warning: rule \"d\": to.hosts \"*.b.com\"",
                    "rules.yaml:3:1: warning: rule \"d\": to.notHosts \"*.a.com\"",
                ],
            ),
        ];
        for (yaml, expected) in cases {
            let warnings = lint_messages(yaml);
            for fragment in *expected {
                assert!(
                    warnings.iter().any(|w| w.contains(fragment)),
                    "{yaml}: no {fragment:?} in {warnings:?}"
                );
            }
        }
        // Narrower than Istio only refuses more here, or the pattern covers any depth already.
        for quiet in [
            "rules:\n- name: a\n  to: {hosts: [\"*.example.com\"]}\n",
            "rules:\n- name: d\n  action: DENY\n  to: {hosts: [\"**.example.com\", example.com]}\n",
            "rules:\n- name: d\n  action: DENY\n  to: {notHosts: [\"**.example.com\"]}\n",
        ] {
            assert_eq!(lint_messages(quiet), Vec::<String>::new(), "{quiet}");
        }
    }

    #[test]
    fn lint_on_deny_lists_knows_not_only_deny_rules_reach_callers_without_identity() {
        let scoped = "defaultAction: ALLOW\nrules:\n- name: deny-default\n  action: DENY\n  from: {namespaces: [default]}\n";
        let warnings = lint_messages(scoped);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("rules.yaml:3:1: warning: defaultAction is ALLOW")
                && warnings[0].contains("notPrincipals"),
            "{warnings:?}"
        );
        // A DENY rule with only `not*` conditions already turns those callers away.
        let guarded = format!(
            "{scoped}- name: require-mtls\n  action: DENY\n  from: {{notPrincipals: [\"*\"]}}\n"
        );
        assert_eq!(lint_messages(&guarded), Vec::<String>::new());
        // Only the `not*` DENY rules exist: nothing slips through them for lack of identity.
        let not_only = "defaultAction: ALLOW\nrules:\n- name: deny-all-but-prod\n  action: DENY\n  from: {notNamespaces: [prod]}\n";
        assert_eq!(lint_messages(not_only), Vec::<String>::new());
        // A dry-run guard does not count: it enforces nothing.
        let dry_guard = format!(
            "{scoped}- name: require-mtls\n  action: DENY\n  dryRun: true\n  from: {{notPrincipals: [\"*\"]}}\n"
        );
        assert_eq!(lint_messages(&dry_guard).len(), 1);
    }
}
