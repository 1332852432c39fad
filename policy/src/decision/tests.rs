//! The decision procedure, tested through compiled rule files: the walkthrough's stages, rule order and
//! defaults, the destination host a check names, dry-run reporting, explanations, and the facts a
//! decision hands back.

use crate::test_fixtures::*;
use crate::*;

/// One stage of Istio's egress walkthrough: its rule file, the verdict each (caller, host) gets over
/// both HTTP and TCP, and some decisions checked in full (verdict, reason, deciding rule).
struct Stage {
    name: &'static str,
    rules: &'static str,
    steps: &'static [Step],
    outcomes: Vec<(EgressRequest<'static>, Outcome)>,
}

/// A caller, a host, and the verdict it gets.
type Step = (&'static str, &'static str, Verdict);

/// What [`outcome`] returns: verdict, reason, deciding rule.
type Outcome = (Verdict, Reason, Option<String>);

#[test]
fn walkthrough_stages_decide_as_istio_documents() {
    let stages = [
        Stage {
            name: "namespace level",
            rules: NAMESPACE_LEVEL,
            steps: &[
                (DEFAULT_SLEEP, GOOGLE, Verdict::Allow),
                (DEFAULT_SLEEP, YAHOO, Verdict::Deny),
                (OTHERNS_SLEEP, YAHOO, Verdict::Allow),
                (OTHERNS_SLEEP, GOOGLE, Verdict::Deny),
            ],
            outcomes: vec![
                (
                    http(DEFAULT_SLEEP, YAHOO),
                    (
                        Verdict::Deny,
                        Reason::DeniedByRule,
                        Some("deny-default-to-yahoo".into()),
                    ),
                ),
                (
                    tcp(DEFAULT_SLEEP, GOOGLE),
                    (Verdict::Allow, Reason::DefaultAllow, None),
                ),
            ],
        },
        Stage {
            name: "service account level",
            rules: SERVICE_ACCOUNT_LEVEL,
            steps: &[
                (SLEEP_GOOGLE, GOOGLE, Verdict::Allow),
                (SLEEP_GOOGLE, YAHOO, Verdict::Deny),
                (SLEEP_YAHOO, GOOGLE, Verdict::Deny),
                (SLEEP_YAHOO, YAHOO, Verdict::Allow),
                (OTHERNS_SLEEP, GOOGLE, Verdict::Allow),
                (OTHERNS_SLEEP, YAHOO, Verdict::Allow),
                // Not named by any rule: the allow-list default applies.
                (DEFAULT_SLEEP, GOOGLE, Verdict::Deny),
            ],
            outcomes: vec![(
                tcp(SLEEP_GOOGLE, YAHOO),
                (Verdict::Deny, Reason::NoMatchingRule, None),
            )],
        },
        Stage {
            name: "deploy rules, combining the final stage",
            rules: DEPLOY_RULES,
            steps: &[
                (DEFAULT_SLEEP, GOOGLE, Verdict::Allow),
                (DEFAULT_SLEEP, YAHOO, Verdict::Deny),
                (OTHERNS_SLEEP, GOOGLE, Verdict::Allow),
                (OTHERNS_SLEEP, YAHOO, Verdict::Allow),
                (SLEEP_GOOGLE, GOOGLE, Verdict::Allow),
                (SLEEP_GOOGLE, YAHOO, Verdict::Deny),
                (SLEEP_YAHOO, GOOGLE, Verdict::Deny),
                (SLEEP_YAHOO, YAHOO, Verdict::Allow),
            ],
            outcomes: Vec::new(),
        },
    ];
    for stage in stages {
        let policy = mk_policy(stage.rules);
        for &(principal, host, expected) in stage.steps {
            for request in [http(principal, host), tcp(principal, host)] {
                let decision = policy.decide(&request);
                assert_eq!(
                    decision.verdict,
                    expected,
                    "{}: {principal} -> {host} over {:?}: {decision:?}",
                    stage.name,
                    request.protocol()
                );
            }
        }
        for (request, expected) in &stage.outcomes {
            assert_eq!(
                outcome(&policy, request),
                *expected,
                "{}: {request:?}",
                stage.name
            );
        }
    }
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
