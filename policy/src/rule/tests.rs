//! What a rule's conditions match, tested through decisions: caller conditions (and callers without a
//! trusted identity), destination hosts, ports, methods and paths, and attributes a check lacks.

use crate::test_fixtures::*;
use crate::*;

#[test]
fn not_fields_never_let_a_caller_without_identity_into_an_allow_rule() {
    let policy = mk_policy(
        r#"
rules:
- name: all-but-prod
  from: {notNamespaces: [prod], notServiceAccounts: ["*/blocked"], notPrincipals: ["*/sa/x"]}
"#,
    );
    for principal in ANONYMOUS_CALLERS {
        assert_eq!(
            outcome(&policy, &http(principal, GOOGLE)),
            (Verdict::Deny, Reason::InvalidPrincipal, None),
            "{principal:?}"
        );
    }
    assert_eq!(
        outcome(&policy, &http(DEFAULT_SLEEP, GOOGLE)).1,
        Reason::AllowedByRule
    );
}

#[test]
fn deny_rules_with_only_not_conditions_match_callers_without_identity() {
    // Istio's documented way to turn away plaintext callers.
    let policy = mk_policy(
        r#"
defaultAction: ALLOW
rules:
- name: require-mtls
  action: DENY
  from: {notPrincipals: ["*"]}
"#,
    );
    for principal in ANONYMOUS_CALLERS {
        for request in [http(principal, GOOGLE), tcp(principal, GOOGLE)] {
            assert_eq!(
                outcome(&policy, &request),
                (
                    Verdict::Deny,
                    Reason::DeniedByRule,
                    Some("require-mtls".into())
                ),
                "{principal:?}"
            );
        }
    }
    assert_eq!(
        outcome(&policy, &http(DEFAULT_SLEEP, GOOGLE)),
        (Verdict::Allow, Reason::DefaultAllow, None)
    );

    // Every `not*` field: a caller without identity is none of the listed callers.
    let policy = mk_policy(
        r#"
defaultAction: ALLOW
rules:
- name: deny-all-but-prod
  action: DENY
  from: {notNamespaces: [prod], notServiceAccounts: ["*/admin"], notPrincipals: ["*/sa/batch"]}
  to: {hosts: [developers.google.com]}
"#,
    );
    for principal in ANONYMOUS_CALLERS {
        assert_eq!(
            outcome(&policy, &http(principal, GOOGLE)).1,
            Reason::DeniedByRule,
            "{principal:?}"
        );
        assert_eq!(
            outcome(&policy, &http(principal, YAHOO)).1,
            Reason::DefaultAllow,
            "`to` still applies: {principal:?}"
        );
    }
    let cases: &[(&str, Reason)] = &[
        (DEFAULT_SLEEP, Reason::DeniedByRule),
        ("spiffe://cluster.local/ns/prod/sa/x", Reason::DefaultAllow),
        ("spiffe://cluster.local/ns/a/sa/admin", Reason::DefaultAllow),
        ("spiffe://cluster.local/ns/a/sa/batch", Reason::DefaultAllow),
    ];
    for (principal, reason) in cases {
        assert_eq!(
            outcome(&policy, &http(principal, GOOGLE)).1,
            *reason,
            "{principal}"
        );
    }
}

#[test]
fn a_positive_caller_condition_keeps_callers_without_identity_out_of_a_deny_rule() {
    // As in Istio: a positive principal matcher needs an authenticated principal, whatever `not*` says.
    let policy = mk_policy(
        r#"
defaultAction: ALLOW
rules:
- name: deny-team-but-admins
  action: DENY
  from: {namespaces: ["team-*"], notServiceAccounts: ["*/admin"]}
"#,
    );
    for principal in ANONYMOUS_CALLERS {
        assert_eq!(
            outcome(&policy, &http(principal, GOOGLE)),
            (Verdict::Allow, Reason::DefaultAllow, None),
            "{principal:?}"
        );
    }
    assert_eq!(
        outcome(
            &policy,
            &http("spiffe://cluster.local/ns/team-a/sa/sleep", GOOGLE)
        )
        .1,
        Reason::DeniedByRule
    );
}

#[test]
fn a_rule_without_from_matches_anyone_even_without_identity() {
    let policy =
        mk_policy("rules:\n- name: google-for-all\n  to: {hosts: [developers.google.com]}\n");
    assert_eq!(outcome(&policy, &http("", GOOGLE)).1, Reason::AllowedByRule);
    assert_eq!(
        outcome(&policy, &tcp("garbage", GOOGLE)).1,
        Reason::AllowedByRule
    );
}

#[test]
fn from_fields_and_wildcards() {
    let policy = mk_policy(
        r#"
rules:
- name: team-sleepers
  from:
    namespaces: ["team-*"]
    serviceAccounts: ["*/sleep", "team-b/*-prod"]
    notPrincipals: ["spiffe://cluster.local/ns/team-a/sa/sleep"]
- name: by-principal-suffix
  from: {principals: ["*/sa/batch"]}
"#,
    );
    let cases: &[(&str, Reason)] = &[
        (
            "spiffe://cluster.local/ns/team-b/sa/sleep",
            Reason::AllowedByRule,
        ),
        (
            "spiffe://cluster.local/ns/team-b/sa/pay-prod",
            Reason::AllowedByRule,
        ),
        (
            "spiffe://cluster.local/ns/team-a/sa/pay-prod",
            Reason::NoMatchingRule,
        ), // SA namespace part
        (
            "spiffe://cluster.local/ns/team-a/sa/sleep",
            Reason::NoMatchingRule,
        ), // notPrincipals
        (
            "spiffe://cluster.local/ns/other/sa/sleep",
            Reason::NoMatchingRule,
        ), // namespaces
        (
            "spiffe://cluster.local/ns/other/sa/batch",
            Reason::AllowedByRule,
        ),
    ];
    for (principal, reason) in cases {
        assert_eq!(
            outcome(&policy, &http(principal, GOOGLE)).1,
            *reason,
            "{principal}"
        );
    }
}

#[test]
fn host_patterns_through_decisions() {
    let policy = mk_policy(
        r#"
rules:
- name: google-apis
  to: {hosts: ["*.googleapis.com", "**.s3.amazonaws.com"], notHosts: ["evil.s3.amazonaws.com"]}
"#,
    );
    let cases: &[(&str, Reason)] = &[
        ("storage.googleapis.com", Reason::AllowedByRule),
        ("STORAGE.GoogleApis.com.", Reason::AllowedByRule),
        ("storage.googleapis.com:443", Reason::AllowedByRule),
        ("a.b.googleapis.com", Reason::NoMatchingRule),
        ("googleapis.com", Reason::NoMatchingRule),
        ("bucket.s3.amazonaws.com", Reason::AllowedByRule),
        ("x.y.s3.amazonaws.com", Reason::AllowedByRule),
        ("evil.s3.amazonaws.com", Reason::NoMatchingRule),
        ("s3.amazonaws.com", Reason::NoMatchingRule),
    ];
    for (authority, reason) in cases {
        assert_eq!(
            outcome(&policy, &http(DEFAULT_SLEEP, authority)).1,
            *reason,
            "{authority}"
        );
    }
}

#[test]
fn ports_methods_and_paths() {
    let policy = mk_policy(
        r#"
rules:
- name: read-headers
  to: {hosts: [httpbin.org], ports: [8080], methods: [GET, HEAD], paths: ["/headers", "/api/*"]}
"#,
    );
    let mk = |method: &'static str, path: &'static str, port: u16| EgressRequest {
        http: Some(HttpRequest {
            authority: "httpbin.org",
            method,
            path,
        }),
        principal: DEFAULT_SLEEP,
        port: Some(port),
        ..Default::default()
    };
    let cases = [
        (mk("GET", "/headers", 8080), Reason::AllowedByRule),
        (mk("GET", "/headers?x=1", 8080), Reason::AllowedByRule),
        (mk("head", "/api/v1/x", 8080), Reason::AllowedByRule),
        (mk("POST", "/headers", 8080), Reason::NoMatchingRule),
        (mk("GET", "/headers/x", 8080), Reason::NoMatchingRule),
        (mk("GET", "/headers", 8443), Reason::NoMatchingRule),
    ];
    for (request, reason) in cases {
        assert_eq!(outcome(&policy, &request).1, reason, "{request:?}");
    }
}

#[test]
fn http_only_fields_on_tcp_fail_closed() {
    let policy = mk_policy(
        r#"
defaultAction: ALLOW
rules:
- name: deny-posts-to-yahoo
  action: DENY
  to: {hosts: [developer.yahoo.com], methods: [POST]}
"#,
    );
    // DENY ignores HTTP-only fields on TCP: it matches more widely.
    assert_eq!(
        outcome(&policy, &tcp(DEFAULT_SLEEP, YAHOO)).1,
        Reason::DeniedByRule
    );
    assert_eq!(
        outcome(&policy, &http(DEFAULT_SLEEP, YAHOO)).1,
        Reason::DefaultAllow
    );

    let policy = mk_policy(
        r#"
rules:
- name: get-google
  to: {hosts: [developers.google.com], paths: ["/"]}
"#,
    );
    // ALLOW needs them, so it cannot match a TCP check.
    assert_eq!(
        outcome(&policy, &tcp(DEFAULT_SLEEP, GOOGLE)).1,
        Reason::NoMatchingRule
    );
    assert_eq!(
        outcome(&policy, &http(DEFAULT_SLEEP, GOOGLE)).1,
        Reason::AllowedByRule
    );
}

#[test]
fn attributes_a_check_lacks_fail_closed() {
    let policy = mk_policy(
        r#"
defaultAction: ALLOW
rules:
- name: deny-posts
  action: DENY
  to: {methods: [POST], ports: [8080]}
"#,
    );
    let mut request = http(DEFAULT_SLEEP, GOOGLE);
    request.http = Some(HttpRequest {
        authority: GOOGLE,
        method: "",
        path: "/",
    });
    assert_eq!(
        outcome(&policy, &request).1,
        Reason::DeniedByRule,
        "no method: DENY ignores the condition"
    );
    request.port = None;
    assert_eq!(
        outcome(&policy, &request).1,
        Reason::DeniedByRule,
        "no port: DENY ignores the condition"
    );

    let policy = mk_policy("rules:\n- name: gets\n  to: {methods: [GET], ports: [8080]}\n");
    assert_eq!(
        outcome(&policy, &request).1,
        Reason::NoMatchingRule,
        "ALLOW needs what it names"
    );
}
