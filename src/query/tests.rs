//! Unit tests of the residual logic and of the text. Exactness on random rule sets is in
//! `tests/query_exact.rs`.

use super::*;
use crate::policy::{HostPattern, Policy, Protocol, SourceFile, compile};

fn mk_policy(yaml: &str) -> Policy {
    compile(&[SourceFile {
        name: "rules.yaml".to_owned(),
        text: yaml.to_owned(),
    }])
    .unwrap()
}

const YAHOO: &str = "
defaultAction: DENY
rules:
- name: default-ns-to-yahoo
  from: {namespaces: [default]}
  to: {hosts: [developer.yahoo.com]}
- name: sleep-yahoo-reads
  from: {serviceAccounts: [otherns/sleep-yahoo]}
  to: {hosts: ['*.yahoo.com'], methods: [GET], paths: ['/v1/*']}
- name: deny-untrusted
  action: DENY
  from: {namespaces: [untrusted]}
- name: google-only
  from: {namespaces: ['*']}
  to: {hosts: [developers.google.com]}
- name: try-deny-posts
  action: DENY
  dryRun: true
  to: {methods: [POST]}
";

#[test]
fn who_can_lists_grants_carve_outs_and_dry_run_rules() {
    let policy = mk_policy(YAHOO);
    let answer = who_can(&policy, "Developer.Yahoo.com.", Some(443), Protocol::Http);
    assert_eq!(
        answer.to_text(),
        "developer.yahoo.com:443 (http) — default DENY\n\
         allowed:\n  \
           namespace default (rule default-ns-to-yahoo)\n  \
           service account otherns/sleep-yahoo, method GET, path /v1/* (rule sleep-yahoo-reads)\n\
         except:\n  \
           namespace untrusted (rule deny-untrusted)\n\
         dry run (never enforced):\n  \
           DENY anyone, method POST (rule try-deny-posts)\n"
    );
    assert_eq!(answer.reach(), Reach::Some);
    let sa = "spiffe://cluster.local/ns/otherns/sa/sleep-yahoo";
    assert!(answer.allows(sa, None, "GET", "/v1/x?q=1"));
    assert!(!answer.allows(sa, None, "POST", "/v1/x"));
    assert!(!answer.allows(sa, None, "GET", "/v2"));
    assert!(answer.allows(
        "spiffe://cluster.local/ns/default/sa/any",
        None,
        "DELETE",
        "/"
    ));
    assert!(!answer.allows(
        "spiffe://cluster.local/ns/untrusted/sa/x",
        None,
        "GET",
        "/v1/"
    ));
    assert!(!answer.allows("", None, "GET", "/v1/"));
}

#[test]
fn on_tcp_allow_rules_with_http_conditions_drop_out_and_deny_rules_ignore_them() {
    let policy = mk_policy(
        "
rules:
- name: reads
  to: {hosts: [api.example.com], methods: [GET]}
- name: everyone
  to: {hosts: [api.example.com]}
- name: no-posts
  action: DENY
  from: {namespaces: [ci]}
  to: {methods: [POST]}
",
    );
    let answer = who_can(&policy, "api.example.com", None, Protocol::Tcp);
    let names: Vec<&str> = answer
        .allowed
        .iter()
        .map(|r| r.rule.name.as_str())
        .collect();
    assert_eq!(names, ["everyone"]);
    assert!(
        answer.denied[0].restrictions.is_empty(),
        "methods ignored on TCP"
    );
    assert!(!answer.allows("spiffe://cluster.local/ns/ci/sa/x", Some(443), "", ""));
    assert!(answer.allows("", Some(443), "", ""));
    let http = who_can(&policy, "api.example.com", None, Protocol::Http);
    assert_eq!(http.allowed.len(), 2);
    assert!(http.allows("spiffe://cluster.local/ns/ci/sa/x", Some(443), "GET", "/"));
}

#[test]
fn a_fixed_port_settles_port_conditions_and_any_port_keeps_them() {
    let policy = mk_policy(
        "
rules:
- name: tls
  to: {hosts: [a.com], ports: [443]}
- name: alt
  from: {namespaces: [ops]}
  to: {hosts: [a.com], ports: [8443]}
",
    );
    let at_443 = who_can(&policy, "a.com", Some(443), Protocol::Tcp);
    assert_eq!(at_443.allowed.len(), 1);
    assert!(at_443.allowed[0].restrictions.is_empty());
    assert_eq!(at_443.reach(), Reach::Everything);
    let any = who_can(&policy, "a.com", None, Protocol::Tcp);
    assert!(
        any.to_text().contains("  anyone, port 443 (rule tls)\n"),
        "{}",
        any.to_text()
    );
    assert!(any.allows("", Some(443), "", ""));
    assert!(!any.allows("", Some(8443), "", ""));
    assert!(
        !any.allows("", None, "", ""),
        "an ALLOW port condition needs a port"
    );
}

#[test]
fn a_host_the_policy_refuses_is_reached_by_nobody() {
    let policy = mk_policy("defaultAction: ALLOW\nrules: []\n");
    let answer = who_can(&policy, "bad host", None, Protocol::Http);
    assert_eq!(answer.reach(), Reach::Nothing);
    assert!(!answer.allows("", Some(443), "GET", "/"));
    let json = answer.to_json();
    assert_eq!(json["refused"], "invalid_host");
    assert!(answer.to_text().contains("nobody"), "{}", answer.to_text());
    let open = who_can(&policy, "a.com", None, Protocol::Http);
    assert_eq!(open.reach(), Reach::Everything);
    assert!(open.to_text().contains("anyone (default ALLOW)"));
}

#[test]
fn caller_conditions_read_as_who_they_match() {
    let policy = mk_policy(
        "
defaultAction: ALLOW
rules:
- name: not-ops
  action: DENY
  from: {notNamespaces: [ops]}
  to: {hosts: [a.com]}
- name: plaintext
  action: DENY
  from: {notPrincipals: ['*']}
- name: any-identity
  action: DENY
  from: {namespaces: ['*'], notServiceAccounts: [ops/bot]}
- name: dead
  from: {notPrincipals: ['*']}
",
    );
    let answer = who_can(&policy, "a.com", None, Protocol::Http);
    let texts: Vec<String> = answer.denied.iter().map(|r| r.caller.to_text()).collect();
    assert_eq!(
        texts,
        [
            "not namespace ops (callers without a trusted identity too)",
            "callers without a trusted identity",
            "any caller with a trusted identity, not service account ops/bot",
        ]
    );
    assert!(
        answer.allowed.is_empty(),
        "an ALLOW rule nobody can match is left out"
    );
    assert_eq!(answer.denied[1].caller.to_json()["without_identity"], true);
}

#[test]
fn what_can_reports_deny_rules_as_exceptions_on_the_grants_they_overlap() {
    let policy = mk_policy(
        "
trustDomains: [cluster.local]
rules:
- name: example
  from: {namespaces: [default]}
  to: {hosts: ['**.example.com']}
- name: google
  from: {namespaces: [default]}
  to: {hosts: [developers.google.com], ports: [443]}
- name: no-evil
  action: DENY
  to: {hosts: [evil.example.com]}
- name: someone-else
  from: {namespaces: [other]}
  to: {hosts: [x.org]}
",
    );
    let answer = what_can(
        &policy,
        "spiffe://cluster.local/ns/default/sa/sleep",
        Protocol::Http,
    );
    assert_eq!(
        answer.to_text(),
        "spiffe://cluster.local/ns/default/sa/sleep (http) — default DENY\n\
         caller: namespace default, service account sleep (trust domain cluster.local)\n\
         allowed:\n  \
           **.example.com (rule example)\n    \
             except evil.example.com (rule no-evil)\n  \
           developers.google.com, port 443 (rule google)\n"
    );
    assert!(answer.allows("api.example.com", Some(443), "GET", "/"));
    assert!(!answer.allows("evil.example.com", Some(443), "GET", "/"));
    assert!(!answer.allows("developers.google.com", Some(80), "GET", "/"));
    assert_eq!(answer.to_json()["allowed"][0]["except"][0], "no-evil");
    assert!(
        answer.to_json()["allowed"][1]["except"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let foreign = what_can(
        &policy,
        "spiffe://elsewhere/ns/default/sa/sleep",
        Protocol::Http,
    );
    assert!(foreign.identity.is_none());
    assert_eq!(foreign.reach(), Reach::Nothing);
    assert!(
        foreign
            .to_text()
            .contains("trust domain is not in trustDomains")
    );
}

#[test]
fn under_a_default_allow_what_can_is_any_host_minus_every_deny() {
    let policy = mk_policy(
        "
defaultAction: ALLOW
rules:
- name: deny-yahoo
  action: DENY
  from: {namespaces: [default]}
  to: {hosts: [developer.yahoo.com]}
",
    );
    let answer = what_can(
        &policy,
        "spiffe://cluster.local/ns/default/sa/a",
        Protocol::Tcp,
    );
    assert_eq!(
        answer.to_text(),
        "spiffe://cluster.local/ns/default/sa/a (tcp) — default ALLOW\n\
         caller: namespace default, service account a (trust domain cluster.local)\n\
         allowed:\n  \
           any host (default ALLOW)\n    \
             except developer.yahoo.com (rule deny-yahoo)\n"
    );
    let other = what_can(&policy, "", Protocol::Tcp);
    assert_eq!(other.reach(), Reach::Everything);
}

type OverlapCase = (
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
    bool,
);

#[test]
fn host_overlap_is_label_aware_and_honours_not_hosts() {
    let parse = |raw: &[&str]| -> Vec<HostPattern> {
        raw.iter().map(|h| HostPattern::parse(h).unwrap()).collect()
    };
    // (hosts of one side, hosts of the other, notHosts of the first, do they share a host)
    let cases: &[OverlapCase] = &[
        (&["*"], &["a.com"], &[], true),
        (&["a.com"], &["b.com"], &[], false),
        (&["*.a.com"], &["x.a.com"], &[], true),
        (&["*.a.com"], &["x.y.a.com"], &[], false),
        (&["*.a.com"], &["**.a.com"], &[], true),
        (&["*.b.a.com"], &["**.a.com"], &[], true),
        (&["*.a.com"], &["**.b.a.com"], &[], false),
        (&["*.a.com"], &["*.b.a.com"], &[], false),
        (&["**.a.com"], &["**.b.a.com"], &[], true),
        (&["**.a.com"], &["**.ba.com"], &[], false),
        (&["**.a.com"], &["**.b.a.com"], &["**.b.a.com"], false),
        (&["**.a.com"], &["**.b.a.com"], &["*.b.a.com"], true),
        (&["**.a.com"], &["*.b.a.com"], &["**.a.com"], false),
        (&["*.a.com"], &["*.a.com"], &["x.a.com"], true),
        (&["x.a.com"], &["*.a.com"], &["x.a.com"], false),
        (&["*"], &["*"], &["*"], false),
        (&["*"], &["*"], &["**.com"], true),
    ];
    for (a, b, not_hosts, expected) in cases {
        let (a_hosts, b_hosts, not) = (parse(a), parse(b), parse(not_hosts));
        let left = DestinationCondition {
            hosts: &a_hosts,
            not_hosts: &not,
            ..DestinationCondition::default()
        };
        let right = DestinationCondition {
            hosts: &b_hosts,
            ..DestinationCondition::default()
        };
        assert_eq!(
            left.overlaps(&right),
            *expected,
            "{a:?} ∩ {b:?} minus {not_hosts:?}"
        );
        assert_eq!(
            right.overlaps(&left),
            *expected,
            "{b:?} ∩ {a:?} minus {not_hosts:?}"
        );
    }
}

#[test]
fn restrictions_overlap_only_when_every_condition_shares_a_value() {
    let policy = mk_policy(
        "
rules:
- name: a
  to: {ports: [443], methods: [GET], paths: ['/api/*']}
- name: same-prefix
  action: DENY
  to: {ports: [443], paths: ['/api/v1']}
- name: other-port
  action: DENY
  to: {ports: [80]}
- name: other-path
  action: DENY
  to: {paths: ['/health', '/ap']}
- name: other-method
  action: DENY
  to: {methods: [POST]}
",
    );
    let answer = what_can(&policy, "", Protocol::Http);
    let grant = &answer.allowed[0].destination;
    let except: Vec<&str> = answer
        .exceptions(grant)
        .map(|d| d.rule.name.as_str())
        .collect();
    assert_eq!(except, ["same-prefix"]);
}
