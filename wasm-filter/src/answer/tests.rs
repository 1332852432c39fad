use egress_authz_policy::{EgressRequest, HttpRequest, Policy, SourceFile, compile};

use super::*;

const RULES: &str = "\
defaultAction: DENY
rules:
  - name: deny-yahoo
    action: DENY
    to:
      hosts: [developer.yahoo.com]
  - name: allow-google
    action: ALLOW
    to:
      hosts: [developers.google.com]
  - name: try-deny-google
    action: DENY
    dryRun: true
    to:
      hosts: [developers.google.com]
";

fn policy() -> Policy {
    compile(&[SourceFile {
        name: "rules.yaml".to_owned(),
        text: RULES.to_owned(),
    }])
    .unwrap()
}

fn http(authority: &str) -> EgressRequest<'_> {
    EgressRequest {
        http: Some(HttpRequest {
            authority,
            method: "GET",
            path: "/",
        }),
        principal: "spiffe://cluster.local/ns/default/sa/sleep",
        ..EgressRequest::default()
    }
}

#[test]
fn rule_deny_names_the_rule_as_the_server_does() {
    let policy = policy();
    let outcome = Outcome::decided(&policy.decide(&http("developer.yahoo.com")));
    let deny = outcome.http_deny().unwrap();
    assert_eq!(deny.status, 403);
    assert_eq!(deny.reason_header, "denied_by_rule; rule=deny-yahoo");
    assert_eq!(
        deny.body,
        "egress-authz: denied_by_rule (rule deny-yahoo)\n"
    );
    assert_eq!(
        outcome.log_entries().collect::<Vec<_>>(),
        [
            ("decision", "deny"),
            ("reason", "denied_by_rule"),
            ("rule", "deny-yahoo")
        ]
    );
}

#[test]
fn deny_without_rule_gives_the_reason_alone() {
    let policy = policy();
    let outcome = Outcome::decided(&policy.decide(&http("example.org")));
    let deny = outcome.http_deny().unwrap();
    assert_eq!(deny.reason_header, "no_matching_rule");
    assert_eq!(deny.body, "egress-authz: no_matching_rule\n");
    assert_eq!(
        outcome.log_entries().collect::<Vec<_>>(),
        [("decision", "deny"), ("reason", "no_matching_rule")]
    );
}

#[test]
fn allow_sends_nothing_and_reports_the_dry_run() {
    let policy = policy();
    let outcome = Outcome::decided(&policy.decide(&http("developers.google.com")));
    assert_eq!(outcome.http_deny(), None);
    assert!(outcome.dry_run_disagrees());
    assert_eq!(
        outcome.log_entries().collect::<Vec<_>>(),
        [
            ("decision", "allow"),
            ("reason", "allowed_by_rule"),
            ("rule", "allow-google"),
            ("dry_run_rule", "try-deny-google"),
            ("dry_run_decision", "deny"),
        ]
    );
}

#[test]
fn invalid_configuration_denies_with_its_own_reason() {
    let outcome = Outcome::invalid_configuration();
    let deny = outcome.http_deny().unwrap();
    assert_eq!(deny.status, 403);
    assert_eq!(deny.reason_header, INVALID_CONFIGURATION);
    assert_eq!(deny.body, "egress-authz: invalid_configuration\n");
    assert!(
        Reason::ALL
            .iter()
            .all(|reason| reason.as_str() != INVALID_CONFIGURATION),
        "a reason of its own"
    );
}

#[test]
fn shed_checks_keep_the_servers_503() {
    let decision = Decision::refused(Reason::Overloaded);
    let deny = Outcome::decided(&decision).http_deny().unwrap();
    assert_eq!(deny.status, 503);
}

#[test]
fn reason_indexes_are_distinct_and_dense() {
    let mut seen: Vec<usize> = FilterReason::all().map(FilterReason::index).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..FilterReason::COUNT).collect::<Vec<_>>());
}

#[test]
fn every_log_key_has_its_property() {
    for key in [
        log_keys::DECISION,
        log_keys::REASON,
        log_keys::RULE,
        log_keys::DRY_RUN_RULE,
        log_keys::DRY_RUN_DECISION,
    ] {
        assert_eq!(
            log_keys::property(key),
            Some(format!("egress_authz.{key}").as_str())
        );
    }
    assert_eq!(log_keys::property("other"), None);
}
