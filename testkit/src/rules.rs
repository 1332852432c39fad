//! A generated rule set of any size, and requests that exercise it, shared by the benchmarks
//! (`benches/decide.rs`), the allocation test (`tests/perf_alloc.rs`) and the load-benchmark examples
//! (it is test tooling, not part of the library).
//!
//! The mix: 2 fixed rules without a host condition, then per 10 rules 2 DENY rules (an exact host and a
//! `*.` suffix), 3 ALLOWs by service account to an exact host and port, 2 ALLOWs by namespace to two exact
//! hosts, 1 ALLOW to a `*.` suffix, 1 to a `**.` suffix and 1 HTTP-only ALLOW (`team-*` namespaces, method
//! and path). Namespaces cycle over 500, service accounts over 7 per namespace. Every host is distinct, so
//! the linear evaluator has to look at every rule while the index looks at a handful.

use std::fmt::Write as _;

use egress_authz::policy::{EgressRequest, HttpRequest};

/// The YAML rule file with `n` generated rules after the 2 fixed ones (`n >= 10` for every request kind to
/// have a target), in block style.
pub fn generate_rules(n: usize) -> String {
    write_rules(n, Style::Block)
}

/// [`generate_rules`] with each rule in YAML flow style on one line (`- {name: r0, to: {hosts: [..]}}`).
pub fn generate_rules_flow(n: usize) -> String {
    write_rules(n, Style::Flow)
}

/// [`generate_rules`] as JSON on a single line, as a program would write it.
pub fn generate_rules_json(n: usize) -> String {
    write_rules(n, Style::Json)
}

/// How a rule file is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Block style, one key per line.
    Block,
    /// Top level in block style, each rule in flow style on its own line.
    Flow,
    /// JSON on one line.
    Json,
}

/// One generated rule: name, DENY or ALLOW, the `from` condition, the `to` conditions in order.
struct GeneratedRule {
    name: String,
    deny: bool,
    from: Option<(&'static str, Vec<String>)>,
    to: Vec<(&'static str, Vec<String>)>,
}

fn generated_rule(i: usize) -> GeneratedRule {
    let ns = i % 500;
    let sa = i % 7;
    let rule =
        |deny, from: (&'static str, String), to: Vec<(&'static str, Vec<String>)>| GeneratedRule {
            name: format!("r{i}"),
            deny,
            from: Some((from.0, vec![from.1])),
            to,
        };
    let one = |value: String| vec![value];
    let port = || ("ports", one("443".to_owned()));
    match i % 10 {
        0 => rule(
            true,
            ("namespaces", format!("ns-{ns}")),
            vec![("hosts", one(format!("blocked-{i}.example.com")))],
        ),
        1..=3 => rule(
            false,
            ("serviceAccounts", format!("ns-{ns}/sa-{sa}")),
            vec![
                ("hosts", one(format!("svc-{i}.partner-{}.com", i % 97))),
                port(),
            ],
        ),
        4 | 5 => rule(
            false,
            ("namespaces", format!("ns-{ns}")),
            vec![(
                "hosts",
                vec![
                    format!("api-{i}.example.net"),
                    format!("www.api-{i}.example.net"),
                ],
            )],
        ),
        6 => rule(
            false,
            ("namespaces", format!("ns-{ns}")),
            vec![("hosts", one(format!("*.api-{i}.example.io")))],
        ),
        7 => rule(
            false,
            ("serviceAccounts", format!("ns-{ns}/*")),
            vec![("hosts", one(format!("**.bucket-{i}.s3.amazonaws.com")))],
        ),
        8 => rule(
            false,
            ("namespaces", "team-*".to_owned()),
            vec![
                ("hosts", one(format!("h-{i}.example.org"))),
                ("methods", one("GET".to_owned())),
                ("paths", one("/api/*".to_owned())),
            ],
        ),
        _ => rule(
            true,
            ("namespaces", format!("ns-{ns}")),
            vec![("hosts", one(format!("*.evil-{i}.example.com")))],
        ),
    }
}

fn fixed_rules() -> [GeneratedRule; 2] {
    [
        GeneratedRule {
            name: "deny-quarantine-anywhere".to_owned(),
            deny: true,
            from: Some(("namespaces", vec!["quarantine".to_owned()])),
            to: Vec::new(),
        },
        GeneratedRule {
            name: "allow-monitoring-anywhere".to_owned(),
            deny: false,
            from: Some(("serviceAccounts", vec!["monitoring/prometheus".to_owned()])),
            to: vec![
                ("hosts", vec!["*".to_owned()]),
                ("ports", vec!["443".to_owned()]),
            ],
        },
    ]
}

/// A list value: numbers (ports) bare, strings quoted in JSON and, in YAML, when they hold a `*` (an
/// alias indicator at the start of a plain scalar).
fn list(values: &[String], style: Style) -> String {
    let items: Vec<String> = values
        .iter()
        .map(|v| {
            let number = v.bytes().all(|b| b.is_ascii_digit());
            if number || (style != Style::Json && !v.contains('*')) {
                v.clone()
            } else {
                format!("\"{v}\"")
            }
        })
        .collect();
    format!(
        "[{}]",
        items.join(if style == Style::Json { "," } else { ", " })
    )
}

fn write_rule(out: &mut String, rule: &GeneratedRule, style: Style) {
    let GeneratedRule {
        name,
        deny,
        from,
        to,
    } = rule;
    match style {
        Style::Block => {
            let _ = writeln!(out, "- name: {name}");
            if *deny {
                out.push_str("  action: DENY\n");
            }
            if let Some((key, values)) = from {
                let _ = writeln!(out, "  from:\n    {key}: {}", list(values, style));
            }
            if !to.is_empty() {
                out.push_str("  to:\n");
                for (key, values) in to {
                    let _ = writeln!(out, "    {key}: {}", list(values, style));
                }
            }
        }
        Style::Flow | Style::Json => {
            let key = |k: &str| {
                if style == Style::Json {
                    format!("\"{k}\":")
                } else {
                    format!("{k}: ")
                }
            };
            let sep = if style == Style::Json { "," } else { ", " };
            let name = if style == Style::Json {
                format!("\"{name}\"")
            } else {
                name.clone()
            };
            let mut fields = vec![format!("{}{name}", key("name"))];
            if *deny {
                let action = if style == Style::Json {
                    "\"DENY\""
                } else {
                    "DENY"
                };
                fields.push(format!("{}{action}", key("action")));
            }
            if let Some((k, values)) = from {
                fields.push(format!(
                    "{}{{{}{}}}",
                    key("from"),
                    key(k),
                    list(values, style)
                ));
            }
            if !to.is_empty() {
                let conditions: Vec<String> = to
                    .iter()
                    .map(|(k, values)| format!("{}{}", key(k), list(values, style)))
                    .collect();
                fields.push(format!("{}{{{}}}", key("to"), conditions.join(sep)));
            }
            let _ = write!(out, "{{{}}}", fields.join(sep));
        }
    }
}

fn write_rules(n: usize, style: Style) -> String {
    let mut out = String::with_capacity(n * 160);
    if style == Style::Json {
        out.push_str(
            "{\"defaultAction\":\"DENY\",\"trustDomains\":[\"cluster.local\"],\"rules\":[",
        );
    } else {
        out.push_str("# Generated by testkit/src/rules.rs\ndefaultAction: DENY\ntrustDomains: [cluster.local]\nrules:\n");
    }
    let rules = fixed_rules().into_iter().chain((0..n).map(generated_rule));
    for (index, rule) in rules.enumerate() {
        match style {
            Style::Block => write_rule(&mut out, &rule, style),
            Style::Flow => {
                out.push_str("- ");
                write_rule(&mut out, &rule, style);
                out.push('\n');
            }
            Style::Json => {
                if index > 0 {
                    out.push(',');
                }
                write_rule(&mut out, &rule, style);
            }
        }
    }
    if style == Style::Json {
        out.push_str("]}\n");
    }
    out
}

/// A request for the generated rules, with owned fields and the verdict it must get.
#[derive(Clone, Debug)]
pub struct SampleRequest {
    /// Short name for benchmark ids.
    pub kind: &'static str,
    /// `spiffe://…` principal.
    pub principal: String,
    /// Host (`:authority` for HTTP, SNI for TCP).
    pub host: String,
    /// `Some((method, path))` for HTTP.
    pub http: Option<(String, String)>,
    /// Destination port.
    pub port: u16,
    /// `true` when the rules allow it.
    pub allowed: bool,
}

/// The last generated rule index below `n` with `i % 10 == rem` (rules near the end are the
/// linear evaluator's worst case).
fn last(n: usize, rem: usize) -> usize {
    let max = n.max(10) - 1;
    max - ((max + 10 - rem) % 10)
}

fn principal(ns: &str, sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
}

impl SampleRequest {
    /// The request as `Policy::decide` takes it: HTTP with `:authority`, or TCP with the host as SNI.
    pub fn egress(&self) -> EgressRequest<'_> {
        EgressRequest {
            http: self.http.as_ref().map(|(method, path)| HttpRequest {
                authority: &self.host,
                method,
                path,
            }),
            principal: &self.principal,
            destination_service: if self.http.is_none() { &self.host } else { "" },
            sni: "",
            port: Some(self.port),
        }
    }
}

/// Requests aimed at rules near the end of a generated set of `n` rules, plus one that matches nothing.
pub fn sample_requests(n: usize) -> Vec<SampleRequest> {
    let exact = last(n, 3);
    let wildcard = last(n, 6);
    let deny = last(n, 9);
    let http = last(n, 8);
    vec![
        SampleRequest {
            kind: "allow_exact_tcp",
            principal: principal(&format!("ns-{}", exact % 500), &format!("sa-{}", exact % 7)),
            host: format!("svc-{exact}.partner-{}.com", exact % 97),
            http: None,
            port: 443,
            allowed: true,
        },
        SampleRequest {
            kind: "allow_wildcard_http",
            principal: principal(&format!("ns-{}", wildcard % 500), "web"),
            host: format!("v2.api-{wildcard}.example.io"),
            http: Some(("GET".into(), "/v2/items?page=2".into())),
            port: 443,
            allowed: true,
        },
        SampleRequest {
            kind: "deny_wildcard_http",
            principal: principal(&format!("ns-{}", deny % 500), "web"),
            host: format!("c2.evil-{deny}.example.com:443"),
            http: Some(("POST".into(), "/upload".into())),
            port: 443,
            allowed: false,
        },
        SampleRequest {
            kind: "allow_path_http",
            principal: principal("team-payments", "api"),
            host: format!("h-{http}.example.org"),
            http: Some(("GET".into(), "/api/v1/status".into())),
            port: 443,
            allowed: true,
        },
        SampleRequest {
            kind: "no_match_tcp",
            principal: principal("ns-1", "sa-1"),
            host: "unknown.example.com".into(),
            http: None,
            port: 443,
            allowed: false,
        },
    ]
}
