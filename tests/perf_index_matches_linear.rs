//! The rule index is an optimisation, not a semantics: on random rule sets and requests, `Policy::decide`
//! (indexed) must return exactly what `Policy::decide_linear` (every rule, in order) returns: verdict,
//! reason, deciding rule, dry-run rule and dry-run verdict.
//!
//! Hosts, namespaces and principals are drawn from small vocabularies so rules and requests meet often;
//! the dense case packs many rules onto few, deeply nested host patterns so that large buckets (split by
//! kind and namespace) and more candidate lists than the merge holds on the stack are exercised too.

use egress_authz::policy::{Decision, EgressRequest, HttpRequest, Policy, SourceFile, compile};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use serde_json::{Value, json};

const HOSTS: &[&str] = &[
    "a.com",
    "b.a.com",
    "c.b.a.com",
    "e.d.c.b.a.com",
    "f.e.d.c.b.a.com",
    "x.org",
    "y.x.org",
    "api.svc.io",
    "deep.api.svc.io",
    "10.0.0.1",
];
const HOST_PATTERNS: &[&str] = &[
    "a.com",
    "b.a.com",
    "c.b.a.com",
    "e.d.c.b.a.com",
    "x.org",
    "y.x.org",
    "api.svc.io",
    "10.0.0.1",
    "*.a.com",
    "**.a.com",
    "*.b.a.com",
    "**.b.a.com",
    "**.c.b.a.com",
    "*.d.c.b.a.com",
    "**.d.c.b.a.com",
    "*.x.org",
    "**.svc.io",
    "*.api.svc.io",
    "*",
];
const NAMESPACES: &[&str] = &["default", "otherns", "team-a", "team-b"];
const NAMESPACE_PATTERNS: &[&str] = &[
    "default", "otherns", "team-a", "team-b", "team-*", "*-a", "*",
];
const SA_PATTERNS: &[&str] = &[
    "default/sleep",
    "otherns/web",
    "otherns/*",
    "team-*/sleep",
    "*/web",
    "team-a/sleep",
];
const PRINCIPAL_PATTERNS: &[&str] = &[
    "cluster.local/ns/default/sa/sleep",
    "spiffe://cluster.local/ns/otherns/sa/web",
    "cluster.local/ns/team-a/sa/sleep",
    "other.td/ns/team-a/sa/web",
    "cluster.local/ns/team-*",
    "*/sa/web",
    "*",
];
const PORTS: &[u16] = &[443, 8443];
const METHODS: &[&str] = &["GET", "POST"];
const PATHS: &[&str] = &["/api/*", "/headers", "*"];

fn names(values: &[&'static str], max: usize) -> impl Strategy<Value = Vec<String>> {
    subsequence(values.to_vec(), 0..=max).prop_map(|v| v.into_iter().map(str::to_owned).collect())
}

/// One rule as JSON (which is YAML); `from`/`to` are left out rather than written empty.
fn rule(host_patterns: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let from = (
        names(NAMESPACE_PATTERNS, 2),
        names(SA_PATTERNS, 2),
        names(PRINCIPAL_PATTERNS, 1),
        names(NAMESPACE_PATTERNS, 1),
        names(SA_PATTERNS, 1),
        names(PRINCIPAL_PATTERNS, 1),
    );
    let to = (
        names(host_patterns, 2),
        names(host_patterns, 1),
        subsequence(PORTS.to_vec(), 0..=1),
        names(METHODS, 1),
        names(PATHS, 1),
    );
    // Weight the `not*` fields down: with them everywhere, few rules would ever match.
    (
        any::<bool>(),
        prop::bool::weighted(0.2),
        from,
        to,
        0u8..5,
        0u8..4,
    )
        .prop_map(
            |(
                deny,
                dry_run,
                (ns, sa, pr, not_ns, not_sa, not_pr),
                (hosts, not_hosts, ports, methods, paths),
                f,
                t,
            )| {
                let mut rule =
                    json!({ "action": if deny { "DENY" } else { "ALLOW" }, "dryRun": dry_run });
                let mut from = serde_json::Map::new();
                for (key, values, keep) in [
                    ("namespaces", ns, f & 1 == 1),
                    ("serviceAccounts", sa, f & 2 == 2),
                    ("principals", pr, f == 3),
                    // f == 4: only `not*` fields, which a DENY rule matches callers without
                    // identity on; the index must not skip it for them.
                    ("notNamespaces", not_ns, f == 2 || f == 4),
                    ("notServiceAccounts", not_sa, f == 1 || f == 4),
                    ("notPrincipals", not_pr, f == 0 || f == 4),
                ] {
                    if keep && !values.is_empty() {
                        from.insert(key.into(), json!(values));
                    }
                }
                let mut to = serde_json::Map::new();
                for (key, values, keep) in [
                    ("hosts", json!(hosts), t != 0),
                    ("notHosts", json!(not_hosts), t == 1),
                    ("ports", json!(ports), t >= 2),
                    ("methods", json!(methods), t == 3),
                    ("paths", json!(paths), t == 2),
                ] {
                    if keep && value_non_empty(&values) {
                        to.insert(key.into(), values);
                    }
                }
                if !from.is_empty() {
                    rule["from"] = Value::Object(from);
                }
                if !to.is_empty() {
                    rule["to"] = Value::Object(to);
                }
                rule
            },
        )
}

fn value_non_empty(value: &Value) -> bool {
    value.as_array().is_some_and(|a| !a.is_empty())
}

fn rule_file(rules: Vec<Value>, default_allow: bool, extra_trust_domain: bool) -> Value {
    let rules: Vec<Value> = rules
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            r["name"] = json!(format!("r{i}"));
            r
        })
        .collect();
    let trust_domains = if extra_trust_domain {
        json!(["cluster.local", "other.td"])
    } else {
        json!(["cluster.local"])
    };
    json!({
        "defaultAction": if default_allow { "ALLOW" } else { "DENY" },
        "trustDomains": trust_domains,
        "rules": rules,
    })
}

fn mk_policy(file: &Value) -> Policy {
    let text = serde_json::to_string_pretty(file).expect("a JSON value always serialises");
    compile(&[SourceFile {
        name: "rules.yaml".into(),
        text: text.clone(),
    }])
    .unwrap_or_else(|errors| panic!("generated rules must compile: {errors:?}\n{text}"))
}

/// A request's owned parts, so proptest can generate and shrink them.
#[derive(Clone, Debug)]
struct Req {
    http: Option<(String, String)>,
    principal: String,
    host: String,
    sni: String,
    port: Option<u16>,
}

fn request() -> impl Strategy<Value = Req> {
    let principal = prop_oneof![
        Just(String::new()),
        Just("not-a-spiffe-id".to_owned()),
        Just("spiffe://foreign.td/ns/default/sa/sleep".to_owned()),
        Just("spiffe://other.td/ns/team-a/sa/web".to_owned()),
        (select(NAMESPACES), select(&["sleep", "web"][..]))
            .prop_map(|(ns, sa)| format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")),
    ];
    let host = prop_oneof![
        8 => select(HOSTS).prop_map(str::to_owned),
        1 => Just("B.A.COM.".to_owned()),
        1 => Just("unknown.net".to_owned()),
        1 => Just("bad host".to_owned()),
    ];
    let http = prop::option::weighted(
        0.6,
        (
            select(&["GET", "POST", "get"][..]),
            select(&["/api/x?q=1", "/headers", "/"][..]),
        )
            .prop_map(|(m, p)| (m.to_owned(), p.to_owned())),
    );
    let sni = prop_oneof![
        4 => Just(String::new()),
        1 => Just("outbound_.443_._.egress.istio-system.svc.cluster.local".to_owned()),
        1 => select(HOSTS).prop_map(str::to_owned),
    ];
    let port = prop::option::weighted(0.9, select(PORTS));
    (http, principal, host, sni, port).prop_map(|(http, principal, host, sni, port)| Req {
        http,
        principal,
        host,
        sni,
        port,
    })
}

fn egress(req: &Req) -> EgressRequest<'_> {
    match &req.http {
        Some((method, path)) => EgressRequest {
            http: Some(HttpRequest {
                authority: &req.host,
                method,
                path,
            }),
            principal: &req.principal,
            destination_service: "",
            sni: &req.sni,
            port: req.port,
        },
        None => EgressRequest {
            http: None,
            principal: &req.principal,
            destination_service: &req.host,
            sni: &req.sni,
            port: req.port,
        },
    }
}

fn summary(d: &Decision<'_>) -> String {
    format!(
        "{:?} {:?} rule={:?} dry_run={:?}",
        d.verdict,
        d.reason,
        d.rule.map(|r| &r.name),
        d.dry_run.map(|dr| (&dr.rule.name, dr.verdict)),
    )
}

fn assert_same(policy: &Policy, requests: &[Req]) -> Result<(), TestCaseError> {
    for req in requests {
        let request = egress(req);
        let indexed = policy.decide(&request);
        let linear = policy.decide_linear(&request);
        prop_assert_eq!(summary(&indexed), summary(&linear), "request {:?}", req);
        // Same rule objects, not just equal names.
        prop_assert!(indexed.rule.map(std::ptr::from_ref) == linear.rule.map(std::ptr::from_ref));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn index_decides_like_linear_scan(
        rules in prop::collection::vec(rule(HOST_PATTERNS), 0..40),
        default_allow in any::<bool>(),
        extra_td in any::<bool>(),
        requests in prop::collection::vec(request(), 1..48),
    ) {
        let policy = mk_policy(&rule_file(rules, default_allow, extra_td));
        assert_same(&policy, &requests)?;
    }
}

/// Deep wildcard patterns only, many rules: buckets exceed the split threshold; `e.d.c.b.a.com` gathers
/// more candidate lists than the merge holds on the stack, and `f.e.d.c.b.a.com` reaches more buckets
/// than are kept per request (exact, any-host and seven suffix buckets), so both fallbacks run.
const DEEP_PATTERNS: &[&str] = &[
    "e.d.c.b.a.com",
    "f.e.d.c.b.a.com",
    "**.com",
    "**.a.com",
    "**.b.a.com",
    "**.c.b.a.com",
    "*.d.c.b.a.com",
    "**.d.c.b.a.com",
    "*.e.d.c.b.a.com",
    "**.e.d.c.b.a.com",
    "*",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn index_decides_like_linear_scan_on_dense_buckets(
        rules in prop::collection::vec(rule(DEEP_PATTERNS), 100..300),
        default_allow in any::<bool>(),
        requests in prop::collection::vec(request(), 1..48),
    ) {
        let policy = mk_policy(&rule_file(rules, default_allow, false));
        for host in ["e.d.c.b.a.com", "f.e.d.c.b.a.com"] {
            let deep = Req {
                http: None,
                principal: "spiffe://cluster.local/ns/team-a/sa/sleep".into(),
                host: host.into(),
                sni: String::new(),
                port: Some(443),
            };
            assert_same(&policy, &[deep])?;
        }
        assert_same(&policy, &requests)?;
    }
}
