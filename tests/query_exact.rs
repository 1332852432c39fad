//! `query` is exact, not a heuristic: on generated rule sets and requests, `Policy::decide` allows a
//! request exactly when the who-can answer for its destination allows its caller, and exactly when the
//! what-can answer for its caller allows its destination.
//!
//! Rule sets draw from small vocabularies (a few namespaces, service accounts, hosts, ports, methods and
//! paths, with every wildcard form) so that rules and requests meet often; they mix ALLOW and DENY,
//! enforced and dry-run rules, `not*` fields and HTTP-only conditions, under either default. Requests
//! come with and without a trusted identity (none, malformed, foreign trust domain), over HTTP and TCP,
//! with odd spellings of hosts, methods and paths.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use egress_authz::policy::{
    EgressRequest, HttpInput, HttpRequest, Policy, Protocol, SourceFile, Verdict, compile,
};
use egress_authz::query::{Reach, what_can, who_can};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use serde_json::{Map, Value, json};

const NAMESPACE_PATTERNS: &[&str] = &["default", "otherns", "team-*", "*-a", "*"];
const ACCOUNT_PATTERNS: &[&str] = &[
    "default/sleep",
    "otherns/sleep",
    "team-*/web",
    "*/sleep",
    "*/*",
];
const PRINCIPAL_PATTERNS: &[&str] = &[
    "cluster.local/ns/default/sa/sleep",
    "other.td/ns/team-a/sa/web",
    "cluster.local/ns/team-*",
    "*/sa/web",
    "*",
];
const HOST_PATTERNS: &[&str] = &[
    "a.com",
    "b.a.com",
    "c.b.a.com",
    "*.a.com",
    "**.a.com",
    "*.b.a.com",
    "**.b.a.com",
    "x.org",
    "*.x.org",
    "10.0.0.1",
    "*",
];
const PORTS: &[u16] = &[443, 8443];
const METHODS: &[&str] = &["GET", "POST"];
const PATH_PATTERNS: &[&str] = &["/api/*", "/headers", "*"];

const PRINCIPALS: &[&str] = &[
    "",
    "not-a-spiffe-id",
    "spiffe://foreign.td/ns/default/sa/sleep",
    "spiffe://other.td/ns/team-a/sa/web",
    "spiffe://cluster.local/ns/default/sa/sleep",
    "spiffe://cluster.local/ns/default/sa/web",
    "spiffe://cluster.local/ns/otherns/sa/sleep",
    "spiffe://cluster.local/ns/team-a/sa/web",
    "spiffe://cluster.local/ns/team-b/sa/sleep",
];
const HOSTS: &[&str] = &[
    "a.com",
    "b.a.com",
    "c.b.a.com",
    "d.c.b.a.com",
    "x.org",
    "y.x.org",
    "z.y.x.org",
    "B.A.COM.",
    "10.0.0.1",
    "0x0a.0.0.1",
    "nope.net",
    "bad host",
    "",
];
const REQUEST_PORTS: &[Option<u16>] = &[Some(443), Some(8443), Some(80), None];
const REQUEST_METHODS: &[&str] = &["GET", "get", "POST", "DELETE", ""];
const REQUEST_PATHS: &[&str] = &["/api/x?q=1", "/headers", "/", "/headers#top", ""];

fn some_of(values: &[&'static str], max: usize) -> impl Strategy<Value = Vec<&'static str>> {
    subsequence(values.to_vec(), 0..=max)
}

/// A `from:` block: each field present with probability about one in three, `not*` fields less often
/// (with them everywhere, few rules would ever match). `None` when every field came out empty.
fn from_block() -> impl Strategy<Value = Option<Value>> {
    let field = |values: &'static [&'static str], weight: f64| {
        prop::option::weighted(weight, some_of(values, 2))
    };
    (
        field(NAMESPACE_PATTERNS, 0.35),
        field(ACCOUNT_PATTERNS, 0.3),
        field(PRINCIPAL_PATTERNS, 0.25),
        field(NAMESPACE_PATTERNS, 0.15),
        field(ACCOUNT_PATTERNS, 0.15),
        field(PRINCIPAL_PATTERNS, 0.15),
    )
        .prop_map(|(ns, sa, pr, not_ns, not_sa, not_pr)| {
            block([
                ("namespaces", ns.map(|v| json!(v))),
                ("serviceAccounts", sa.map(|v| json!(v))),
                ("principals", pr.map(|v| json!(v))),
                ("notNamespaces", not_ns.map(|v| json!(v))),
                ("notServiceAccounts", not_sa.map(|v| json!(v))),
                ("notPrincipals", not_pr.map(|v| json!(v))),
            ])
        })
}

fn to_block() -> impl Strategy<Value = Option<Value>> {
    (
        prop::option::weighted(0.7, some_of(HOST_PATTERNS, 2)),
        prop::option::weighted(0.35, some_of(HOST_PATTERNS, 2)),
        prop::option::weighted(0.3, subsequence(PORTS.to_vec(), 0..=2)),
        prop::option::weighted(0.25, some_of(METHODS, 1)),
        prop::option::weighted(0.25, some_of(PATH_PATTERNS, 2)),
    )
        .prop_map(|(hosts, not_hosts, ports, methods, paths)| {
            block([
                ("hosts", hosts.map(|v| json!(v))),
                ("notHosts", not_hosts.map(|v| json!(v))),
                ("ports", ports.map(|v| json!(v))),
                ("methods", methods.map(|v| json!(v))),
                ("paths", paths.map(|v| json!(v))),
            ])
        })
}

/// The non-empty fields as a block, or `None` (an empty block is a compile error, not "anything").
fn block<const N: usize>(fields: [(&str, Option<Value>); N]) -> Option<Value> {
    let map: Map<String, Value> = fields
        .into_iter()
        .filter_map(|(key, value)| {
            let value = value.filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))?;
            Some((key.to_owned(), value))
        })
        .collect();
    (!map.is_empty()).then_some(Value::Object(map))
}

fn rule() -> impl Strategy<Value = Value> {
    (
        any::<bool>(),
        prop::bool::weighted(0.15),
        from_block(),
        to_block(),
    )
        .prop_map(|(deny, dry_run, from, to)| {
            let mut rule = json!({"action": if deny { "DENY" } else { "ALLOW" }});
            if dry_run {
                rule["dryRun"] = json!(true);
            }
            if let Some(from) = from {
                rule["from"] = from;
            }
            if let Some(to) = to {
                rule["to"] = to;
            }
            rule
        })
}

fn policy() -> impl Strategy<Value = (Policy, String)> {
    (
        prop::collection::vec(rule(), 0..8),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(rules, default_allow, trust_other)| {
            let rules: Vec<Value> = rules
                .into_iter()
                .enumerate()
                .map(|(index, mut rule)| {
                    rule["name"] = json!(format!("rule-{index}"));
                    rule
                })
                .collect();
            let trust_domains = if trust_other {
                json!(["cluster.local", "other.td"])
            } else {
                json!(["cluster.local"])
            };
            let file = json!({
                "defaultAction": if default_allow { "ALLOW" } else { "DENY" },
                "trustDomains": trust_domains,
                "rules": rules,
            });
            // JSON is YAML.
            let text = serde_json::to_string_pretty(&file).unwrap();
            let policy = compile(&[SourceFile {
                name: "rules.yaml".to_owned(),
                text: text.clone(),
            }])
            .unwrap_or_else(|errors| panic!("generated rules must compile: {errors:?}\n{text}"));
            (policy, text)
        })
}

#[derive(Clone, Debug)]
struct Request {
    principal: &'static str,
    host: &'static str,
    port: Option<u16>,
    method: &'static str,
    path: &'static str,
    protocol: Protocol,
}

fn request() -> impl Strategy<Value = Request> {
    (
        select(PRINCIPALS),
        select(HOSTS),
        select(REQUEST_PORTS),
        select(REQUEST_METHODS),
        select(REQUEST_PATHS),
        prop_oneof![3 => Just(Protocol::Http), 1 => Just(Protocol::Tcp)],
    )
        .prop_map(|(principal, host, port, method, path, protocol)| Request {
            principal,
            host,
            port,
            method,
            path,
            protocol,
        })
}

/// The request as Envoy's check would carry it (as `explain` builds it).
fn egress(request: &Request) -> EgressRequest<'static> {
    let http = request.protocol == Protocol::Http;
    EgressRequest {
        http: http.then_some(HttpRequest {
            authority: request.host,
            method: request.method,
            path: request.path,
        }),
        principal: request.principal,
        destination_service: if http { "" } else { request.host },
        sni: "",
        port: request.port,
    }
}

/// Checks one request against both queries; `Err` describes the first disagreement.
fn agree(policy: &Policy, r: &Request) -> Result<(), String> {
    let decided = policy.decide(&egress(r)).verdict == Verdict::Allow;
    let answers = [
        (
            "who-can at the request's port",
            r.port.map(|port| {
                who_can(policy, r.host, Some(port), r.protocol).allows(
                    r.principal,
                    None,
                    r.method,
                    r.path,
                )
            }),
        ),
        (
            "who-can at any port",
            Some(who_can(policy, r.host, None, r.protocol).allows(
                r.principal,
                r.port,
                r.method,
                r.path,
            )),
        ),
        (
            "what-can",
            Some(
                what_can(policy, r.principal, r.protocol).allows(r.host, r.port, r.method, r.path),
            ),
        ),
    ];
    for (query, answer) in answers {
        if let Some(answer) = answer
            && answer != decided
        {
            return Err(format!("{query} says {answer}, decide says {decided}"));
        }
    }
    // What-can's reach is over the destinations the policy decides on: a host it refuses before any
    // rule (`bad host`) is denied to everyone.
    let mut scratch = None;
    let decidable = policy.destination_host(&egress(r), &mut scratch).is_ok();
    let reaches = [
        (
            "who-can",
            Some(who_can(policy, r.host, r.port, r.protocol).reach()),
        ),
        (
            "what-can",
            decidable.then(|| what_can(policy, r.principal, r.protocol).reach()),
        ),
    ];
    for (query, reach) in reaches {
        let Some(reach) = reach else { continue };
        let contradicted = match reach {
            Reach::Nothing => decided,
            Reach::Everything => !decided,
            Reach::Some => false,
        };
        if contradicted {
            return Err(format!(
                "{query} says it reaches {reach:?}, decide says {decided}"
            ));
        }
    }
    exceptions_are_complete(policy, r)
}

/// A DENY rule and an ALLOW rule that both match a request share a destination, so what-can must list
/// the DENY rule among the grant's exceptions (the overlap test may not miss one).
fn exceptions_are_complete(policy: &Policy, r: &Request) -> Result<(), String> {
    let answer = what_can(policy, r.principal, r.protocol);
    let mut scratch = None;
    let Ok(host) = policy.destination_host(&egress(r), &mut scratch) else {
        return Ok(());
    };
    let path = HttpRequest {
        authority: "",
        method: r.method,
        path: r.path,
    }
    .path_without_query();
    let http = (r.protocol == Protocol::Http).then_some(HttpInput {
        method: r.method,
        path,
    });
    for grant in &answer.allowed {
        if !grant
            .destination
            .matches(Verdict::Allow, host, r.port, http)
        {
            continue;
        }
        for deny in &answer.denied {
            let listed = answer
                .exceptions(&grant.destination)
                .any(|listed| listed.rule.name == deny.rule.name);
            if deny.destination.matches(Verdict::Deny, host, r.port, http) && !listed {
                return Err(format!(
                    "{} matches with {} but is not among its exceptions",
                    deny.rule.name, grant.rule.name
                ));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(768))]

    #[test]
    fn queries_allow_exactly_what_decide_allows(
        (policy, text) in policy(),
        requests in prop::collection::vec(request(), 1..12),
    ) {
        for request in &requests {
            if let Err(problem) = agree(&policy, request) {
                prop_assert!(false, "{problem}\nrequest: {request:?}\nrules:\n{text}");
            }
        }
    }
}
