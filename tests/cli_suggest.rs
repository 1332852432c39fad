//! `egress-authz suggest`, run as a user would run it: inventories written to files, the rule file read
//! from stdout and checked with `egress-authz validate`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use egress_authz::traffic::document::format_time;
use egress_authz::traffic::{FORMAT, FlowEntry, InventoryDocument, NO_CALLER, VERSION};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_egress-authz"))
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("binary runs");
    (
        status.code().expect("exited"),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

/// `egress-authz suggest --from FILES... ARGS...`.
fn suggest(files: &[&Path], args: &[&str]) -> Command {
    let mut cmd = bin();
    cmd.arg("suggest").arg("--from").args(files).args(args);
    cmd
}

const T0: u64 = 1_800_000_000;

fn mk_entry(caller: &str, protocol: &str, host: &str, port: Option<u16>, count: u64) -> FlowEntry {
    let (namespace, service_account) = caller.split_once('/').unwrap_or((caller, caller));
    FlowEntry {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        protocol: protocol.to_owned(),
        host: host.to_owned(),
        port,
        decision: "allow".to_owned(),
        reason: "default_allow".to_owned(),
        rule: None,
        count,
        first_seen: format_time(T0),
        last_seen: format_time(T0 + count),
    }
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

/// Two inventories, as two replicas would save them.
fn write_inventories(dir: &Path) -> (PathBuf, PathBuf) {
    let one = mk_document(vec![
        mk_entry("payments/api", "http", "api.stripe.com", Some(443), 5),
        mk_entry("payments/api", "tcp", "a.files.example.com", Some(443), 2),
        mk_entry("payments/api", "tcp", "b.files.example.com", Some(443), 1),
        mk_entry(NO_CALLER, "http", "anon.example.com", Some(443), 3),
    ]);
    let two = mk_document(vec![
        mk_entry("payments/api", "http", "api.stripe.com", Some(443), 2),
        mk_entry("web/Front_End", "tcp", "db.example.net", Some(5432), 1),
        mk_entry("web/Front_End", "tcp", "raw.example.org", None, 1),
    ]);
    let (a, b) = (dir.join("replica-a.json"), dir.join("replica-b.json"));
    std::fs::write(&a, one.to_json()).unwrap();
    std::fs::write(&b, two.to_json()).unwrap();
    (a, b)
}

#[test]
fn suggestion_validates_and_is_byte_identical_whatever_the_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_inventories(dir.path());
    let (code, first, stderr) = run(&mut suggest(&[&a, &b], &["--collapse", "2"]));
    assert_eq!(code, 0, "{stderr}");
    let (code, second, _) = run(&mut suggest(&[&b, &a], &["--collapse", "2"]));
    assert_eq!(code, 0);
    assert_eq!(first, second, "file order changed the output");
    assert!(
        first.contains("hosts: ['*.files.example.com', 'api.stripe.com']"),
        "{first}"
    );
    assert!(!first.contains("anon.example.com"), "{first}");
    assert!(
        stderr.contains("suggest: read 6 flows (15 checks) from 2 files\n")
            && stderr.contains("suggest: skipped 1 flow (3 checks): no trusted identity\n"),
        "{stderr}"
    );

    let suggested = dir.path().join("suggested.yaml");
    std::fs::write(&suggested, &first).unwrap();
    let (code, stdout, stderr) = run(bin().arg("validate").arg(&suggested));
    assert_eq!(code, 0, "{stdout}{stderr}\n{first}");
    assert!(stdout.contains("ok, 3 rule(s)"), "{stdout}\n{first}");

    // The suggestion allows what was observed, and not the same host on another port.
    let explain = |principal: &str, sni: &str, port: &str| {
        let (_, stdout, _) = run(bin().args(["explain", "--rules"]).arg(&suggested).args([
            "--principal",
            principal,
            "--sni",
            sni,
            "--port",
            port,
        ]));
        stdout
    };
    let front = "spiffe://cluster.local/ns/web/sa/Front_End";
    assert!(explain(front, "db.example.net", "5432").starts_with("decision: allow"));
    assert!(explain(front, "db.example.net", "443").starts_with("decision: deny"));
}

#[test]
fn beside_current_rules_the_suggestion_sets_nothing_and_validates_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_inventories(dir.path());
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(
        rules.join("current.yaml"),
        "defaultAction: DENY\nrules:\n- name: allow-payments.api\n  from: {serviceAccounts: [payments/api]}\n  to: {hosts: [api.stripe.com]}\n",
    )
    .unwrap();
    let mut cmd = suggest(&[&a, &b], &[]);
    cmd.arg("--rules").arg(&rules);
    let (code, stdout, stderr) = run(&mut cmd);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains("defaultAction"), "{stdout}");
    assert!(!stdout.contains("api.stripe.com"), "{stdout}");
    assert!(
        stderr.contains("skipped 1 flow (7 checks): already allowed by the current rules"),
        "{stderr}"
    );
    std::fs::write(rules.join("suggested.yaml"), &stdout).unwrap();
    let (code, out, err) = run(bin().arg("validate").arg(&rules));
    assert_eq!(code, 0, "{out}{err}\n{stdout}");

    // Invalid current rules: located as `validate` prints them, nothing on stdout.
    std::fs::write(rules.join("broken.yaml"), "rules:\n- name: Bad Name\n").unwrap();
    let mut cmd = suggest(&[&a], &[]);
    cmd.arg("--rules").arg(&rules);
    let (code, stdout, stderr) = run(&mut cmd);
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    assert!(stderr.contains("broken.yaml:2:"), "{stderr}");
}

#[test]
fn every_bad_input_is_named_and_nothing_is_printed() {
    let dir = tempfile::tempdir().unwrap();
    let (good, _) = write_inventories(dir.path());
    let text = std::fs::read_to_string(&good).unwrap();
    let cases: [(&str, String, &str); 6] = [
        ("empty.json", String::new(), "the file is empty"),
        (
            "truncated.json",
            text[..text.len() / 2].to_owned(),
            "cut off",
        ),
        (
            "foreign.json",
            r#"{"kind": "Pod"}"#.to_owned(),
            "not an egress-authz traffic inventory",
        ),
        (
            "future.json",
            text.replace("\"version\": 1", "\"version\": 9"),
            "version 9 is not supported",
        ),
        (
            "no-flows.json",
            mk_document(vec![]).to_json(),
            "records no flow",
        ),
        ("not-json.json", "rules: []\n".to_owned(), "not JSON"),
    ];
    for (name, contents, message) in cases {
        let bad = dir.path().join(name);
        std::fs::write(&bad, contents).unwrap();
        // The good file first: nothing of it may be printed either.
        let (code, stdout, stderr) = run(&mut suggest(&[&good, &bad], &[]));
        assert_eq!(code, 1, "{name}: {stderr}");
        assert_eq!(stdout, "", "{name}");
        let expected = format!("{}: ", bad.display());
        assert!(
            stderr.starts_with(&expected) && stderr.contains(message),
            "{name}: {stderr}"
        );
    }
    let missing = dir.path().join("missing.json");
    let (code, stdout, stderr) = run(&mut suggest(&[&missing, &good], &[]));
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert!(
        stderr.starts_with(&format!("{}: cannot read", missing.display())),
        "{stderr}"
    );
}

#[test]
fn collapse_below_two_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let (good, _) = write_inventories(dir.path());
    let (code, stdout, stderr) = run(&mut suggest(&[&good], &["--collapse", "1"]));
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(stderr.contains("--collapse"), "{stderr}");
}
