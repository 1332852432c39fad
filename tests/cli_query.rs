//! `egress-authz query who-can | what-can`, run as a user would run it, on the shipped rule files and
//! on files written here.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs `egress-authz query <args>`: exit code, stdout, stderr.
fn query(args: &[&str], rules: &Path) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_egress-authz"))
        .arg("query")
        .args(args)
        .arg("--rules")
        .arg(rules)
        .output()
        .expect("binary runs");
    (
        output.status.code().expect("exited"),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// Like `query`, with `--json`; the exit code must be 0.
fn query_json(args: &[&str], rules: &Path) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let (code, stdout, stderr) = query(&args, rules);
    assert_eq!(code, 0, "{stdout}{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

fn rule_names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["rule"].as_str().unwrap())
        .collect()
}

#[test]
fn who_can_reach_developers_google_com_under_the_shipped_rules() {
    let rules = repo("deploy/rules");
    let (code, stdout, stderr) = query(
        &[
            "who-can",
            "--host",
            "developers.google.com",
            "--port",
            "443",
        ],
        &rules,
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        "developers.google.com:443 (http) — default DENY\n\
         allowed:\n  \
           namespace default (rule default-ns-to-google)\n  \
           service account otherns/sleep (rule otherns-sleep-to-both)\n  \
           service account otherns/sleep-google (rule otherns-sleep-google-to-google)\n"
    );
    let json = query_json(&["who-can", "--host", "developers.google.com"], &rules);
    assert_eq!(
        rule_names(&json["allowed"]),
        [
            "default-ns-to-google",
            "otherns-sleep-to-both",
            "otherns-sleep-google-to-google"
        ]
    );
    assert_eq!(json["port"], Value::Null);
    assert_eq!(json["default"], "deny");
    assert_eq!(json["reach"], "some");
    assert_eq!(json["allowed"][0]["caller"]["namespaces"][0], "default");
    assert_eq!(json["allowed"][0]["caller"]["without_identity"], false);
}

#[test]
fn what_can_default_sleep_reach_under_the_shipped_rules() {
    let rules = repo("deploy/rules");
    let principal = "spiffe://cluster.local/ns/default/sa/sleep";
    let (code, stdout, stderr) = query(&["what-can", "--principal", principal], &rules);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        "spiffe://cluster.local/ns/default/sa/sleep (http) — default DENY\n\
         caller: namespace default, service account sleep (trust domain cluster.local)\n\
         allowed:\n  \
           developers.google.com (rule default-ns-to-google)\n"
    );
    let json = query_json(&["what-can", "--principal", principal, "--tcp"], &rules);
    assert_eq!(rule_names(&json["allowed"]), ["default-ns-to-google"]);
    assert_eq!(json["protocol"], "tcp");
    assert_eq!(json["caller"]["namespace"], "default");
    assert_eq!(
        json["allowed"][0]["destination"]["hosts"][0],
        "developers.google.com"
    );
}

#[test]
fn the_walkthrough_stages_answer_as_they_are_written() {
    let json = query_json(
        &["who-can", "--host", "developers.google.com"],
        &repo("examples/rules/namespace-level.yaml"),
    );
    assert_eq!(json["default"], "allow");
    assert_eq!(rule_names(&json["except"]), ["deny-otherns-to-google"]);

    let (_, stdout, _) = query(
        &["who-can", "--host", "developer.yahoo.com"],
        &repo("examples/rules/allow-nothing.yaml"),
    );
    assert!(stdout.contains("allowed:\n  nobody\n"), "{stdout}");

    let json = query_json(
        &[
            "what-can",
            "--principal",
            "spiffe://cluster.local/ns/otherns/sa/sleep",
        ],
        &repo("examples/rules/service-account-level.yaml"),
    );
    assert_eq!(rule_names(&json["allowed"]), ["otherns-sleep-to-both"]);
    let hosts = &json["allowed"][0]["destination"]["hosts"];
    assert_eq!(hosts[0], "developers.google.com");
    assert_eq!(hosts[1], "developer.yahoo.com");
}

#[test]
fn a_bad_principal_or_host_is_an_answer_not_an_error() {
    let rules = repo("deploy/rules");
    let json = query_json(&["what-can", "--principal", "not-a-spiffe-id"], &rules);
    assert_eq!(json["caller"]["trusted"], false);
    assert_eq!(json["reach"], "nothing");
    assert!(
        json["caller"]["identity_problem"]
            .as_str()
            .unwrap()
            .contains("SPIFFE")
    );

    let json = query_json(&["who-can", "--host", "not a host"], &rules);
    assert_eq!(json["refused"], "invalid_host");
    assert_eq!(json["reach"], "nothing");
}

#[test]
fn bad_rules_exit_1_with_located_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "bad-yaml.yaml",
            "rules:\n- name: a\n  to: [\n",
            "bad-yaml.yaml:",
        ),
        (
            "unknown-field.yaml",
            "rules:\n- name: a\n  to:\n    host: [a.com]\n",
            "unknown-field.yaml:4:",
        ),
    ];
    for (name, text, located) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        for args in [
            &["who-can", "--host", "a.com"][..],
            &["what-can", "--principal", ""],
        ] {
            let (code, stdout, stderr) = query(args, &path);
            assert_eq!(code, 1, "{name} {args:?}: {stdout}{stderr}");
            assert!(stdout.is_empty(), "{name}: {stdout}");
            assert!(
                stderr.contains(located),
                "{name}: no {located:?} in {stderr}"
            );
        }
    }
    let missing = dir.path().join("missing.yaml");
    let (code, _, stderr) = query(&["who-can", "--host", "a.com"], &missing);
    assert_eq!(code, 1);
    assert!(stderr.contains("missing.yaml"), "{stderr}");
}
