//! `egress-authz diff`, run as a user would run it: exit codes, output formats and bad input.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const OLD: &str = "defaultAction: DENY
rules:
- name: stripe
  from: {namespaces: [payments]}
  to: {hosts: ['**.stripe.com'], ports: [443]}
";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_egress-authz"))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `diff --old <OLD> --new <new> extra...` in a fresh directory: (exit code, stdout, stderr).
fn run_diff(new: &str, extra: &[&str], files: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let old = write(dir.path(), "old.yaml", OLD);
    let new = write(dir.path(), "new.yaml", new);
    for (name, text) in files {
        write(dir.path(), name, text);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = bin()
        .current_dir(dir.path())
        .arg("diff")
        .arg("--old")
        .arg(&old)
        .arg("--new")
        .arg(&new)
        .args(extra)
        .output()
        .unwrap();
    (
        status.code().unwrap(),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

fn decision_line(principal: &str, host: &str, path: &str) -> String {
    format!(
        r#"{{"timestamp":"2026-01-31T12:00:00Z","level":"INFO","fields":{{"message":"Decision","decision":"allow","reason":"allowed_by_rule","rule":"stripe","protocol":"http","principal":"{principal}","namespace":"payments","service_account":"api","host":"{host}","port":443,"method":"GET","path":"{path}","latency_us":3}},"target":"egress_authz::decision"}}"#
    )
}

#[test]
fn a_text_only_change_exits_0() {
    let new = format!("{OLD}  description: who pays\n");
    let (code, stdout, stderr) = run_diff(&new, &[], &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("changed rule stripe (text only): description: (unset) -> who pays"),
        "{stdout}"
    );
    assert!(stdout.contains("no decision changes"), "{stdout}");
}

#[test]
fn a_widening_exits_3() {
    let new = OLD.replace("[payments]", "[payments, billing]");
    let (code, stdout, stderr) = run_diff(&new, &[], &[]);
    assert_eq!(code, 3, "{stdout}{stderr}");
    assert!(
        stdout.contains("callers in namespace billing may now reach **.stripe.com:443"),
        "{stdout}"
    );
}

#[test]
fn a_break_exits_4_even_beside_a_widening() {
    let new = OLD.replace("[payments]", "[billing]");
    let (code, stdout, stderr) = run_diff(&new, &[], &[]);
    assert_eq!(code, 4, "{stdout}{stderr}");
    assert!(stdout.contains("may no longer reach"), "{stdout}");
    assert!(stdout.contains("may now reach"), "{stdout}");
}

#[test]
fn json_carries_the_replayed_flows_and_the_regions() {
    let new = format!(
        "{OLD}- name: no-admin
  action: DENY
  to: {{hosts: [api.stripe.com], paths: ['/admin*']}}
"
    );
    let caller = "spiffe://cluster.local/ns/payments/sa/api";
    let log = [
        decision_line(caller, "api.stripe.com", "/admin/keys"),
        decision_line(caller, "api.stripe.com", "/v1/charges"),
        r#"{"level":"INFO","fields":{"message":"Suppressed deny decision logs","suppressed":3},"target":"egress_authz::decision"}"#.to_owned(),
    ]
    .join("\n");
    let (code, stdout, stderr) = run_diff(
        &new,
        &["--json", "--against", "decisions.log"],
        &[("decisions.log", &log)],
    );
    assert_eq!(code, 4, "{stdout}{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["summary"]["exit_code"], 4);
    assert_eq!(json["summary"]["newly_denied_flows"], 1);
    let recorded = &json["recorded"];
    assert_eq!(recorded["sources"][0]["kind"], "decision-log");
    assert_eq!(recorded["sources"][0]["skipped_events"], 1);
    let broken = &recorded["newly_denied"]["entries"][0];
    assert_eq!(broken["path"], "/admin/keys");
    assert_eq!(broken["old"]["rule"], "stripe");
    assert_eq!(broken["new"]["rule"], "no-admin");
    assert_eq!(broken["new"]["decision"], "deny");
    assert_eq!(json["structural"]["added"][0]["name"], "no-admin");
    let regions = json["symbolic"]["newly_denied"].as_array().unwrap();
    assert!(regions.iter().any(|r| r["cause"] == "rule no-admin (added)" && r["requests"] == "HTTP paths /admin*"), "{regions:?}");
}

#[test]
fn markdown_is_a_pull_request_comment() {
    let new = OLD.replace("[payments]", "[billing]");
    let (code, stdout, _) = run_diff(&new, &["--markdown"], &[]);
    assert_eq!(code, 4);
    assert!(stdout.starts_with("### egress-authz diff"), "{stdout}");
    assert!(
        stdout.contains("#### Breaks (allowed before, denied after)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| Callers | Destination | Requests | Cause | Witnesses |"),
        "{stdout}"
    );
    assert!(
        stdout.contains("<details><summary>Structural changes (1)</summary>"),
        "{stdout}"
    );
    assert!(
        stdout.contains("from.namespaces: [payments] -> [billing]"),
        "{stdout}"
    );
}

#[test]
fn a_missing_rule_file_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let old = write(dir.path(), "old.yaml", OLD);
    let output = bin()
        .args(["diff", "--old"])
        .arg(&old)
        .arg("--new")
        .arg(dir.path().join("absent.yaml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("absent.yaml"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn an_invalid_rule_file_is_located() {
    let (code, stdout, stderr) = run_diff("rules:\n- name: x\n  to: {hostz: [a.com]}\n", &[], &[]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stderr.contains("new.yaml:3:"), "{stderr}");
}

#[test]
fn a_decision_log_line_that_is_not_json_is_located() {
    let log = format!(
        "{}\nINFO egress_authz: plain text line\n",
        decision_line("", "a.example.com", "/")
    );
    let (code, stdout, stderr) = run_diff(
        OLD,
        &["--against", "decisions.log"],
        &[("decisions.log", &log)],
    );
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stderr.contains("decisions.log:2: not a JSON log line"),
        "{stderr}"
    );
    assert!(stdout.is_empty());
}

#[test]
fn a_truncated_inventory_is_named() {
    let inventory = r#"{
  "format": "egress-authz-traffic",
  "version": 1,
  "generated_at": "2026-01-31T12:00:00Z",
  "trust_domains": ["cluster.local"],
  "entries": [
    {"namespace": "payments""#;
    let (code, stdout, stderr) = run_diff(
        OLD,
        &["--against", "traffic.json", "missing.json"],
        &[("traffic.json", inventory)],
    );
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stderr.contains("traffic.json: the traffic inventory is cut off"),
        "{stderr}"
    );
    assert!(stderr.contains("missing.json: cannot read"), "{stderr}");
}

#[test]
fn an_inventory_replays_its_flows() {
    let inventory = r#"{
  "format": "egress-authz-traffic",
  "version": 1,
  "generated_at": "2026-01-31T12:00:00Z",
  "trust_domains": ["cluster.local"],
  "max_entries": 100,
  "overflow": 0,
  "entries": [
    {"namespace": "payments", "service_account": "api", "protocol": "tcp", "host": "files.stripe.com", "port": 443,
     "decision": "allow", "reason": "allowed_by_rule", "rule": "stripe", "count": 12,
     "first_seen": "2026-01-31T11:00:00Z", "last_seen": "2026-01-31T12:00:00Z"}
  ]
}"#;
    let new = OLD.replace("'**.stripe.com'", "api.stripe.com");
    let (code, stdout, stderr) = run_diff(
        &new,
        &["--against", "traffic.json"],
        &[("traffic.json", inventory)],
    );
    assert_eq!(code, 4, "{stdout}{stderr}");
    assert!(
        stdout.contains("allow -> deny (breaks someone): 1 flow(s), 12 check(s), 1 caller(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("spiffe://cluster.local/ns/payments/sa/api tcp files.stripe.com:443 x12"),
        "{stdout}"
    );
}
