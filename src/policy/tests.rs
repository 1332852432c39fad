//! Table-driven tests of the decision semantics (README, "Decision semantics"), including every step of
//! the Istio egress walkthrough's stages, over HTTP- and TCP-shaped requests.

use super::*;

const DEPLOY_RULES: &str = include_str!("../../deploy/rules/egress.yaml");
const NAMESPACE_LEVEL: &str = include_str!("../../examples/rules/namespace-level.yaml");
const SERVICE_ACCOUNT_LEVEL: &str = include_str!("../../examples/rules/service-account-level.yaml");
const ALLOW_NOTHING: &str = include_str!("../../examples/rules/allow-nothing.yaml");

const GOOGLE: &str = "developers.google.com";
const YAHOO: &str = "developer.yahoo.com";
const DEFAULT_SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const OTHERNS_SLEEP: &str = "spiffe://cluster.local/ns/otherns/sa/sleep";
const SLEEP_GOOGLE: &str = "spiffe://cluster.local/ns/otherns/sa/sleep-google";
const SLEEP_YAHOO: &str = "spiffe://cluster.local/ns/otherns/sa/sleep-yahoo";

fn mk_policy(yaml: &str) -> Policy {
    compile(&[SourceFile {
        name: "rules.yaml".into(),
        text: yaml.into(),
    }])
    .unwrap_or_else(|errors| panic!("rules must compile: {errors:?}"))
}

fn mk_errors(yaml: &str) -> Vec<CompileErrorKind> {
    match compile(&[SourceFile {
        name: "rules.yaml".into(),
        text: yaml.into(),
    }]) {
        Ok(_) => panic!("rules must not compile:\n{yaml}"),
        Err(errors) => errors.into_iter().map(|e| e.kind).collect(),
    }
}

fn http<'a>(principal: &'a str, authority: &'a str) -> EgressRequest<'a> {
    EgressRequest {
        http: Some(HttpRequest {
            authority,
            method: "GET",
            path: "/",
        }),
        principal,
        port: Some(8080),
        ..Default::default()
    }
}

fn tcp<'a>(principal: &'a str, sni: &'a str) -> EgressRequest<'a> {
    EgressRequest {
        http: None,
        principal,
        destination_service: sni,
        port: Some(8443),
        ..Default::default()
    }
}

/// (verdict, reason, deciding rule)
fn outcome(policy: &Policy, request: &EgressRequest<'_>) -> (Verdict, Reason, Option<String>) {
    let d = policy.decide(request);
    (d.verdict, d.reason, d.rule.map(|r| r.name.clone()))
}

fn assert_walkthrough(policy: &Policy, steps: &[(&str, &str, Verdict)]) {
    for &(principal, host, expected) in steps {
        for request in [http(principal, host), tcp(principal, host)] {
            let decision = policy.decide(&request);
            assert_eq!(
                decision.verdict,
                expected,
                "{principal} -> {host} over {:?}: {decision:?}",
                request.protocol()
            );
        }
    }
}

#[test]
fn walkthrough_namespace_level() {
    let policy = mk_policy(NAMESPACE_LEVEL);
    assert_walkthrough(
        &policy,
        &[
            (DEFAULT_SLEEP, GOOGLE, Verdict::Allow),
            (DEFAULT_SLEEP, YAHOO, Verdict::Deny),
            (OTHERNS_SLEEP, YAHOO, Verdict::Allow),
            (OTHERNS_SLEEP, GOOGLE, Verdict::Deny),
        ],
    );
    assert_eq!(
        outcome(&policy, &http(DEFAULT_SLEEP, YAHOO)),
        (
            Verdict::Deny,
            Reason::DeniedByRule,
            Some("deny-default-to-yahoo".into())
        )
    );
    assert_eq!(
        outcome(&policy, &tcp(DEFAULT_SLEEP, GOOGLE)),
        (Verdict::Allow, Reason::DefaultAllow, None)
    );
}

#[test]
fn walkthrough_service_account_level() {
    let policy = mk_policy(SERVICE_ACCOUNT_LEVEL);
    assert_walkthrough(
        &policy,
        &[
            (SLEEP_GOOGLE, GOOGLE, Verdict::Allow),
            (SLEEP_GOOGLE, YAHOO, Verdict::Deny),
            (SLEEP_YAHOO, GOOGLE, Verdict::Deny),
            (SLEEP_YAHOO, YAHOO, Verdict::Allow),
            (OTHERNS_SLEEP, GOOGLE, Verdict::Allow),
            (OTHERNS_SLEEP, YAHOO, Verdict::Allow),
            // Not named by any rule: the allow-list default applies.
            (DEFAULT_SLEEP, GOOGLE, Verdict::Deny),
        ],
    );
    assert_eq!(
        outcome(&policy, &tcp(SLEEP_GOOGLE, YAHOO)),
        (Verdict::Deny, Reason::NoMatchingRule, None)
    );
}

#[test]
fn walkthrough_allow_nothing() {
    let policy = mk_policy(ALLOW_NOTHING);
    for principal in [DEFAULT_SLEEP, OTHERNS_SLEEP, SLEEP_GOOGLE, SLEEP_YAHOO] {
        for host in [GOOGLE, YAHOO] {
            assert_eq!(
                outcome(&policy, &http(principal, host)),
                (Verdict::Deny, Reason::NoMatchingRule, None)
            );
            assert_eq!(
                outcome(&policy, &tcp(principal, host)),
                (Verdict::Deny, Reason::NoMatchingRule, None)
            );
        }
    }
}

#[test]
fn deploy_rules_combine_the_walkthrough_final_stage() {
    let policy = mk_policy(DEPLOY_RULES);
    assert_walkthrough(
        &policy,
        &[
            (DEFAULT_SLEEP, GOOGLE, Verdict::Allow),
            (DEFAULT_SLEEP, YAHOO, Verdict::Deny),
            (OTHERNS_SLEEP, GOOGLE, Verdict::Allow),
            (OTHERNS_SLEEP, YAHOO, Verdict::Allow),
            (SLEEP_GOOGLE, GOOGLE, Verdict::Allow),
            (SLEEP_GOOGLE, YAHOO, Verdict::Deny),
            (SLEEP_YAHOO, GOOGLE, Verdict::Deny),
            (SLEEP_YAHOO, YAHOO, Verdict::Allow),
        ],
    );
}

#[test]
fn deny_rules_win_over_allow_rules_whatever_their_order() {
    let policy = mk_policy(
        r#"
rules:
- name: allow-google
  to: {hosts: [developers.google.com]}
- name: deny-default
  action: DENY
  from: {namespaces: [default]}
"#,
    );
    assert_eq!(
        outcome(&policy, &http(DEFAULT_SLEEP, GOOGLE)),
        (
            Verdict::Deny,
            Reason::DeniedByRule,
            Some("deny-default".into())
        )
    );
    assert_eq!(
        outcome(&policy, &http(OTHERNS_SLEEP, GOOGLE)),
        (
            Verdict::Allow,
            Reason::AllowedByRule,
            Some("allow-google".into())
        )
    );
}

#[test]
fn first_matching_rule_in_file_order_decides() {
    let policy = mk_policy(
        r#"
rules:
- name: first
  to: {hosts: ["*.google.com"]}
- name: second
  to: {hosts: [developers.google.com]}
"#,
    );
    assert_eq!(
        outcome(&policy, &http(DEFAULT_SLEEP, GOOGLE)).2.as_deref(),
        Some("first")
    );
}

#[test]
fn default_action_allow_and_deny() {
    let allow = mk_policy("defaultAction: ALLOW\nrules: []\n");
    assert_eq!(
        outcome(&allow, &http(DEFAULT_SLEEP, GOOGLE)),
        (Verdict::Allow, Reason::DefaultAllow, None)
    );
    let deny = mk_policy("rules: []\n");
    assert_eq!(
        outcome(&deny, &http(DEFAULT_SLEEP, GOOGLE)),
        (Verdict::Deny, Reason::NoMatchingRule, None)
    );
}

#[test]
fn callers_without_trusted_identity_match_no_rule_with_from() {
    let policy = mk_policy(
        r#"
rules:
- name: any-namespace
  from: {namespaces: ["*"]}
- name: not-prod
  from: {notNamespaces: [prod]}
"#,
    );
    for principal in [
        "",                                             // no client certificate
        "spiffe://cluster.local/ns/default",            // malformed
        "cluster.local/ns/default/sa/sleep",            // no scheme
        "spiffe://evil.example/ns/default/sa/sleep",    // foreign trust domain
        "spiffe://cluster.local/ns/default/sa/sleep/x", // extra segment
    ] {
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

/// Callers without a usable identity: none, malformed, foreign trust domain.
const ANONYMOUS_CALLERS: [&str; 4] = [
    "",
    "spiffe://cluster.local/ns/default",
    "not-a-spiffe-id",
    "spiffe://evil.example/ns/prod/sa/x",
];

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
fn dry_run_deny_rules_with_only_not_conditions_report_callers_without_identity() {
    let policy = mk_policy(
        r#"
defaultAction: ALLOW
rules:
- name: would-require-mtls
  action: DENY
  dryRun: true
  from: {notPrincipals: ["*"]}
"#,
    );
    let d = policy.decide(&http("", GOOGLE));
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Allow, Reason::DefaultAllow)
    );
    let dry = d.dry_run.expect("the dry-run DENY matched");
    assert_eq!(
        (dry.rule.name.as_str(), dry.verdict),
        ("would-require-mtls", Verdict::Deny)
    );
    assert_eq!(policy.decide(&http(DEFAULT_SLEEP, GOOGLE)).dry_run, None);
}

#[test]
fn the_index_does_not_skip_not_only_deny_rules_for_callers_without_identity() {
    // Enough rules on one host pattern that the bucket is split by namespace: the rules keyed by a
    // namespace cannot match a caller without identity, the `not*`-only DENY still must.
    let mut yaml = String::from("defaultAction: ALLOW\nrules:\n");
    for i in 0..40 {
        yaml.push_str(&format!(
            "- name: deny-ns{i}\n  action: DENY\n  from: {{namespaces: [ns{i}]}}\n  to: {{hosts: [developers.google.com]}}\n"
        ));
    }
    yaml.push_str(
        "- name: require-mtls\n  action: DENY\n  from: {notNamespaces: [ns0]}\n  to: {hosts: [developers.google.com]}\n",
    );
    let policy = mk_policy(&yaml);
    for principal in ANONYMOUS_CALLERS {
        for request in [http(principal, GOOGLE), tcp(principal, GOOGLE)] {
            let indexed = policy.decide(&request);
            assert_eq!(indexed, policy.decide_linear(&request), "{principal:?}");
            assert_eq!(
                indexed.rule.map(|r| r.name.as_str()),
                Some("require-mtls"),
                "{principal:?}"
            );
        }
    }
    let ns3 = "spiffe://cluster.local/ns/ns3/sa/x";
    assert_eq!(
        outcome(&policy, &http(ns3, GOOGLE)).2.as_deref(),
        Some("deny-ns3")
    );
}

#[test]
fn explain_shows_which_rules_a_caller_without_identity_matches() {
    let policy = mk_policy(
        r#"
defaultAction: ALLOW
rules:
- name: allow-not-prod
  from: {notNamespaces: [prod]}
- name: deny-team
  action: DENY
  from: {namespaces: ["team-*"], notPrincipals: ["*/sa/admin"]}
- name: require-mtls
  action: DENY
  from: {notPrincipals: ["*"]}
  to: {hosts: [developers.google.com]}
"#,
    );
    let explanation = policy.explain(&http("", GOOGLE));
    assert_eq!(explanation.decision, policy.decide(&http("", GOOGLE)));
    assert_eq!(
        explanation.decision.rule.map(|r| r.name.as_str()),
        Some("require-mtls")
    );
    assert!(explanation.identity_problem.is_some());
    let outcomes: Vec<_> = explanation
        .rules
        .iter()
        .map(|t| (t.rule.name.as_str(), t.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("allow-not-prod", Err(Condition::Identity)),
            ("deny-team", Err(Condition::Identity)),
            ("require-mtls", Ok(())),
        ]
    );
    let elsewhere = policy.explain(&http("", YAHOO));
    assert_eq!(elsewhere.rules[2].outcome, Err(Condition::Hosts));
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
fn extra_trust_domains_are_honoured() {
    let policy = mk_policy(
        r#"
trustDomains: [cluster.local, partner.example]
rules:
- name: partner
  from: {principals: ["partner.example/ns/default/sa/sleep"]}
"#,
    );
    assert_eq!(
        outcome(
            &policy,
            &http("spiffe://partner.example/ns/default/sa/sleep", GOOGLE)
        )
        .1,
        Reason::AllowedByRule
    );
    assert_eq!(
        outcome(&policy, &http(DEFAULT_SLEEP, GOOGLE)).1,
        Reason::NoMatchingRule
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
fn destination_host_rules() {
    let policy = mk_policy("defaultAction: ALLOW\nrules: []\n");
    let deny = |request: EgressRequest<'_>| outcome(&policy, &request).1;
    // HTTP: no authority, an invalid one.
    assert_eq!(deny(http(DEFAULT_SLEEP, "")), Reason::NoDestinationHost);
    for bad in [
        "exa mple.com",
        "a..b",
        "user@host.com",
        "host.com:port",
        "*.google.com",
        "%65vil.com",
    ] {
        assert_eq!(deny(http(DEFAULT_SLEEP, bad)), Reason::InvalidHost, "{bad}");
    }
    // TCP: destination.service first, then tls_session.sni; Istio's cluster SNI is never a host.
    assert_eq!(deny(tcp(DEFAULT_SLEEP, "")), Reason::NoDestinationHost);
    let istio_sni = "outbound_.443_._.istio-egressgateway.istio-system.svc.cluster.local";
    assert_eq!(
        deny(tcp(DEFAULT_SLEEP, istio_sni)),
        Reason::NoDestinationHost
    );
    let fallback = EgressRequest {
        sni: GOOGLE,
        ..tcp(DEFAULT_SLEEP, "")
    };
    assert_eq!(deny(fallback), Reason::DefaultAllow);
}

#[test]
fn tcp_prefers_destination_service_over_tls_session_sni() {
    let policy = mk_policy("rules:\n- name: google\n  to: {hosts: [developers.google.com]}\n");
    let request = EgressRequest {
        sni: YAHOO,
        ..tcp(DEFAULT_SLEEP, GOOGLE)
    };
    assert_eq!(outcome(&policy, &request).1, Reason::AllowedByRule);
}

#[test]
fn sni_must_match_host_on_http_unless_disabled() {
    let strict = mk_policy("defaultAction: ALLOW\nrules: []\n");
    let fronted = EgressRequest {
        sni: "allowed.example.com",
        ..http(DEFAULT_SLEEP, "blocked.example.com")
    };
    assert_eq!(
        outcome(&strict, &fronted),
        (Verdict::Deny, Reason::SniHostMismatch, None)
    );
    let same = EgressRequest {
        sni: "Blocked.Example.com.",
        ..http(DEFAULT_SLEEP, "blocked.example.com:443")
    };
    assert_eq!(outcome(&strict, &same).1, Reason::DefaultAllow);
    let istio_sni = EgressRequest {
        sni: "outbound_.443_._.istio-egressgateway.istio-system.svc.cluster.local",
        ..http(DEFAULT_SLEEP, "blocked.example.com")
    };
    assert_eq!(
        outcome(&strict, &istio_sni).1,
        Reason::DefaultAllow,
        "Istio's cluster SNI is never a mismatch"
    );

    let lax = mk_policy("defaultAction: ALLOW\nrequireSniMatchesHost: false\nrules: []\n");
    assert_eq!(outcome(&lax, &fronted).1, Reason::DefaultAllow);

    // An SNI that is no host name (non-UTF-8 bytes arrive as U+FFFD) is refused either way.
    for sni in [
        "\u{fffd}\u{fffd}blocked.example.com",
        "blocked example.com",
        "a..com",
    ] {
        let unreadable = EgressRequest {
            sni,
            ..http(DEFAULT_SLEEP, "blocked.example.com")
        };
        for policy in [&strict, &lax] {
            assert_eq!(
                outcome(policy, &unreadable).1,
                Reason::InvalidHost,
                "{sni:?}"
            );
        }
    }
}

#[test]
fn dry_run_rules_are_reported_never_enforced() {
    let policy = mk_policy(
        r#"
rules:
- name: google
  to: {hosts: [developers.google.com]}
- name: would-deny-default
  action: DENY
  dryRun: true
  from: {namespaces: [default]}
- name: would-allow-yahoo
  dryRun: true
  to: {hosts: [developer.yahoo.com]}
"#,
    );
    let d = policy.decide(&http(DEFAULT_SLEEP, GOOGLE));
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Allow, Reason::AllowedByRule)
    );
    let dry = d.dry_run.expect("dry-run rule matched");
    assert_eq!(
        (dry.rule.name.as_str(), dry.verdict),
        ("would-deny-default", Verdict::Deny)
    );
    assert!(d.dry_run_disagrees());

    let d = policy.decide(&http(OTHERNS_SLEEP, YAHOO));
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Deny, Reason::NoMatchingRule)
    );
    let dry = d.dry_run.expect("dry-run rule matched");
    assert_eq!(
        (dry.rule.name.as_str(), dry.verdict),
        ("would-allow-yahoo", Verdict::Allow)
    );

    // A dry-run ALLOW that an enforced DENY would still override reports the enforced outcome.
    let d = policy.decide(&http(DEFAULT_SLEEP, YAHOO));
    let dry = d.dry_run.expect("dry-run rules matched");
    assert_eq!(
        (dry.rule.name.as_str(), dry.verdict),
        ("would-deny-default", Verdict::Deny)
    );
    assert!(!d.dry_run_disagrees());

    let d = policy.decide(&http(OTHERNS_SLEEP, GOOGLE));
    assert_eq!(d.dry_run, None, "no dry-run rule matched");
}

#[test]
fn explain_agrees_with_decide_and_names_the_first_failed_condition() {
    let policy = mk_policy(DEPLOY_RULES);
    let request = http(SLEEP_GOOGLE, YAHOO);
    let explanation = policy.explain(&request);
    assert_eq!(explanation.decision, policy.decide(&request));
    let outcomes: Vec<_> = explanation
        .rules
        .iter()
        .map(|t| (t.rule.name.as_str(), t.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("default-ns-to-google", Err(Condition::Namespaces)),
            ("otherns-sleep-to-both", Err(Condition::ServiceAccounts)),
            ("otherns-sleep-google-to-google", Err(Condition::Hosts)),
            (
                "otherns-sleep-yahoo-to-yahoo",
                Err(Condition::ServiceAccounts)
            ),
        ]
    );
    let explanation = policy.explain(&http("", YAHOO));
    assert!(explanation.identity_problem.is_some());
    assert!(
        explanation
            .rules
            .iter()
            .all(|t| t.outcome == Err(Condition::Identity))
    );
}

#[test]
fn invalid_rule_files_are_rejected_with_the_right_error() {
    type Expectation = fn(&CompileErrorKind) -> bool;
    let cases: &[(&str, Expectation)] = &[
        (
            "rules:\n- name: a\n  from: {namespace: [x]}\n",
            |k| matches!(k, CompileErrorKind::Syntax(m) if m.contains("unknown field")),
        ),
        ("rules:\n- name: a\n  action: MAYBE\n", |k| {
            matches!(k, CompileErrorKind::Syntax(_))
        }),
        ("rules: [\n", |k| matches!(k, CompileErrorKind::Syntax(_))),
        ("", |k| matches!(k, CompileErrorKind::EmptyFile)),
        ("# only a comment\n", |k| {
            matches!(k, CompileErrorKind::EmptyFile)
        }),
        ("rules:\n- name: Upper\n", |k| {
            matches!(k, CompileErrorKind::InvalidRuleName)
        }),
        ("rules:\n- name: a\n- name: a\n", |k| {
            matches!(k, CompileErrorKind::DuplicateRuleName { .. })
        }),
        ("rules:\n- name: a\n  to: {hosts: ['a.*.com']}\n", |k| {
            matches!(
                k,
                CompileErrorKind::InvalidValue {
                    field: "to.hosts",
                    ..
                }
            )
        }),
        ("rules:\n- name: a\n  to: {ports: [0]}\n", |k| {
            matches!(
                k,
                CompileErrorKind::InvalidValue {
                    field: "to.ports",
                    ..
                }
            )
        }),
        ("rules:\n- name: a\n  to: {ports: [70000]}\n", |k| {
            matches!(k, CompileErrorKind::Syntax(_))
        }),
        ("rules:\n- name: a\n  to: {paths: [nope]}\n", |k| {
            matches!(
                k,
                CompileErrorKind::InvalidValue {
                    field: "to.paths",
                    ..
                }
            )
        }),
        ("rules:\n- name: a\n  to: {methods: ['G T']}\n", |k| {
            matches!(
                k,
                CompileErrorKind::InvalidValue {
                    field: "to.methods",
                    ..
                }
            )
        }),
        (
            "rules:\n- name: a\n  from: {serviceAccounts: [sleep]}\n",
            |k| {
                matches!(
                    k,
                    CompileErrorKind::InvalidValue {
                        field: "from.serviceAccounts",
                        ..
                    }
                )
            },
        ),
        ("rules:\n- name: a\n  from: {namespaces: ['a*b']}\n", |k| {
            matches!(
                k,
                CompileErrorKind::InvalidValue {
                    field: "from.namespaces",
                    ..
                }
            )
        }),
        ("rules:\n- name: a\n  from: {}\n", |k| {
            matches!(k, CompileErrorKind::EmptyBlock("from", _))
        }),
        ("rules:\n- name: a\n  to: {hosts: []}\n", |k| {
            matches!(k, CompileErrorKind::EmptyBlock("to", _))
        }),
        ("trustDomains: []\nrules: []\n", |k| {
            matches!(k, CompileErrorKind::InvalidTrustDomains(_))
        }),
        ("trustDomains: [Cluster.Local]\nrules: []\n", |k| {
            matches!(k, CompileErrorKind::InvalidTrustDomains(_))
        }),
    ];
    for (yaml, expected) in cases {
        let errors = mk_errors(yaml);
        assert!(errors.iter().any(expected), "{yaml:?} gave {errors:?}");
    }
}

#[test]
fn errors_are_located_at_file_line_and_column() {
    let yaml = "rules:\n- name: ok\n- name: bad\n  to:\n    hosts: [fine.com, 'a.*.com']\n";
    let errors = compile(&[SourceFile {
        name: "team/rules.yaml".into(),
        text: yaml.into(),
    }])
    .unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].location.to_string(), "team/rules.yaml:5:24");
    assert_eq!(errors[0].rule.as_deref(), Some("bad"));
    assert!(
        errors[0]
            .to_string()
            .starts_with("team/rules.yaml:5:24: rule \"bad\": to.hosts")
    );

    let errors = mk_errors_located("rules:\n- name: a\n  frm: {}\n");
    assert_eq!((errors[0].location.line, errors[0].location.column), (3, 3));
}

fn mk_errors_located(yaml: &str) -> Vec<CompileError> {
    compile(&[SourceFile {
        name: "rules.yaml".into(),
        text: yaml.into(),
    }])
    .unwrap_err()
}

#[test]
fn files_in_a_directory_combine_and_must_agree() {
    let file = |name: &str, text: &str| SourceFile {
        name: name.into(),
        text: text.into(),
    };
    let policy = compile(&[
        file(
            "a.yaml",
            "defaultAction: DENY\nrules:\n- name: one\n  to: {hosts: [a.com]}\n",
        ),
        file(
            "b.yaml",
            "defaultAction: DENY\nrules:\n- name: two\n  to: {hosts: [b.com]}\n",
        ),
    ])
    .unwrap();
    assert_eq!(policy.rules().len(), 2);
    assert_eq!(policy.rules()[1].origin.file, 1);

    let errors = compile(&[
        file("a.yaml", "rules:\n- name: one\n"),
        file("b.yaml", "rules:\n- name: one\n"),
    ])
    .unwrap_err();
    assert!(
        matches!(&errors[0].kind, CompileErrorKind::DuplicateRuleName { first } if first.file == "a.yaml")
    );
    assert_eq!(errors[0].location.file, "b.yaml");

    let errors = compile(&[
        file("a.yaml", "defaultAction: DENY\nrules: []\n"),
        file("b.yaml", "defaultAction: ALLOW\nrules: []\n"),
    ])
    .unwrap_err();
    assert!(matches!(
        &errors[0].kind,
        CompileErrorKind::ConflictingSetting {
            setting: "defaultAction",
            ..
        }
    ));

    // Trust domains agree as sets, regardless of order.
    compile(&[
        file("a.yaml", "trustDomains: [a.local, b.local]\nrules: []\n"),
        file("b.yaml", "trustDomains: [b.local, a.local]\nrules: []\n"),
    ])
    .unwrap();
}

#[test]
fn digest_depends_on_content_not_on_directory() {
    let mk = |name: &str, text: &str| {
        compile(&[SourceFile {
            name: name.into(),
            text: text.into(),
        }])
        .unwrap()
        .digest()
        .to_owned()
    };
    assert_eq!(
        mk("/etc/a/rules.yaml", "rules: []\n"),
        mk("/other/rules.yaml", "rules: []\n")
    );
    assert_ne!(
        mk("rules.yaml", "rules: []\n"),
        mk("rules.yaml", "rules: []\n# changed\n")
    );
}

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

#[test]
fn locating_errors_never_splits_a_utf8_character() {
    // Names written with escapes are not found verbatim, so the search position advances one byte per
    // rule from the start of the file; a non-ASCII comment there must not make the locator panic.
    let names: String = (b'a'..=b'f')
        .map(|c| format!("- name: \"\\x{c:x}\"\n"))
        .collect();
    let yaml = format!("# ééé\nrules:\n{names}- name: bad\n  to: {{hosts: ['a.*.com']}}\n");
    let errors = mk_errors_located(&yaml);
    assert!(
        errors.iter().any(|e| e.rule.as_deref() == Some("bad")),
        "{errors:?}"
    );
}

#[test]
fn a_byte_order_mark_is_not_an_error() {
    let policy = mk_policy("\u{feff}defaultAction: ALLOW\nrules: []\n");
    assert_eq!(policy.settings().default_action, Verdict::Allow);
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

#[test]
fn rule_position_finds_a_decisions_rule_and_nothing_else() {
    let policy = mk_policy(
        "defaultAction: DENY\nrules:\n- name: a\n  to: {hosts: [a.example.com]}\n- name: b\n  to: {hosts: [b.example.com]}\n",
    );
    for (host, position) in [("a.example.com", 0), ("b.example.com", 1)] {
        let decision = policy.decide(&http("", host));
        let rule = decision.rule.expect("a rule decides");
        assert_eq!(policy.rule_position(rule), Some(position), "{host}");
    }
    // An equal rule that is not this policy's own has no position in it.
    let copy = policy.rules()[1].clone();
    assert_eq!(policy.rule_position(&copy), None);
    let other = mk_policy("rules:\n- name: a\n  to: {hosts: [a.example.com]}\n");
    assert_eq!(policy.rule_position(&other.rules()[0]), None);
}

#[test]
fn ipv4_spellings_cannot_dodge_a_deny_on_an_address() {
    let policy = mk_policy(
        r#"
defaultAction: ALLOW
rules:
- name: deny-loopback
  action: DENY
  to: {hosts: ["127.0.0.1"]}
- name: deny-metadata
  action: DENY
  to: {hosts: ["0xa9.0xfe.0xa9.0xfe"]}
"#,
    );
    for spelling in [
        "127.0.0.1",
        "127.0.0.1.",
        "127.1",
        "0x7f.1",
        "0X7F.0.0.1",
        "0177.0.0.1",
        "0x7f.0.0.01",
        "2130706433",
        "0x7f000001",
        "[::ffff:127.0.0.1]",
    ] {
        for request in [http(DEFAULT_SLEEP, spelling), tcp(DEFAULT_SLEEP, spelling)] {
            assert_eq!(
                outcome(&policy, &request),
                (
                    Verdict::Deny,
                    Reason::DeniedByRule,
                    Some("deny-loopback".into())
                ),
                "{spelling} over {:?}",
                request.protocol()
            );
        }
    }
    let authority = http(DEFAULT_SLEEP, "0x7f.1:8080");
    assert_eq!(outcome(&policy, &authority).1, Reason::DeniedByRule);
    // A rule host is canonicalised the same way.
    assert_eq!(
        outcome(&policy, &http(DEFAULT_SLEEP, "169.254.169.254"))
            .2
            .as_deref(),
        Some("deny-metadata")
    );
    // A numeric last label that is no address is no host, before any rule.
    for bad in ["127.0.0.1.1", "256.1", "08.0.0.1", "metadata.123"] {
        assert_eq!(
            outcome(&policy, &tcp(DEFAULT_SLEEP, bad)),
            (Verdict::Deny, Reason::InvalidHost, None),
            "{bad}"
        );
    }
}

#[test]
fn an_ipv4_rule_host_in_a_short_spelling_matches_the_dotted_quad() {
    let policy = mk_policy("rules:\n- name: loopback\n  to: {hosts: [\"127.1\"]}\n");
    assert_eq!(
        policy.rules()[0].to.as_ref().map(|t| &t.hosts[..]),
        Some(&[HostPattern::Exact("127.0.0.1".into())][..])
    );
    assert_eq!(
        outcome(&policy, &http(DEFAULT_SLEEP, "127.0.0.1")).1,
        Reason::AllowedByRule
    );
    assert!(matches!(
        mk_errors("rules:\n- name: a\n  to: {hosts: [\"1.2.3.4.5\"]}\n")[..],
        [CompileErrorKind::InvalidValue {
            field: "to.hosts",
            ..
        }]
    ));
}

#[test]
fn only_the_exact_istio_cluster_sni_is_skipped() {
    let policy = mk_policy(
        r#"
rules:
- name: google
  to: {hosts: [developers.google.com]}
"#,
    );
    let with_sni = |service: &'static str| EgressRequest {
        sni: GOOGLE,
        ..tcp(DEFAULT_SLEEP, service)
    };
    // Istio's form names a cluster: the TLS session's SNI is the destination.
    assert_eq!(
        outcome(
            &policy,
            &with_sni("outbound_.443_._.istio-egressgateway.istio-system.svc.cluster.local")
        )
        .1,
        Reason::AllowedByRule
    );
    // Near misses are ordinary SNIs: the destination, decided on like any other.
    for near_miss in [
        "outbound_.evil.example.com",
        "outbound_.443_.evil.example.com",
        "outbound_.0443_._.evil.example.com",
    ] {
        assert_eq!(
            outcome(&policy, &with_sni(near_miss)),
            (Verdict::Deny, Reason::NoMatchingRule, None),
            "{near_miss}"
        );
        let explanation = policy.explain(&with_sni(near_miss));
        assert_eq!(explanation.host.as_deref(), Some(near_miss));
    }
    // Nor is a near miss exempt from the SNI check on HTTP.
    let fronted = EgressRequest {
        sni: "outbound_.evil.example.com",
        ..http(DEFAULT_SLEEP, GOOGLE)
    };
    assert_eq!(
        outcome(&policy, &fronted),
        (Verdict::Deny, Reason::SniHostMismatch, None)
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

// === Rule files cannot make the compiler build too much ===

/// `n` rules that each alias the same `scalar_bytes`-long description: tiny to write, `n * scalar_bytes`
/// bytes once the aliases are expanded.
fn alias_bomb(n: usize, scalar_bytes: usize) -> String {
    let mut text = format!(
        "rules:\n- name: r0\n  description: &d {}\n",
        "x".repeat(scalar_bytes)
    );
    for i in 1..n {
        text.push_str(&format!("- {{name: r{i}, description: *d}}\n"));
    }
    text
}

#[test]
fn aliases_expanding_a_long_scalar_are_refused_located_and_named() {
    // 200 MB of descriptions from a 300 kB file.
    let text = alias_bomb(10_000, 20_000);
    let errors = mk_errors_located(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        matches!(
            errors[0].kind,
            CompileErrorKind::LimitExceeded(Limit::ExpandedTextBytes(_))
        ),
        "{errors:?}"
    );
    let message = errors[0].to_string();
    assert!(message.starts_with("rules.yaml:"), "{message}");
    assert!(message.contains("bytes of text"), "{message}");
    assert!(
        errors[0].location.line > 2,
        "at the rule that overflows: {message}"
    );
}

#[test]
fn nested_aliases_are_refused() {
    // The classic: 9 levels of 10 aliases each, a billion strings.
    let mut text = "lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n".to_owned();
    for level in 1..9 {
        let previous = format!("*l{}", level - 1);
        text.push_str(&format!(
            "lol{level}: &l{level} [{}]\n",
            [previous.as_str(); 10].join(", ")
        ));
    }
    text.push_str("rules: []\n");
    let errors = mk_errors_located(&text);
    assert!(
        matches!(errors[0].kind, CompileErrorKind::LimitExceeded(_)),
        "{errors:?}"
    );
    assert!(errors[0].location.line >= 1 && errors[0].location.column >= 1);
}

#[test]
fn deep_nesting_in_a_file_with_anchors_is_refused() {
    let text = format!("rules: &r {}{}\n", "[".repeat(100), "]".repeat(100));
    let errors = mk_errors(&text);
    assert!(
        matches!(
            errors[0],
            CompileErrorKind::LimitExceeded(Limit::Depth(yaml_limits::MAX_DEPTH))
        ),
        "{errors:?}"
    );
}

#[test]
fn a_flood_of_tiny_nodes_is_refused_before_parsing_at_the_node_past_the_bound() {
    // Counted: the root, 2 per `:`, 1 for `[`, 2 per `,`; the 1,999,998th comma passes 4 million.
    let text = format!(
        "defaultAction: DENY\nrules: [{}a]\n",
        "a,".repeat(2_000_000)
    );
    let errors = mk_errors_located(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].kind,
        CompileErrorKind::LimitExceeded(Limit::Nodes(yaml_limits::MAX_NODES))
    );
    assert_eq!(
        errors[0].location.to_string(),
        format!("rules.yaml:2:{}", 10 + 2 * (1_999_998 - 1))
    );
    assert!(
        errors[0]
            .to_string()
            .contains("more than 4000000 YAML nodes"),
        "{errors:?}"
    );
}

#[test]
fn deep_flow_nesting_is_refused_before_parsing_at_the_bracket() {
    let text = format!("rules: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let errors = mk_errors_located(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].kind,
        CompileErrorKind::LimitExceeded(Limit::Depth(yaml_limits::MAX_DEPTH))
    );
    assert_eq!(errors[0].location.to_string(), "rules.yaml:1:72");
    assert!(
        errors[0]
            .to_string()
            .contains("nested more than 64 levels deep"),
        "{errors:?}"
    );
}

#[test]
fn anchors_for_sharing_values_are_fine() {
    let mut text =
        "rules:\n- name: r0\n  to:\n    hosts: &partners [a.example.com, b.example.com]\n"
            .to_owned();
    for i in 1..1_000 {
        text.push_str(&format!("- {{name: r{i}, to: {{hosts: *partners}}}}\n"));
    }
    let policy = mk_policy(&text);
    assert_eq!(policy.rules().len(), 1_000);
}

// === Empty and multiple documents ===

#[test]
fn documents_with_nothing_in_them_are_empty_files() {
    for text in [
        "---\n",
        "---\n...\n",
        "---\n---\n",
        "# a comment\n---\n# another\n",
        "~\n",
        "null\n",
    ] {
        let errors = mk_errors_located(text);
        assert!(
            matches!(errors[0].kind, CompileErrorKind::EmptyFile),
            "{text:?}: {errors:?}"
        );
    }
}

#[test]
fn rules_with_no_value_is_an_error_at_the_key() {
    for text in [
        "defaultAction: ALLOW\nrules:\n",
        "defaultAction: ALLOW\nrules: ~\n",
        "defaultAction: ALLOW\nrules: null\n",
        "defaultAction: ALLOW\nrules:\n# the deny rules were here\n",
    ] {
        let errors = mk_errors_located(text);
        assert_eq!(errors.len(), 1, "{text:?}: {errors:?}");
        assert_eq!(
            errors[0].kind,
            CompileErrorKind::RulesWithoutValue,
            "{text:?}"
        );
        assert_eq!(errors[0].location.to_string(), "rules.yaml:2:1");
    }
    // Written empty, or left out, they are no rules.
    assert!(
        mk_policy("defaultAction: ALLOW\nrules: []\n")
            .rules()
            .is_empty()
    );
    assert!(mk_policy("defaultAction: ALLOW\n").rules().is_empty());
}

#[test]
fn from_or_to_with_no_value_is_an_empty_block_not_a_wildcard() {
    let errors = mk_errors("rules:\n- name: a\n  to: {hosts: [a.com]}\n  from:\n");
    assert!(
        matches!(errors[..], [CompileErrorKind::EmptyBlock("from", _)]),
        "{errors:?}"
    );
    let errors = mk_errors("rules:\n- name: a\n  from: {namespaces: [x]}\n  to:\n");
    assert!(
        matches!(errors[..], [CompileErrorKind::EmptyBlock("to", _)]),
        "{errors:?}"
    );
}

#[test]
fn a_second_document_is_an_error_where_it_starts() {
    let cases = [
        ("rules: []\n---\nrules: []\n", "rules.yaml:2:1"),
        ("---\nrules: []\n---\n", "rules.yaml:3:1"),
        (
            "# header\n---\nrules: []\n...\n# trailer\nrules: []\n",
            "rules.yaml:6:1",
        ),
        (
            "rules:\n- name: a\n  description: |\n    text\n--- # next\nrules: []\n",
            "rules.yaml:5:1",
        ),
    ];
    for (text, location) in cases {
        let errors = mk_errors_located(text);
        assert_eq!(errors.len(), 1, "{text:?}: {errors:?}");
        assert_eq!(
            errors[0].kind,
            CompileErrorKind::MultipleDocuments,
            "{text:?}"
        );
        assert_eq!(errors[0].location.to_string(), location, "{text:?}");
    }
    // Explicit start and end markers around one document are one document.
    assert_eq!(mk_policy("---\nrules: []\n...\n").rules().len(), 0);
}

// === Locations in every style ===

#[test]
fn errors_are_located_in_flow_style() {
    let text = "rules:\n- {name: ok, to: {hosts: [a.com]}}\n- {name: bad, to: {hosts: [b.com, 'a.*.com']}}\n- {name: Upper}\n";
    let errors = mk_errors_located(text);
    let at: Vec<_> = errors.iter().map(|e| e.location.to_string()).collect();
    assert_eq!(at, ["rules.yaml:3:36", "rules.yaml:4:4"], "{errors:?}");
}

#[test]
fn errors_are_located_in_json() {
    let text = r#"{
  "defaultAction": "DENY",
  "trustDomains": ["cluster.local"],
  "rules": [
    {"name": "ok", "to": {"hosts": ["a.com"]}},
    {
      "name": "bad",
      "to": {"hosts": ["b.com", "a.*.com"]}
    },
    {"name": "Upper"}
  ]
}
"#;
    let errors = mk_errors_located(text);
    let at: Vec<_> = errors.iter().map(|e| e.location.to_string()).collect();
    assert_eq!(at, ["rules.yaml:8:34", "rules.yaml:10:6"], "{errors:?}");
    // Settings in JSON are located at their key too.
    let errors = compile(&[
        SourceFile {
            name: "a.json.yaml".into(),
            text: r#"{"defaultAction": "DENY", "rules": []}"#.into(),
        },
        SourceFile {
            name: "b.json.yaml".into(),
            text: "{\n  \"defaultAction\": \"ALLOW\"\n}\n".into(),
        },
    ])
    .unwrap_err();
    assert_eq!(errors[0].location.to_string(), "b.json.yaml:2:3");
    assert!(
        errors[0].to_string().contains("a.json.yaml:1:2"),
        "{errors:?}"
    );
}

#[test]
fn a_rule_name_written_differently_is_located_near_its_rule_without_scanning_the_file() {
    // The name is written with an escape, so it is not found as written: the rule falls back to the
    // previous rule's position rather than to something far away.
    let text = "rules:\n- name: first\n- name: \"sec\\u006fnd\"\n  to: {hosts: ['a.*.com']}\n";
    let errors = mk_errors_located(text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].rule.as_deref(), Some("second"));
    assert_eq!(errors[0].location.line, 4, "{errors:?}");
}

// === The facts a decision hands back ===

/// A principal of a trust domain the rules do not trust: well-formed, but no caller.
const FOREIGN_SLEEP: &str = "spiffe://evil.example/ns/default/sa/sleep";

#[test]
fn a_decision_names_the_caller_and_host_it_was_made_on() {
    let policy = mk_policy("rules:\n- name: google\n  to: {hosts: [developers.google.com]}\n");
    let istio_sni = "outbound_.443_._.x.svc.cluster.local";
    let default_sleep = Some(("default", "sleep"));
    // (request, reason, caller's namespace and service account, host as requested, normalised host)
    let cases = [
        (
            EgressRequest {
                sni: GOOGLE,
                ..tcp(FOREIGN_SLEEP, istio_sni)
            },
            Reason::AllowedByRule,
            None,
            GOOGLE,
            Some(GOOGLE),
        ),
        (
            tcp(DEFAULT_SLEEP, istio_sni),
            Reason::NoDestinationHost,
            default_sleep,
            "",
            None,
        ),
        (
            http(DEFAULT_SLEEP, "Developers.Google.COM.:443"),
            Reason::AllowedByRule,
            default_sleep,
            "Developers.Google.COM.",
            Some(GOOGLE),
        ),
        (
            http(FOREIGN_SLEEP, "user@host.com"),
            Reason::InvalidHost,
            None,
            "user@host.com",
            None,
        ),
        (
            EgressRequest {
                sni: YAHOO,
                ..http(DEFAULT_SLEEP, GOOGLE)
            },
            Reason::SniHostMismatch,
            default_sleep,
            GOOGLE,
            Some(GOOGLE),
        ),
    ];
    for (request, reason, caller, host, normalized) in cases {
        let decision = policy.decide(&request);
        let facts = decision.facts;
        assert_eq!(decision.reason, reason, "{request:?}");
        assert_eq!(
            facts.caller.map(|c| (c.namespace, c.service_account)),
            caller,
            "{request:?}"
        );
        assert_eq!(facts.host, host, "{request:?}");
        assert_eq!(facts.port, request.port, "{request:?}");
        let mut scratch = None;
        assert_eq!(
            facts.normalized_host(&mut scratch),
            normalized,
            "{request:?}"
        );
        assert_eq!(decision, policy.decide_linear(&request), "{request:?}");
    }
}
