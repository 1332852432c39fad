use super::*;
use crate::policy::{SourceFile, compile};
use crate::traffic::document::format_time;
use crate::traffic::{FlowEntry, InventoryDocument, VERSION};

fn mk_policy(yaml: &str) -> Policy {
    compile(&[SourceFile {
        name: "rules.yaml".into(),
        text: yaml.into(),
    }])
    .unwrap()
}

fn mk_diff(old: &str, new: &str, recorded: Option<&[RecordedFile]>) -> DiffReport {
    let (old, new) = (mk_policy(old), mk_policy(new));
    diff(&DiffInput {
        old: Side {
            name: "old.yaml",
            policy: &old,
        },
        new: Side {
            name: "new.yaml",
            policy: &new,
        },
        recorded,
    })
}

const STRIPE: &str = "rules:
- name: stripe
  from: {namespaces: [payments]}
  to: {hosts: ['**.stripe.com'], ports: [443]}
";

#[test]
fn structural_lists_added_removed_changed_rules_and_settings() {
    let old = "defaultAction: DENY
rules:
- name: keep
  to: {hosts: [a.example.com, b.example.com]}
  description: before
- name: gone
  to: {hosts: [gone.example.com]}
- name: widen
  from: {namespaces: [x]}
  to: {hosts: [w.example.com]}
";
    let new = "defaultAction: ALLOW
requireSniMatchesHost: false
rules:
- name: keep
  to: {hosts: [B.example.com, a.example.com]}
  description: after
- name: widen
  action: DENY
  dryRun: true
  from: {namespaces: [x, y]}
  to: {hosts: [w.example.com], ports: [443]}
- name: fresh
  to: {hosts: [n.example.com]}
";
    let s = mk_diff(old, new, None).structural;
    let settings: Vec<&str> = s.settings.iter().map(|c| c.field).collect();
    assert_eq!(settings, ["defaultAction", "requireSniMatchesHost"]);
    assert_eq!(
        s.added.iter().map(|r| &r.name).collect::<Vec<_>>(),
        ["fresh"]
    );
    assert_eq!(
        s.removed.iter().map(|r| &r.name).collect::<Vec<_>>(),
        ["gone"]
    );
    let keep = s.changed.iter().find(|c| c.name == "keep").unwrap();
    // Host order and case do not count; the description does, but decides nothing.
    assert_eq!(keep.fields.len(), 1, "{keep:?}");
    assert_eq!(keep.fields[0].field, "description");
    assert!(!keep.affects_decisions);
    let widen = s.changed.iter().find(|c| c.name == "widen").unwrap();
    let fields: Vec<&str> = widen.fields.iter().map(|f| f.field).collect();
    assert_eq!(fields, ["action", "dryRun", "from.namespaces", "to.ports"]);
    assert!(widen.affects_decisions);
    assert_eq!(widen.fields[2].new, serde_json::json!(["x", "y"]));
    assert_eq!(s.rules_affecting_decisions(), ["fresh", "gone", "widen"]);
}

#[test]
fn a_text_only_change_changes_no_decision() {
    let old = "rules:\n- name: a\n  to: {hosts: [a.example.com]}\n  owner: me\n";
    let new = "rules:\n- name: a\n  to: {hosts: [a.example.com]}\n  owner: you\n";
    let report = mk_diff(old, new, None);
    assert_eq!(report.summary.structural_changes, 1);
    assert_eq!(report.symbolic.witnesses, 0);
    assert_eq!(report.summary.exit_code, EXIT_UNCHANGED);
}

fn mk_entry(namespace: &str, protocol: &str, host: &str, reason: &str, count: u64) -> FlowEntry {
    let decision = if reason.starts_with("allowed") || reason == "default_allow" {
        "allow"
    } else {
        "deny"
    };
    FlowEntry {
        namespace: namespace.to_owned(),
        service_account: if namespace == "<none>" {
            "<none>"
        } else {
            "default"
        }
        .to_owned(),
        protocol: protocol.to_owned(),
        host: host.to_owned(),
        port: Some(443),
        decision: decision.to_owned(),
        reason: reason.to_owned(),
        rule: None,
        count,
        first_seen: format_time(1_800_000_000),
        last_seen: format_time(1_800_000_100),
    }
}

fn mk_inventory(entries: Vec<FlowEntry>) -> Vec<u8> {
    InventoryDocument {
        format: crate::traffic::FORMAT.to_owned(),
        version: VERSION,
        generated_at: format_time(1_800_000_200),
        trust_domains: vec!["cluster.local".to_owned()],
        max_entries: 100,
        overflow: 0,
        entries,
    }
    .to_json()
    .into_bytes()
}

fn mk_log_line(
    principal: &str,
    protocol: &str,
    host: &str,
    method: &str,
    path: &str,
    reason: &str,
) -> String {
    let http = if protocol == "http" {
        format!(r#","method":"{method}","path":"{path}""#)
    } else {
        String::new()
    };
    format!(
        r#"{{"timestamp":"t","level":"INFO","fields":{{"message":"Decision","decision":"deny","reason":"{reason}","protocol":"{protocol}","principal":"{principal}","host":"{host}","port":443{http}}},"target":"egress_authz::decision"}}"#
    )
}

#[test]
fn inventories_replay_with_their_trust_domain_and_skip_refused_checks() {
    let bytes = mk_inventory(vec![
        mk_entry("payments", "http", "api.stripe.com", "allowed_by_rule", 5),
        mk_entry("payments", "tcp", "files.stripe.com", "allowed_by_rule", 2),
        mk_entry("<none>", "http", "api.stripe.com", "invalid_principal", 1),
        mk_entry("<none>", "unknown", "<invalid>", "invalid_request", 7),
    ]);
    let file = read_recorded("traffic.json", &bytes, "unused.example").unwrap();
    assert_eq!(file.kind, RecordedKind::Inventory);
    assert_eq!(file.not_replayable, 1);
    assert_eq!(file.flows.len(), 3);
    let new = "rules:
- name: stripe-api
  from: {namespaces: [payments]}
  to: {hosts: [api.stripe.com], ports: [443]}
- name: anyone
  to: {hosts: [files.stripe.com], methods: [GET]}
";
    let report = mk_diff(STRIPE, new, Some(&[file]));
    let recorded = report.recorded.unwrap();
    // files.stripe.com over TCP: an ALLOW naming methods never matches TCP.
    assert_eq!(recorded.newly_denied.flows, 1);
    let broken = &recorded.newly_denied.entries[0];
    assert_eq!(broken.host, "files.stripe.com");
    assert_eq!(
        broken.caller,
        "spiffe://cluster.local/ns/payments/sa/default"
    );
    assert_eq!(broken.checks, 2);
    assert_eq!(broken.new.reason, "no_matching_rule");
    // api.stripe.com is still allowed, by another rule; the caller without identity is denied both times.
    assert_eq!(recorded.rule_changed.flows, 1);
    assert_eq!(
        recorded.rule_changed.entries[0].new.rule.as_deref(),
        Some("stripe-api")
    );
    assert_eq!(recorded.newly_allowed.flows, 0);
    assert_eq!(report.summary.exit_code, EXIT_NEWLY_DENIED);
}

#[test]
fn decision_logs_replay_principal_method_and_path() {
    let log = [
        r#"{"timestamp":"t","level":"INFO","fields":{"message":"Connection closed"},"target":"h2::proto::connection"}"#.to_owned(),
        mk_log_line("spiffe://cluster.local/ns/payments/sa/api", "http", "api.stripe.com", "GET", "/admin/users", "allowed_by_rule"),
        mk_log_line("spiffe://cluster.local/ns/payments/sa/api", "http", "api.stripe.com", "GET", "/v1/charges", "allowed_by_rule"),
        mk_log_line("spiffe://cluster.local/ns/team-a/sa/x", "tcp", "files.stripe.com", "", "", "no_matching_rule"),
        mk_log_line("", "http", "", "", "", "overloaded"),
        String::new(),
    ]
    .join("\n");
    let file = read_recorded("decisions.log", log.as_bytes(), "cluster.local").unwrap();
    assert_eq!(file.kind, RecordedKind::DecisionLog);
    assert_eq!(
        (file.skipped_events, file.not_replayable, file.flows.len()),
        (1, 1, 3)
    );
    let new = "rules:
- name: no-admin
  action: DENY
  to: {hosts: [api.stripe.com], paths: ['/admin*']}
- name: stripe
  from: {namespaces: [payments, 'team-*']}
  to: {hosts: ['**.stripe.com'], ports: [443]}
";
    let recorded = mk_diff(STRIPE, new, Some(&[file])).recorded.unwrap();
    let denied: Vec<_> = recorded
        .newly_denied
        .entries
        .iter()
        .map(|f| f.path.as_deref())
        .collect();
    assert_eq!(denied, [Some("/admin/users")]);
    assert_eq!(
        recorded.newly_allowed.callers,
        ["spiffe://cluster.local/ns/team-a/sa/x"]
    );
    assert_eq!(recorded.rule_changed.flows, 0, "/v1/charges: same rule");
}

#[test]
fn unreadable_recorded_lines_are_located() {
    let log = format!(
        "{}\nnot json at all\n",
        mk_log_line("", "tcp", "a.example.com", "", "", "no_matching_rule")
    );
    let error = read_recorded("d.log", log.as_bytes(), "cluster.local").unwrap_err();
    assert!(error.to_string().starts_with("d.log:2: "), "{error}");
    let missing_host = r#"{"fields":{"message":"Decision","reason":"no_matching_rule","protocol":"tcp"},"target":"egress_authz::decision"}"#;
    let error = read_recorded("d.log", missing_host.as_bytes(), "cluster.local").unwrap_err();
    assert_eq!(
        error.to_string(),
        "d.log:1: decision event without field \"host\""
    );
    let inventory = mk_inventory(vec![mk_entry(
        "a",
        "http",
        "a.example.com",
        "no_matching_rule",
        1,
    )]);
    let error =
        read_recorded("t.json", &inventory[..inventory.len() / 2], "cluster.local").unwrap_err();
    assert!(
        matches!(&error, RecordedError::Inventory { file, source: crate::traffic::InventoryError::Truncated(_) } if file == "t.json"),
        "{error:?}"
    );
}

fn regions(report: &DiffReport, allowed: bool) -> Vec<(String, String, String, String)> {
    let regions = if allowed {
        &report.symbolic.newly_allowed
    } else {
        &report.symbolic.newly_denied
    };
    regions
        .iter()
        .map(|r| {
            (
                r.cause.clone(),
                r.callers.clone(),
                r.destination.clone(),
                r.requests.clone(),
            )
        })
        .collect()
}

#[test]
fn an_added_rule_is_described_by_its_patterns() {
    let report = mk_diff("rules: []\n", STRIPE, None);
    assert_eq!(
        regions(&report, true),
        [(
            "rule stripe (added)".to_owned(),
            "callers in namespace payments".to_owned(),
            "**.stripe.com:443".to_owned(),
            "any request".to_owned()
        )]
    );
    let region = &report.symbolic.newly_allowed[0];
    assert!(!region.is_partial(), "{region:?}");
    assert!(
        region
            .examples
            .iter()
            .all(|e| e.contains("/ns/payments/") && e.contains(".stripe.com:443")),
        "{region:?}"
    );
    assert!(regions(&report, false).is_empty());
    assert_eq!(report.summary.exit_code, EXIT_NEWLY_ALLOWED);
}

#[test]
fn a_removed_rule_is_newly_denied() {
    let report = mk_diff(STRIPE, "rules: []\n", None);
    assert_eq!(regions(&report, false).len(), 1);
    assert_eq!(
        report.symbolic.newly_denied[0].cause,
        "rule stripe (removed)"
    );
    assert_eq!(report.summary.exit_code, EXIT_NEWLY_DENIED);
}

#[test]
fn a_changed_rule_reports_only_what_changed() {
    let new = STRIPE
        .replace("[payments]", "[payments, 'team-*']")
        .replace("[443]", "[443, 8443]");
    let report = mk_diff(STRIPE, &new, None);
    let allowed = regions(&report, true);
    assert!(
        allowed.iter().all(|r| r.0 == "rule stripe (changed)"),
        "{allowed:?}"
    );
    assert!(allowed.contains(&(
        "rule stripe (changed)".to_owned(),
        "callers in namespace team-*".to_owned(),
        "**.stripe.com:443".to_owned(),
        "any request".to_owned()
    )));
    assert!(
        allowed
            .iter()
            .any(|r| r.1 == "callers in namespace payments" && r.2 == "**.stripe.com:8443"),
        "{allowed:?}"
    );
    assert!(
        !allowed
            .iter()
            .any(|r| r.1 == "callers in namespace payments" && r.2.ends_with(":443")),
        "{allowed:?}"
    );
    assert!(regions(&report, false).is_empty());
}

#[test]
fn a_deny_added_in_front_of_an_allow_takes_precedence() {
    let new = format!(
        "{STRIPE}- name: no-admin
  action: DENY
  from: {{namespaces: [payments]}}
  to: {{hosts: [api.stripe.com], paths: ['/admin*']}}
"
    );
    let report = mk_diff(STRIPE, &new, None);
    assert!(regions(&report, true).is_empty());
    let denied = regions(&report, false);
    let http = denied
        .iter()
        .find(|r| r.3 == "HTTP paths /admin*")
        .unwrap_or_else(|| panic!("{denied:?}"));
    assert_eq!(http.0, "rule no-admin (added)");
    assert_eq!(http.1, "callers in namespace payments");
    assert_eq!(http.2, "api.stripe.com");
    // A DENY cannot check paths on TCP, so it denies those connections whole.
    assert!(denied.iter().any(|r| r.3.starts_with("TCP")), "{denied:?}");
    // Paths outside /admin* and other stripe hosts are untouched.
    for region in &report.symbolic.newly_denied {
        assert!(
            region.examples.iter().all(|e| e.contains("api.stripe.com")),
            "{region:?}"
        );
        assert!(
            region
                .examples
                .iter()
                .all(|e| !e.contains("http") || e.contains("/admin")),
            "{region:?}"
        );
    }
}

#[test]
fn a_default_change_is_due_to_the_setting() {
    let old = "defaultAction: DENY\nrules:\n- name: block\n  action: DENY\n  to: {hosts: [evil.example.com]}\n";
    let new = old.replace("defaultAction: DENY", "defaultAction: ALLOW");
    let report = mk_diff(old, &new, None);
    assert!(regions(&report, false).is_empty());
    let allowed = &report.symbolic.newly_allowed;
    assert!(!allowed.is_empty());
    assert!(
        allowed.iter().all(|r| r.cause == "setting defaultAction"),
        "{allowed:?}"
    );
    // The DENY rule still holds.
    assert!(
        allowed.iter().all(|r| r.destination != "evil.example.com"),
        "{allowed:?}"
    );
    assert!(
        allowed.iter().any(|r| r.destination == "any other host"),
        "{allowed:?}"
    );
    assert!(
        allowed
            .iter()
            .any(|r| r.callers == "callers without identity"),
        "{allowed:?}"
    );
    assert_eq!(report.summary.exit_code, EXIT_NEWLY_ALLOWED);
}

#[test]
fn text_and_markdown_name_the_changes() {
    let report = mk_diff("rules: []\n", STRIPE, None);
    let text = render::text(&report);
    assert!(
        text.contains("callers in namespace payments may now reach **.stripe.com:443"),
        "{text}"
    );
    assert!(text.contains("added rule stripe (ALLOW)"), "{text}");
    let markdown = render::markdown(&report);
    assert!(markdown.contains("#### Widenings"), "{markdown}");
    assert!(
        markdown.contains("<details><summary>Structural changes (1)</summary>"),
        "{markdown}"
    );
    assert!(!markdown.contains("#### Breaks"), "{markdown}");
}
