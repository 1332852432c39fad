//! `egress-authz test`, run as a CI job would run it: exit codes, `--rules`, relative rule paths,
//! `--json`, `--junit` and `--require-coverage`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs `egress-authz test ARGS…` in `dir`; returns (exit code, stdout, stderr).
fn run_test(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_egress-authz"))
        .current_dir(dir)
        .arg("test")
        .args(args)
        .output()
        .expect("binary runs");
    (
        output.status.code().expect("exited"),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const RULES: &str = "\
rules:
- name: allow-a
  from: {namespaces: [a]}
  to: {hosts: [a.example.com]}
- name: deny-b
  action: DENY
  to: {hosts: [b.example.com]}
";

/// Cases that cover both rules of `RULES` and pass.
const PASSING: &str = "\
rules: rules/egress.yaml
cases:
- name: a reaches a
  principal: spiffe://cluster.local/ns/a/sa/x
  host: a.example.com
  expect: {decision: allow, reason: allowed_by_rule, rule: allow-a}
- name: b is denied
  principal: spiffe://cluster.local/ns/a/sa/x
  sni: b.example.com
  expect: {decision: deny, rule: deny-b}
";

/// A tempdir holding `rules/egress.yaml` (`RULES`) and `tests/pass.yaml` (`PASSING`, rules relative).
fn mk_project() -> TempDir {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "rules/egress.yaml", RULES);
    write(
        dir.path(),
        "tests/pass.yaml",
        &PASSING.replace("rules/egress.yaml", "../rules/egress.yaml"),
    );
    dir
}

#[test]
fn the_shipped_tests_cover_the_shipped_rules() {
    let (code, stdout, stderr) = run_test(
        &repo("."),
        &["--require-coverage", "examples/tests/egress.test.yaml"],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("test result: ok."), "{stdout}");
    assert!(stdout.contains("4 of 4 rule(s) decided a case"), "{stdout}");
    assert!(!stdout.contains("FAILED"), "{stdout}");
}

#[test]
fn passing_cases_exit_0_with_rules_relative_to_the_test_file() {
    let dir = mk_project();
    // Run from elsewhere: `rules:` is relative to the test file, not to the working directory.
    let (code, stdout, stderr) = run_test(
        &dir.path().join("rules"),
        &[dir.path().join("tests/pass.yaml").to_str().unwrap()],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("running 2 case(s) from"), "{stdout}");
    assert!(stdout.contains("test a reaches a ... ok"), "{stdout}");
    assert!(stdout.contains("test b is denied ... ok"), "{stdout}");
    assert!(
        stdout.contains("test result: ok. 2 passed; 0 failed"),
        "{stdout}"
    );
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn a_failed_case_exits_1_with_what_differed_and_the_explanation() {
    let dir = mk_project();
    write(
        dir.path(),
        "tests/fail.yaml",
        "rules: ../rules/egress.yaml\ncases:\n\
         - name: other namespace\n  \
           principal: spiffe://cluster.local/ns/z/sa/x\n  \
           host: a.example.com\n  \
           expect: {decision: allow, rule: allow-a}\n",
    );
    let (code, stdout, stderr) = run_test(dir.path(), &["tests/fail.yaml"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    for wanted in [
        "test other namespace ... FAILED",
        "---- other namespace (tests/fail.yaml:3:3) ----",
        "decision: expected allow, got deny",
        "rule: expected rule allow-a, got no rule",
        // explain's table: the decision and each rule's outcome.
        "reason:   no_matching_rule",
        "allow-a  ALLOW  no: from.namespaces",
        "deny-b   DENY   no: to.hosts",
        "test result: FAILED. 0 passed; 1 failed",
    ] {
        assert!(stdout.contains(wanted), "no {wanted:?} in {stdout}");
    }
}

#[test]
fn bad_test_files_exit_2_with_located_errors_and_run_nothing() {
    let dir = mk_project();
    write(
        dir.path(),
        "tests/typo.yaml",
        "rules: ../rules/egress.yaml\ncases:\n- name: x\n  hots: a.example.com\n  expect: {decision: allow}\n",
    );
    write(
        dir.path(),
        "tests/nowhere.yaml",
        "rules: ../rules/egress.yaml\ncases:\n- name: x\n  expect: {decision: deny}\n",
    );
    write(
        dir.path(),
        "tests/norules.yaml",
        "cases:\n- {name: x, host: a, expect: {decision: deny}}\n",
    );
    write(
        dir.path(),
        "tests/badrule.yaml",
        "rules: ../rules/egress.yaml\ncases:\n- {name: x, host: a, expect: {decision: deny}}\n\
         - {name: y, host: a, expect: {decision: deny, rule: deny-bb}}\n",
    );
    let (code, stdout, stderr) = run_test(
        dir.path(),
        &[
            "tests/pass.yaml",
            "tests/typo.yaml",
            "tests/nowhere.yaml",
            "tests/norules.yaml",
            "tests/badrule.yaml",
            "tests/missing.yaml",
        ],
    );
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stdout.is_empty(), "nothing runs: {stdout}");
    for wanted in [
        "tests/typo.yaml:4:3: cases[0]: unknown field `hots`",
        "tests/nowhere.yaml:3:3: cases[0]: case \"x\": names no destination",
        "tests/norules.yaml:1:1: no `rules:`",
        "tests/badrule.yaml:4:4: case \"y\": expected rule \"deny-bb\" is not a rule",
        "tests/missing.yaml: cannot read",
    ] {
        assert!(stderr.contains(wanted), "no {wanted:?} in {stderr}");
    }
}

#[test]
fn bad_rules_exit_2_located_in_the_rule_file() {
    let dir = mk_project();
    write(
        dir.path(),
        "rules/egress.yaml",
        "rules:\n- name: x\n  to: {hostz: [a]}\n",
    );
    let (code, stdout, stderr) = run_test(dir.path(), &["tests/pass.yaml"]);
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.contains("egress.yaml:3:"), "{stderr}");
    write(
        dir.path(),
        "tests/gone.yaml",
        "rules: nothere.yaml\ncases:\n- {name: x, host: a, expect: {decision: deny}}\n",
    );
    let (code, _, stderr) = run_test(dir.path(), &["tests/gone.yaml"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("tests/gone.yaml: rules: cannot load"),
        "{stderr}"
    );
}

#[test]
fn the_rules_flag_overrides_the_test_files_rules() {
    let dir = mk_project();
    // Under these rules allow-a allows another namespace, so the first case fails; a test file without
    // `rules:` needs the flag.
    write(
        dir.path(),
        "other.yaml",
        &RULES.replace("namespaces: [a]", "namespaces: [other]"),
    );
    write(
        dir.path(),
        "tests/norules.yaml",
        &PASSING.replace("rules: rules/egress.yaml\n", ""),
    );
    let (code, stdout, stderr) =
        run_test(dir.path(), &["--rules", "other.yaml", "tests/pass.yaml"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("test a reaches a ... FAILED"), "{stdout}");
    assert!(stdout.contains("test b is denied ... ok"), "{stdout}");
    let (code, stdout, stderr) = run_test(
        dir.path(),
        &["--rules", "rules/egress.yaml", "tests/norules.yaml"],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
}

#[test]
fn require_coverage_fails_on_a_rule_no_case_decided() {
    let dir = mk_project();
    write(
        dir.path(),
        "tests/half.yaml",
        "rules: ../rules/egress.yaml\ncases:\n- {name: b, host: b.example.com, expect: {decision: deny}}\n",
    );
    let (code, stdout, stderr) = run_test(dir.path(), &["tests/half.yaml"]);
    assert_eq!(
        code, 0,
        "coverage is reported, not required: {stdout}{stderr}"
    );
    assert!(stdout.contains("1 of 2 rule(s) decided a case"), "{stdout}");
    assert!(stdout.contains("uncovered rules:\n  allow-a  "), "{stdout}");
    assert!(stdout.contains("rules/egress.yaml:2"), "{stdout}");
    let (code, stdout, _) = run_test(dir.path(), &["--require-coverage", "tests/half.yaml"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("1 rule(s) decided no case (--require-coverage)"),
        "{stdout}"
    );
    // Two files against one rule set cover it together.
    let (code, stdout, stderr) = run_test(
        dir.path(),
        &["--require-coverage", "tests/half.yaml", "tests/pass.yaml"],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("total: ok. 3 passed; 0 failed (2 files)"),
        "{stdout}"
    );
}

#[test]
fn json_is_one_document_with_cases_coverage_and_totals() {
    let dir = mk_project();
    write(
        dir.path(),
        "tests/mixed.yaml",
        "rules: ../rules/egress.yaml\ncases:\n\
         - {name: ok, host: b.example.com, expect: {decision: deny, reason: denied_by_rule}}\n\
         - {name: bad, host: b.example.com, expect: {decision: allow}}\n",
    );
    let (code, stdout, stderr) = run_test(dir.path(), &["--json", "tests/mixed.yaml"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["result"], "FAILED");
    assert_eq!(json["files"][0]["file"], "tests/mixed.yaml");
    assert_eq!(json["files"][0]["rules"], "tests/../rules/egress.yaml");
    let cases = json["files"][0]["cases"].as_array().unwrap();
    assert_eq!(cases[0]["passed"], true);
    assert_eq!(cases[0]["expected"]["reason"], "denied_by_rule");
    assert_eq!(cases[0]["expected"]["rule"], serde_json::Value::Null);
    assert_eq!(cases[0]["explanation"], serde_json::Value::Null);
    assert_eq!(cases[1]["passed"], false);
    assert_eq!(cases[1]["line"], 4);
    assert_eq!(
        cases[1]["actual"],
        serde_json::json!({"decision": "deny", "reason": "denied_by_rule", "rule": "deny-b", "dry_run": null})
    );
    assert_eq!(
        cases[1]["differences"][0],
        "decision: expected allow, got deny"
    );
    assert_eq!(cases[1]["explanation"]["rules"][1]["matched"], true);
    assert_eq!(json["coverage"]["covered"][0]["rule"], "deny-b");
    assert_eq!(
        json["coverage"]["uncovered"],
        serde_json::json!([{"rule": "allow-a", "file": "tests/../rules/egress.yaml", "line": 2, "rules": "tests/../rules/egress.yaml"}])
    );
    assert_eq!(
        json["totals"],
        serde_json::json!({"files": 1, "cases": 2, "passed": 1, "failed": 1, "rules": 2, "covered": 1, "uncovered": 1})
    );
    // Deterministic: the same run prints the same document.
    assert_eq!(
        run_test(dir.path(), &["--json", "tests/mixed.yaml"]).1,
        stdout
    );
}

#[test]
fn junit_report_is_well_formed_and_escaped() {
    let dir = mk_project();
    write(
        dir.path(),
        "tests/odd.yaml",
        "rules: ../rules/egress.yaml\ncases:\n\
         - {name: \"<b> & 'c' \\\"d\\\" \\u0007\", host: b.example.com, expect: {decision: allow}}\n\
         - {name: plain, host: b.example.com, expect: {decision: deny}}\n",
    );
    let (code, stdout, stderr) = run_test(
        dir.path(),
        &["--junit", "report.xml", "tests/odd.yaml", "tests/pass.yaml"],
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    let xml = std::fs::read_to_string(dir.path().join("report.xml")).unwrap();
    check_well_formed(&xml);
    assert!(
        xml.contains(
            "<testsuites name=\"egress-authz test\" tests=\"4\" failures=\"1\" errors=\"0\">"
        ),
        "{xml}"
    );
    assert!(
        xml.contains("<testsuite name=\"tests/odd.yaml\" tests=\"2\" failures=\"1\""),
        "{xml}"
    );
    assert!(
        xml.contains("<testsuite name=\"tests/pass.yaml\" tests=\"2\" failures=\"0\""),
        "{xml}"
    );
    assert!(
        xml.contains("<testcase name=\"&lt;b&gt; &amp; &apos;c&apos; &quot;d&quot; \u{fffd}\""),
        "{xml}"
    );
    assert!(
        xml.contains("<failure message=\"decision: expected allow, got deny\""),
        "{xml}"
    );
    assert!(
        xml.contains("deny-b   DENY   matched"),
        "the explanation is in the failure: {xml}"
    );
    assert!(
        xml.contains("<testcase name=\"plain\" classname=\"tests/odd.yaml\"/>"),
        "{xml}"
    );
}

/// Fails unless `xml` is well formed, for the subset of XML a JUnit report uses: one prolog, then
/// properly nested elements whose attributes are quoted and whose text and attribute values use only
/// the five predefined entities and numeric references, with no character XML 1.0 forbids.
fn check_well_formed(xml: &str) {
    let body = xml
        .strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")
        .expect("XML declaration");
    for c in body.chars() {
        let allowed = matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..);
        assert!(allowed, "character {c:?} not allowed in XML");
    }
    let check_references = |text: &str| {
        assert!(!text.contains('<'), "raw < in {text:?}");
        for (at, _) in text.match_indices('&') {
            let rest = &text[at + 1..];
            let end = rest.find(';').expect("reference ends with ;");
            let name = &rest[..end];
            let numeric = name
                .strip_prefix('#')
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
            assert!(
                numeric || ["amp", "lt", "gt", "quot", "apos"].contains(&name),
                "bad reference &{name}; in {text:?}"
            );
        }
    };
    let mut open: Vec<String> = Vec::new();
    let mut rest = body;
    let mut roots = 0;
    while let Some(start) = rest.find('<') {
        let (text, tag) = rest.split_at(start);
        if open.is_empty() {
            assert!(text.trim().is_empty(), "text outside the root: {text:?}");
        }
        check_references(text);
        let end = tag.find('>').expect("tag ends");
        let inside = &tag[1..end];
        rest = &tag[end + 1..];
        if let Some(name) = inside.strip_prefix('/') {
            assert_eq!(open.pop().as_deref(), Some(name), "mismatched </{name}>");
            continue;
        }
        let self_closing = inside.ends_with('/');
        let inside = inside.trim_end_matches('/');
        let name_end = inside.find(' ').unwrap_or(inside.len());
        let (name, mut attributes) = inside.split_at(name_end);
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric()),
            "name {name:?}"
        );
        // Attributes: ` key="value"` repeated.
        while !attributes.is_empty() {
            let eq = attributes
                .find("=\"")
                .expect("attribute with a quoted value");
            let key = attributes[..eq].trim();
            assert!(
                !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric()),
                "key {key:?}"
            );
            let value_and_rest = &attributes[eq + 2..];
            let close = value_and_rest.find('"').expect("closing quote");
            check_references(&value_and_rest[..close]);
            attributes = &value_and_rest[close + 1..];
        }
        if open.is_empty() {
            roots += 1;
        }
        if !self_closing {
            open.push(name.to_owned());
        }
    }
    assert!(rest.trim().is_empty(), "text after the root: {rest:?}");
    assert!(open.is_empty(), "unclosed: {open:?}");
    assert_eq!(roots, 1, "one root element");
}
