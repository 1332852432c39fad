use std::collections::BTreeSet;

use super::collapse::{collapse, is_public_suffix};
use super::render::sanitized;
use super::*;
use crate::policy::{EgressRequest, HttpRequest, Policy, Reason, SourceFile, Verdict, compile};
use crate::traffic::document::{FORMAT, FlowEntry, VERSION, format_time};
use crate::traffic::{NO_CALLER, NO_HOST};

const T0: u64 = 1_800_000_000;

fn mk_entry(
    caller: &str,
    protocol: &str,
    host: &str,
    port: Option<u16>,
    reason: Reason,
) -> FlowEntry {
    let (namespace, service_account) = caller.split_once('/').unwrap_or((caller, caller));
    FlowEntry {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        protocol: protocol.to_owned(),
        host: host.to_owned(),
        port,
        decision: reason.verdict().as_str().to_owned(),
        reason: reason.as_str().to_owned(),
        rule: matches!(reason, Reason::AllowedByRule | Reason::DeniedByRule)
            .then(|| "some-rule".to_owned()),
        count: 1,
        first_seen: format_time(T0),
        last_seen: format_time(T0 + 60),
    }
}

/// An allowed HTTP flow on port 443 (the common case).
fn mk_flow(caller: &str, host: &str) -> FlowEntry {
    mk_entry(caller, "http", host, Some(443), Reason::DefaultAllow)
}

fn with_count(mut entry: FlowEntry, count: u64) -> FlowEntry {
    entry.count = count;
    entry
}

fn mk_document(entries: Vec<FlowEntry>) -> InventoryDocument {
    InventoryDocument {
        format: FORMAT.to_owned(),
        version: VERSION,
        generated_at: format_time(T0 + 3600),
        trust_domains: vec!["cluster.local".to_owned()],
        max_entries: 100_000,
        overflow: 0,
        entries,
    }
}

fn mk_options(by: Grouping, min_count: u64, collapse: Option<usize>) -> SuggestOptions {
    SuggestOptions {
        by,
        min_count,
        collapse,
    }
}

fn mk_suggestion(entries: Vec<FlowEntry>, options: &SuggestOptions) -> Suggestion {
    let documents = [("traffic.json".to_owned(), mk_document(entries))];
    suggest(&SuggestInput {
        documents: &documents,
        options,
        current: None,
    })
}

fn mk_suggestion_beside(entries: Vec<FlowEntry>, current: &Policy) -> Suggestion {
    let documents = [("traffic.json".to_owned(), mk_document(entries))];
    suggest(&SuggestInput {
        documents: &documents,
        options: &SuggestOptions::default(),
        current: Some(("rules/", current)),
    })
}

fn mk_policy(files: &[(&str, &str)]) -> Policy {
    let files: Vec<SourceFile> = files
        .iter()
        .map(|(name, text)| SourceFile {
            name: (*name).to_owned(),
            text: (*text).to_owned(),
        })
        .collect();
    compile(&files).unwrap_or_else(|errors| {
        let texts: Vec<&str> = files.iter().map(|f| f.text.as_str()).collect();
        panic!("must compile: {errors:?}\n{}", texts.join("\n---\n"))
    })
}

/// The suggestion compiled on its own.
fn mk_compiled(suggestion: &Suggestion) -> Policy {
    mk_policy(&[("suggested.yaml", &suggestion.rule_file)])
}

/// The reason `policy` gives `caller` (`ns/sa`) reaching `host:port` over `protocol`.
fn decide(policy: &Policy, caller: &str, protocol: &str, host: &str, port: Option<u16>) -> Reason {
    let (namespace, service_account) = caller.split_once('/').unwrap();
    let principal = format!("spiffe://cluster.local/ns/{namespace}/sa/{service_account}");
    let request = if protocol == "http" {
        EgressRequest {
            http: Some(HttpRequest {
                authority: host,
                method: "GET",
                path: "/",
            }),
            principal: &principal,
            port,
            ..EgressRequest::default()
        }
    } else {
        EgressRequest {
            principal: &principal,
            sni: host,
            port,
            ..EgressRequest::default()
        }
    };
    policy.decide(&request).reason
}

fn names(policy: &Policy) -> Vec<&str> {
    policy.rules().iter().map(|r| r.name.as_str()).collect()
}

/// The `to:` block of the rule named `name` in the suggestion's text.
fn rule_block<'a>(text: &'a str, name: &str) -> &'a str {
    let start = text
        .find(&format!("- name: '{name}'"))
        .unwrap_or_else(|| panic!("no rule {name} in\n{text}"));
    let rest = &text[start..];
    let end = rest[1..].find("\n- name").map_or(rest.len(), |i| i + 1);
    let block = &rest[..end];
    block.split("\n#").next().unwrap_or(block)
}

#[test]
fn hosts_sharing_a_port_set_share_a_rule_and_no_host_is_allowed_on_another_port() {
    let suggestion = mk_suggestion(
        vec![
            mk_flow("payments/api", "api.stripe.com"),
            mk_entry(
                "payments/api",
                "tcp",
                "files.example.com",
                Some(443),
                Reason::DefaultAllow,
            ),
            mk_entry(
                "payments/api",
                "tcp",
                "db.example.com",
                Some(5432),
                Reason::DefaultAllow,
            ),
            mk_flow("payments/worker", "api.stripe.com"),
        ],
        &SuggestOptions::default(),
    );
    let policy = mk_compiled(&suggestion);
    assert_eq!(
        names(&policy),
        [
            "allow-payments.api-443",
            "allow-payments.api-5432",
            "allow-payments.worker"
        ]
    );
    let text = &suggestion.rule_file;
    let shared = rule_block(text, "allow-payments.api-443");
    assert!(
        shared.contains("serviceAccounts: ['payments/api']")
            && shared.contains("hosts: ['api.stripe.com', 'files.example.com']")
            && shared.contains("ports: [443]"),
        "{shared}"
    );
    assert!(rule_block(text, "allow-payments.api-5432").contains("ports: [5432]"));
    assert_eq!(
        decide(&policy, "payments/api", "tcp", "db.example.com", Some(5432)),
        Reason::AllowedByRule
    );
    assert_eq!(
        decide(&policy, "payments/api", "tcp", "db.example.com", Some(443)),
        Reason::NoMatchingRule
    );
    assert_eq!(
        decide(
            &policy,
            "payments/api",
            "tcp",
            "files.example.com",
            Some(5432)
        ),
        Reason::NoMatchingRule
    );
    assert_eq!(
        decide(
            &policy,
            "payments/worker",
            "http",
            "files.example.com",
            Some(443)
        ),
        Reason::NoMatchingRule
    );
    assert_eq!(policy.settings().default_action, Verdict::Deny);
    assert_eq!(policy.settings().trust_domains, ["cluster.local"]);
}

#[test]
fn by_namespace_allows_every_service_account_of_the_namespace() {
    let suggestion = mk_suggestion(
        vec![
            mk_flow("payments/api", "api.stripe.com"),
            mk_flow("payments/worker", "files.example.com"),
        ],
        &mk_options(Grouping::Namespace, 1, None),
    );
    let policy = mk_compiled(&suggestion);
    assert_eq!(names(&policy), ["allow-payments"]);
    let block = rule_block(&suggestion.rule_file, "allow-payments");
    assert!(block.contains("namespaces: ['payments']"), "{block}");
    assert_eq!(
        decide(
            &policy,
            "payments/other",
            "http",
            "files.example.com",
            Some(443)
        ),
        Reason::AllowedByRule
    );
    assert_eq!(
        decide(&policy, "web/api", "http", "files.example.com", Some(443)),
        Reason::NoMatchingRule
    );
}

#[test]
fn a_flow_without_a_port_gets_a_rule_without_ports() {
    let suggestion = mk_suggestion(
        vec![
            mk_entry("a/b", "tcp", "raw.example.com", None, Reason::DefaultAllow),
            mk_flow("a/b", "api.example.com"),
            // Seen with and without a port: only a rule without ports allows both checks.
            mk_entry("a/c", "tcp", "both.example.com", None, Reason::DefaultAllow),
            mk_entry(
                "a/c",
                "tcp",
                "both.example.com",
                Some(443),
                Reason::DefaultAllow,
            ),
        ],
        &SuggestOptions::default(),
    );
    let policy = mk_compiled(&suggestion);
    assert_eq!(
        names(&policy),
        ["allow-a.b-443", "allow-a.b-any-port", "allow-a.c"]
    );
    let text = &suggestion.rule_file;
    assert!(
        !rule_block(text, "allow-a.b-any-port").contains("ports"),
        "{text}"
    );
    assert!(!rule_block(text, "allow-a.c").contains("ports"), "{text}");
    assert_eq!(
        decide(&policy, "a/b", "tcp", "raw.example.com", None),
        Reason::AllowedByRule
    );
    assert_eq!(
        decide(&policy, "a/c", "tcp", "both.example.com", Some(443)),
        Reason::AllowedByRule
    );
    assert_eq!(
        decide(&policy, "a/c", "tcp", "both.example.com", None),
        Reason::AllowedByRule
    );
    assert_eq!(
        decide(&policy, "a/b", "tcp", "api.example.com", None),
        Reason::NoMatchingRule
    );
}

#[test]
fn rule_names_fit_the_grammar_and_are_unique() {
    assert_eq!(sanitized("allow-Team_A.Sleep_"), "allow-team-a.sleep");
    assert_eq!(sanitized("allow-x.."), "allow-x");
    assert_eq!(sanitized("__"), "allow");
    let suggestion = mk_suggestion(
        vec![
            // Different callers whose names read the same once sanitised or joined with a dot.
            mk_flow("a_b/X", "one.example.com"),
            mk_flow("a-b/x", "two.example.com"),
            mk_flow("a.b/c", "three.example.com"),
            mk_flow("a/b.c", "four.example.com"),
            mk_flow("Team_A/Sleep_", "five.example.com"),
        ],
        &SuggestOptions::default(),
    );
    let policy = mk_compiled(&suggestion);
    let mut got = names(&policy);
    got.sort_unstable();
    assert_eq!(
        got,
        [
            "allow-a-b.x",
            "allow-a-b.x-2",
            "allow-a.b.c",
            "allow-a.b.c-2",
            "allow-team-a.sleep"
        ]
    );
    assert_eq!(
        decide(
            &policy,
            "Team_A/Sleep_",
            "http",
            "five.example.com",
            Some(443)
        ),
        Reason::AllowedByRule
    );
    assert_eq!(
        decide(&policy, "a.b/c", "http", "four.example.com", Some(443)),
        Reason::NoMatchingRule
    );
}

#[test]
fn output_does_not_depend_on_the_order_of_files_or_entries() {
    let one = vec![
        mk_flow("a/b", "x.example.com"),
        mk_entry(
            "a/b",
            "tcp",
            "y.example.com",
            Some(8443),
            Reason::NoMatchingRule,
        ),
        mk_flow("c/d", "x.example.com"),
    ];
    let mut two = vec![
        with_count(mk_flow("a/b", "x.example.com"), 4),
        mk_flow("e/f", "10.0.0.1"),
        mk_entry(
            NO_CALLER,
            "http",
            "x.example.com",
            Some(443),
            Reason::InvalidPrincipal,
        ),
    ];
    two[0].first_seen = format_time(T0 - 100);
    let mut reversed = one.clone();
    reversed.reverse();
    let mut doc_two = mk_document(two);
    doc_two.trust_domains = vec!["td.example".to_owned(), "cluster.local".to_owned()];
    let options = mk_options(Grouping::ServiceAccount, 1, Some(2));
    let run = |documents: &[(String, InventoryDocument)]| {
        suggest(&SuggestInput {
            documents,
            options: &options,
            current: None,
        })
    };
    let forward = run(&[
        ("one.json".to_owned(), mk_document(one)),
        ("two.json".to_owned(), doc_two.clone()),
    ]);
    let backward = run(&[
        ("two.json".to_owned(), doc_two),
        ("one.json".to_owned(), mk_document(reversed)),
    ]);
    assert_eq!(forward, backward);
    let text = &forward.rule_file;
    assert!(text.contains("# From: one.json, two.json\n"), "{text}");
    assert!(
        text.contains("trustDomains: ['cluster.local', 'td.example']\n"),
        "{text}"
    );
    let merged = format!(
        "# service account a/b: 6 checks, first seen {}, last seen {}",
        format_time(T0 - 100),
        format_time(T0 + 60)
    );
    assert!(text.contains(&merged), "{text}");
    assert!(text.contains("hosts: ['*.example.com']"), "{text}");
    mk_compiled(&forward);
}

#[test]
fn untrusted_invalid_fronted_and_denied_flows_get_no_rule() {
    let mut foreign_caller = mk_flow("a/b", "wild.example.com");
    foreign_caller.namespace = "*".to_owned();
    let entries = vec![
        mk_flow("a/b", "ok.example.com"),
        with_count(
            mk_entry(
                NO_CALLER,
                "http",
                "anon.example.com",
                Some(443),
                Reason::InvalidPrincipal,
            ),
            7,
        ),
        foreign_caller,
        mk_entry("a/b", "unknown", NO_HOST, None, Reason::InvalidRequest),
        mk_entry("a/b", "http", NO_HOST, Some(443), Reason::InvalidHost),
        with_count(
            mk_entry(
                "a/b",
                "http",
                "front.example.com",
                Some(443),
                Reason::SniHostMismatch,
            ),
            3,
        ),
        mk_entry(
            "a/b",
            "http",
            "blocked.example.com",
            Some(443),
            Reason::DeniedByRule,
        ),
        // The same caller, host and port once allowed: still no rule, the deny was deliberate.
        mk_flow("a/b", "blocked.example.com"),
    ];
    let suggestion = mk_suggestion(entries, &SuggestOptions::default());
    let policy = mk_compiled(&suggestion);
    assert_eq!(names(&policy), ["allow-a.b"]);
    for host in [
        "anon.example.com",
        "wild.example.com",
        "front.example.com",
        "blocked.example.com",
    ] {
        assert!(
            !suggestion.rule_file.contains(host),
            "{host}: {}",
            suggestion.rule_file
        );
    }
    assert_eq!(
        suggestion.summary,
        "suggest: read 8 flows (16 checks) from 1 file\n\
         suggest: turned 1 flow (1 check) into 1 rule\n\
         suggest: skipped 2 flows (8 checks): no trusted identity\n\
         suggest: skipped 2 flows (2 checks): no valid host\n\
         suggest: skipped 1 flow (3 checks): SNI/Host mismatch, domain fronting\n\
         suggest: skipped 2 flows (2 checks): denied by a DENY rule\n"
    );
}

#[test]
fn a_deny_for_one_service_account_keeps_the_host_out_of_its_namespace_rule() {
    let suggestion = mk_suggestion(
        vec![
            mk_entry(
                "a/b",
                "http",
                "blocked.example.com",
                Some(443),
                Reason::DeniedByRule,
            ),
            mk_flow("a/c", "blocked.example.com"),
            mk_flow("a/c", "ok.example.com"),
        ],
        &mk_options(Grouping::Namespace, 1, None),
    );
    let policy = mk_compiled(&suggestion);
    assert_eq!(
        decide(&policy, "a/b", "http", "blocked.example.com", Some(443)),
        Reason::NoMatchingRule
    );
    assert_eq!(
        decide(&policy, "a/c", "http", "ok.example.com", Some(443)),
        Reason::AllowedByRule
    );
}

#[test]
fn min_count_sums_every_entry_of_a_caller_host_and_port() {
    let entries = vec![
        // Two entries of one flow (another protocol, another reason): 2 checks together.
        mk_flow("a/b", "twice.example.com"),
        mk_entry(
            "a/b",
            "tcp",
            "twice.example.com",
            Some(443),
            Reason::NoMatchingRule,
        ),
        mk_flow("a/b", "once.example.com"),
        // Same host, other port: a flow of its own.
        mk_entry(
            "a/b",
            "tcp",
            "twice.example.com",
            Some(8443),
            Reason::DefaultAllow,
        ),
    ];
    let suggestion = mk_suggestion(entries, &mk_options(Grouping::ServiceAccount, 2, None));
    let policy = mk_compiled(&suggestion);
    assert_eq!(
        decide(&policy, "a/b", "http", "twice.example.com", Some(443)),
        Reason::AllowedByRule
    );
    assert_eq!(
        decide(&policy, "a/b", "http", "once.example.com", Some(443)),
        Reason::NoMatchingRule
    );
    assert_eq!(
        decide(&policy, "a/b", "tcp", "twice.example.com", Some(8443)),
        Reason::NoMatchingRule
    );
    assert!(
        suggestion
            .summary
            .contains("suggest: skipped 2 flows (2 checks): below --min-count\n"),
        "{}",
        suggestion.summary
    );
}

fn mk_collapsed(hosts: &[&str], threshold: usize, denied: &[&str]) -> Vec<(String, Vec<String>)> {
    let hosts: BTreeSet<&str> = hosts.iter().copied().collect();
    let denied: BTreeSet<String> = denied.iter().map(|h| (*h).to_owned()).collect();
    collapse(&hosts, Some(threshold), &denied)
        .into_iter()
        .map(|c| (c.pattern, c.hosts))
        .collect()
}

fn patterns(collapsed: &[(String, Vec<String>)]) -> Vec<&str> {
    collapsed.iter().map(|(p, _)| p.as_str()).collect()
}

#[test]
fn collapsing_takes_the_deepest_parent_first_and_wildcards_count_as_members() {
    let got = mk_collapsed(
        &["a.x.example.com", "b.x.example.com", "c.example.com"],
        2,
        &[],
    );
    assert_eq!(
        got,
        [(
            "**.example.com".to_owned(),
            vec![
                "a.x.example.com".to_owned(),
                "b.x.example.com".to_owned(),
                "c.example.com".to_owned()
            ]
        )]
    );
    // Three needed: the deeper wildcard forms, the parent has only two members then.
    let got = mk_collapsed(
        &[
            "a.x.example.com",
            "b.x.example.com",
            "c.x.example.com",
            "d.example.com",
        ],
        3,
        &[],
    );
    assert_eq!(patterns(&got), ["*.x.example.com", "d.example.com"]);
    // Siblings one label down: `*`; the parent itself stays exact; too few: nothing.
    let got = mk_collapsed(
        &[
            "a.example.com",
            "b.example.com",
            "example.com",
            "c.other.org",
        ],
        2,
        &[],
    );
    assert_eq!(
        patterns(&got),
        ["*.example.com", "c.other.org", "example.com"]
    );
    let got = mk_collapsed(&["a.example.com", "b.example.com"], 3, &[]);
    assert_eq!(patterns(&got), ["a.example.com", "b.example.com"]);
    // Siblings at different depths: `**`.
    let got = mk_collapsed(&["a.example.com", "b.c.example.com"], 2, &[]);
    assert_eq!(patterns(&got), ["**.example.com"]);
}

#[test]
fn collapsing_never_reaches_a_public_suffix_an_ip_or_a_denied_host() {
    for suffix in ["com", "co.uk", "s3.amazonaws.com", "github.io", "corp"] {
        assert!(is_public_suffix(suffix), "{suffix}");
    }
    assert!(!is_public_suffix("example.com") && !is_public_suffix("example.co.uk"));
    let cases: [(&[&str], &[&str]); 6] = [
        // `*.com`
        (&["a.com", "b.com"], &["a.com", "b.com"]),
        // `**.co.uk`
        (&["a.co.uk", "b.c.co.uk"], &["a.co.uk", "b.c.co.uk"]),
        // `*.s3.amazonaws.com`, and no `**.amazonaws.com` over buckets either.
        (
            &[
                "a.s3.amazonaws.com",
                "b.s3.amazonaws.com",
                "ec2.amazonaws.com",
            ],
            &[
                "a.s3.amazonaws.com",
                "b.s3.amazonaws.com",
                "ec2.amazonaws.com",
            ],
        ),
        // An unknown TLD is a suffix too; single labels never collapse.
        (&["a.corp", "b.corp"], &["a.corp", "b.corp"]),
        (
            &["10.0.0.1", "10.0.0.2", "::1", "::2"],
            &["10.0.0.1", "10.0.0.2", "::1", "::2"],
        ),
        (
            &["a.github.io", "b.github.io"],
            &["a.github.io", "b.github.io"],
        ),
    ];
    for (hosts, expected) in cases {
        assert_eq!(
            patterns(&mk_collapsed(hosts, 2, &[])),
            expected,
            "{hosts:?}"
        );
    }
    // A wildcard that would match a denied host is not formed; a narrower one still can be.
    let got = mk_collapsed(
        &["a.x.example.com", "b.x.example.com", "c.example.com"],
        2,
        &["evil.example.com"],
    );
    assert_eq!(patterns(&got), ["*.x.example.com", "c.example.com"]);
}

#[test]
fn a_wildcard_allows_the_union_of_its_hosts_ports_and_says_what_it_stands_for() {
    let suggestion = mk_suggestion(
        vec![
            mk_flow("a/b", "one.example.com"),
            mk_entry(
                "a/b",
                "tcp",
                "two.example.com",
                Some(8443),
                Reason::DefaultAllow,
            ),
            mk_flow("c/d", "three.example.com"),
        ],
        &mk_options(Grouping::ServiceAccount, 1, Some(2)),
    );
    let policy = mk_compiled(&suggestion);
    assert_eq!(
        names(&policy),
        ["allow-a.b", "allow-c.d"],
        "{}",
        suggestion.rule_file
    );
    let text = &suggestion.rule_file;
    assert!(
        text.contains(
            "# *.example.com stands for: one.example.com, two.example.com\n- name: 'allow-a.b'"
        ),
        "{text}"
    );
    assert!(
        rule_block(text, "allow-a.b").contains("ports: [443, 8443]"),
        "{text}"
    );
    assert_eq!(
        decide(&policy, "a/b", "http", "new.example.com", Some(8443)),
        Reason::AllowedByRule
    );
    // Collapsing is per caller group: c/d's single host stays exact.
    assert_eq!(
        decide(&policy, "c/d", "http", "one.example.com", Some(443)),
        Reason::NoMatchingRule
    );
}

#[test]
fn the_suggestion_allows_every_trusted_observed_flow_and_nothing_unobserved() {
    let entries = vec![
        mk_flow("payments/api", "api.stripe.com"),
        mk_entry(
            "payments/api",
            "tcp",
            "db.example.com",
            Some(5432),
            Reason::NoMatchingRule,
        ),
        mk_entry(
            "payments/api",
            "http",
            "2001:db8::1",
            Some(443),
            Reason::DefaultAllow,
        ),
        mk_entry(
            "web/front",
            "tcp",
            "cdn.example.net",
            None,
            Reason::AllowedByRule,
        ),
        mk_entry(
            "web/front",
            "http",
            "Mixed.Example.ORG",
            Some(80),
            Reason::DefaultAllow,
        ),
    ];
    for by in [Grouping::ServiceAccount, Grouping::Namespace] {
        let suggestion = mk_suggestion(entries.clone(), &mk_options(by, 1, None));
        let policy = mk_compiled(&suggestion);
        for entry in &entries {
            let caller = format!("{}/{}", entry.namespace, entry.service_account);
            let host = if entry.host.contains(':') {
                format!("[{}]", entry.host)
            } else {
                entry.host.clone()
            };
            assert_eq!(
                decide(&policy, &caller, &entry.protocol, &host, entry.port),
                Reason::AllowedByRule,
                "{by:?} {entry:?}\n{}",
                suggestion.rule_file
            );
        }
        assert_eq!(
            decide(
                &policy,
                "payments/api",
                "http",
                "unseen.example.com",
                Some(443)
            ),
            Reason::NoMatchingRule
        );
        assert_eq!(
            decide(&policy, "other/api", "http", "api.stripe.com", Some(443)),
            Reason::NoMatchingRule
        );
    }
}

const CURRENT: &str = "defaultAction: DENY
rules:
- name: allow-payments.api
  from: {serviceAccounts: [payments/api]}
  to: {hosts: [api.stripe.com]}
- name: no-pastebin
  action: DENY
  to: {hosts: [pastebin.com]}
";

#[test]
fn beside_current_rules_only_what_they_do_not_allow_is_proposed() {
    let current = mk_policy(&[("current.yaml", CURRENT)]);
    let entries = vec![
        with_count(
            mk_entry(
                "payments/api",
                "http",
                "api.stripe.com",
                Some(443),
                Reason::AllowedByRule,
            ),
            9,
        ),
        // Denied when observed; the suggestion would allow it.
        with_count(
            mk_entry(
                "payments/api",
                "tcp",
                "files.example.com",
                Some(443),
                Reason::NoMatchingRule,
            ),
            4,
        ),
        // Allowed when observed (say the default was ALLOW), denied by the current rules' DENY rule.
        mk_entry(
            "payments/api",
            "http",
            "pastebin.com",
            Some(443),
            Reason::DefaultAllow,
        ),
    ];
    let suggestion = mk_suggestion_beside(entries, &current);
    let text = &suggestion.rule_file;
    assert!(
        !text.contains("defaultAction") && !text.contains("trustDomains"),
        "{text}"
    );
    assert!(
        text.contains(
            "# Observed denies this file would newly allow:\n\
             #   payments/api -> files.example.com:443 (tcp, 4 checks denied, no_matching_rule)\n"
        ),
        "{text}"
    );
    let suggested = mk_compiled(&suggestion);
    assert_eq!(
        names(&suggested),
        ["allow-payments.api-2"],
        "must not clash with the current rule"
    );
    let block = rule_block(text, "allow-payments.api-2");
    assert!(block.contains("hosts: ['files.example.com']"), "{block}");
    // Beside the current rules, as a directory would hold them.
    let both = mk_policy(&[("current.yaml", CURRENT), ("suggested.yaml", text)]);
    assert_eq!(
        decide(&both, "payments/api", "tcp", "files.example.com", Some(443)),
        Reason::AllowedByRule
    );
    assert_eq!(
        decide(&both, "payments/api", "http", "pastebin.com", Some(443)),
        Reason::DeniedByRule
    );
    assert_eq!(
        suggestion.summary,
        "suggest: read 3 flows (14 checks) from 1 file\n\
         suggest: turned 1 flow (4 checks) into 1 rule\n\
         suggest: skipped 1 flow (1 check): denied by a DENY rule of the current rules\n\
         suggest: skipped 1 flow (9 checks): already allowed by the current rules\n\
         suggest: 1 observed deny flow newly allowed (listed in the header comment)\n"
    );
}

#[test]
fn nothing_to_add_beside_current_rules_is_a_valid_empty_rule_file() {
    let current = mk_policy(&[("current.yaml", CURRENT)]);
    let suggestion =
        mk_suggestion_beside(vec![mk_flow("payments/api", "api.stripe.com")], &current);
    let text = &suggestion.rule_file;
    assert!(text.ends_with("nothing to add.\nrules: []\n"), "{text}");
    assert!(mk_compiled(&suggestion).rules().is_empty());
    mk_policy(&[("current.yaml", CURRENT), ("suggested.yaml", text)]);
    // Beside rules that default to ALLOW, dry-run rules would show nothing: the advice says so.
    let observing = mk_policy(&[("current.yaml", "defaultAction: ALLOW\nrules: []\n")]);
    let suggestion =
        mk_suggestion_beside(vec![mk_flow("payments/api", "api.stripe.com")], &observing);
    let text = &suggestion.rule_file;
    assert!(
        text.contains("deploy with defaultAction: ALLOW first"),
        "{text}"
    );
    assert!(text.contains("hosts: ['api.stripe.com']"), "{text}");
}

#[test]
fn documents_without_flows_or_with_bad_trust_domains_are_refused() {
    assert_eq!(
        check_document(&mk_document(vec![])),
        Err(InventoryError::NoFlows)
    );
    let mut document = mk_document(vec![mk_flow("a/b", "x.example.com")]);
    assert_eq!(check_document(&document), Ok(()));
    document.trust_domains = vec!["Not A Domain".to_owned()];
    assert!(matches!(
        check_document(&document),
        Err(InventoryError::Invalid(_))
    ));
}

#[test]
fn the_header_names_files_flags_and_the_review_step_safely() {
    let documents = [(
        "odd\nname.json".to_owned(),
        mk_document(vec![mk_flow("a/b", "x.example.com")]),
    )];
    let options = mk_options(Grouping::Namespace, 3, Some(4));
    let suggestion = suggest(&SuggestInput {
        documents: &documents,
        options: &options,
        current: None,
    });
    let text = &suggestion.rule_file;
    assert!(
        text.starts_with("# Generated by egress-authz suggest"),
        "{text}"
    );
    assert!(text.contains("# From: odd\\nname.json\n"), "{text}");
    assert!(
        text.contains("# Flags: --by namespace --min-count 3 --collapse 4\n"),
        "{text}"
    );
    assert!(
        text.contains("deploy with defaultAction: ALLOW first"),
        "{text}"
    );
    assert!(
        text.contains("# No observed flow qualifies for a rule.\nrules: []\n"),
        "{text}"
    );
    mk_compiled(&suggestion);
}
