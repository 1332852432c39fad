use super::junit::{attribute, text};
use super::*;
use crate::policy::{Reason, SourceFile, Verdict, compile};

const RULES: &str = "\
rules:
- name: allow-a
  from: {namespaces: [a]}
  to: {hosts: [a.example.com]}
- name: deny-b
  action: DENY
  to: {hosts: [b.example.com]}
- name: dry-c
  dryRun: true
  to: {hosts: [c.example.com]}
";

fn mk_policy(text: &str) -> Policy {
    compile(&[SourceFile {
        name: "rules.yaml".into(),
        text: text.into(),
    }])
    .unwrap()
}

fn mk_file(text: &str) -> TestFile {
    TestFile::parse("t.yaml", text).unwrap()
}

/// The error for `text`, as (line, column, message).
fn mk_error(text: &str) -> (usize, usize, String) {
    let error = TestFile::parse("t.yaml", text).unwrap_err();
    assert_eq!(error.location.file, "t.yaml");
    (error.location.line, error.location.column, error.message)
}

const PRINCIPAL_A: &str = "spiffe://cluster.local/ns/a/sa/x";

// === parsing ===

#[test]
fn a_test_file_is_read_with_defaults_and_case_locations() {
    let file = mk_file(
        "rules: ../rules\n\
         cases:\n\
         - name: first\n  \
           principal: spiffe://cluster.local/ns/a/sa/x\n  \
           host: a.example.com\n  \
           port: 8443\n  \
           method: POST\n  \
           path: /x\n  \
           expect: {decision: allow, reason: allowed_by_rule, rule: allow-a}\n\
         - {name: 'second', sni: b.example.com, expect: {decision: deny, rule: ''}}\n",
    );
    assert_eq!(file.rules.as_deref(), Some("../rules"));
    let [first, second] = file.cases.as_slice() else {
        panic!("two cases: {file:?}");
    };
    assert_eq!(first.name, "first");
    assert_eq!(first.port, Some(8443));
    assert_eq!(first.method.as_deref(), Some("POST"));
    assert_eq!(
        first.expect,
        Expectation {
            decision: Verdict::Allow,
            reason: Some(Reason::AllowedByRule),
            rule: Some("allow-a".into()),
        }
    );
    assert_eq!((first.location.line, first.location.column), (3, 3));
    assert_eq!(second.principal, "", "absent principal: no identity");
    assert!(!second.tcp);
    assert_eq!(second.expect.reason, None);
    assert_eq!(second.expect.rule.as_deref(), Some(""));
    assert_eq!((second.location.line, second.location.column), (10, 4));
}

#[test]
fn unknown_fields_are_located_at_the_key() {
    let (line, column, message) = mk_error(
        "rules: r.yaml\ncases:\n- name: x\n  host: a\n  hots: b\n  expect: {decision: allow}\n",
    );
    assert_eq!((line, column), (5, 3));
    assert!(message.contains("unknown field `hots`"), "{message}");
    let (line, column, message) = mk_error(
        "rules: r.yaml\nrulez: x\ncases:\n- {name: x, host: a, expect: {decision: allow}}\n",
    );
    assert_eq!((line, column), (2, 1));
    assert!(message.contains("unknown field `rulez`"), "{message}");
    let (line, _, message) =
        mk_error("cases:\n- name: x\n  host: a\n  expect:\n    decision: allow\n    rules: y\n");
    assert_eq!(line, 6);
    assert!(message.contains("unknown field `rules`"), "{message}");
}

#[test]
fn a_case_without_host_or_sni_is_located_at_the_case() {
    let (line, column, message) = mk_error(
        "cases:\n- name: ok\n  host: a\n  expect: {decision: allow}\n\
         - name: nowhere\n  port: 443\n  expect: {decision: allow}\n",
    );
    assert_eq!((line, column), (5, 3));
    assert!(message.contains("\"nowhere\""), "{message}");
    assert!(message.contains("`host` or `sni`"), "{message}");
}

#[test]
fn duplicate_case_names_are_located_at_the_second() {
    let (line, column, message) = mk_error(
        "cases:\n- {name: x, host: a, expect: {decision: allow}}\n\
         - {name: y, host: a, expect: {decision: allow}}\n\
         - {name: x, host: b, expect: {decision: deny}}\n",
    );
    assert_eq!((line, column), (4, 3));
    assert!(message.contains("already in this file"), "{message}");
}

#[test]
fn unknown_decisions_and_reasons_are_located_at_the_value() {
    let (line, column, message) =
        mk_error("cases:\n- name: x\n  host: a\n  expect: {decision: maybe}\n");
    assert_eq!((line, column), (4, 22));
    assert!(message.contains("unknown decision \"maybe\""), "{message}");
    let (line, column, message) = mk_error(
        "cases:\n- name: x\n  host: a\n  expect:\n    decision: deny\n    reason: forbidden\n",
    );
    assert_eq!((line, column), (6, 13));
    for reason in Reason::ALL {
        assert!(message.contains(reason.as_str()), "{message}");
    }
    // The spelling of rule files is not the spelling of decisions.
    let (_, _, message) = mk_error("cases:\n- name: x\n  host: a\n  expect: {decision: ALLOW}\n");
    assert!(message.contains("unknown decision"), "{message}");
}

#[test]
fn contradictory_expectations_are_refused() {
    let cases = [
        ("{decision: allow, reason: no_matching_rule}", "always deny"),
        (
            "{decision: deny, reason: denied_by_rule, rule: ''}",
            "always has one",
        ),
        (
            "{decision: deny, reason: invalid_principal, rule: r}",
            "which no rule gives",
        ),
    ];
    for (expect, wanted) in cases {
        let text = format!("cases:\n- name: x\n  host: a\n  expect: {expect}\n");
        let (line, column, message) = mk_error(&text);
        assert_eq!((line, column), (2, 3), "{expect}");
        assert!(message.contains(wanted), "{expect}: {message}");
    }
}

#[test]
fn http_fields_on_a_tcp_case_are_refused() {
    for case in [
        "{name: x, sni: a, method: GET, expect: {decision: deny}}",
        "{name: x, host: a, tcp: true, path: /, expect: {decision: deny}}",
    ] {
        let (_, _, message) = mk_error(&format!("cases:\n- {case}\n"));
        assert!(message.contains("HTTP checks only"), "{case}: {message}");
    }
}

#[test]
fn empty_files_and_empty_case_lists_are_refused() {
    for text in ["", "# only a comment\n\n", "\u{feff}"] {
        let (line, column, message) = mk_error(text);
        assert_eq!((line, column), (1, 1), "{text:?}");
        assert!(message.contains("empty test file"), "{message}");
    }
    let (line, _, message) = mk_error("rules: r.yaml\ncases: []\n");
    assert_eq!(line, 2);
    assert!(message.contains("no cases"), "{message}");
    let (_, _, message) = mk_error("rules: r.yaml\n");
    assert!(message.contains("missing field `cases`"), "{message}");
}

#[test]
fn yaml_syntax_errors_are_located() {
    let (line, column, _) =
        mk_error("cases:\n- name: x\n  host: a\n   expect: {decision: allow}\n");
    assert_eq!((line, column), (4, 10));
}

// === requests, as `explain` builds them ===

#[test]
fn requests_are_built_as_explain_builds_them() {
    let file = mk_file(
        "cases:\n\
         - {name: http, host: a.example.com, expect: {decision: deny}}\n\
         - {name: sni-alone, sni: a.example.com, port: 443, expect: {decision: deny}}\n\
         - {name: tcp-host, host: a.example.com, sni: other, tcp: true, expect: {decision: deny}}\n\
         - {name: http-sni, host: a.example.com, sni: b.example.com, expect: {decision: deny}}\n",
    );
    let [http, sni_alone, tcp_host, http_sni] = file.cases.as_slice() else {
        panic!("four cases");
    };
    let request = request_of(http);
    let wire = request.http.unwrap();
    assert_eq!(
        (wire.authority, wire.method, wire.path),
        ("a.example.com", "GET", "/")
    );
    assert_eq!((request.destination_service, request.sni), ("", ""));

    let request = request_of(sni_alone);
    assert!(request.http.is_none());
    assert_eq!(request.destination_service, "a.example.com");
    assert_eq!(request.sni, "a.example.com");
    assert_eq!(request.port, Some(443));

    let request = request_of(tcp_host);
    assert!(request.http.is_none());
    assert_eq!(
        (request.destination_service, request.sni),
        ("a.example.com", "other")
    );

    let request = request_of(http_sni);
    assert_eq!(request.http.unwrap().authority, "a.example.com");
    assert_eq!(request.sni, "b.example.com");
    // The SNI is checked against the host, as the gateway would.
    let policy = mk_policy(RULES);
    assert_eq!(
        run_case(&policy, http_sni).explanation.decision.reason,
        Reason::SniHostMismatch
    );
}

// === running ===

#[test]
fn each_part_of_an_expectation_is_compared() {
    let policy = mk_policy(RULES);
    let file = mk_file(&format!(
        "cases:\n\
         - {{name: pass, principal: '{PRINCIPAL_A}', host: a.example.com, expect: {{decision: allow, reason: allowed_by_rule, rule: allow-a}}}}\n\
         - {{name: decision, principal: '{PRINCIPAL_A}', host: b.example.com, expect: {{decision: allow}}}}\n\
         - {{name: reason, host: x.example.com, expect: {{decision: deny, reason: no_matching_rule}}}}\n\
         - {{name: no-rule-expected, host: b.example.com, expect: {{decision: deny, rule: ''}}}}\n\
         - {{name: no-rule-given, host: x.example.com, expect: {{decision: deny, rule: deny-b}}}}\n\
         - {{name: no-rule-checked, host: b.example.com, expect: {{decision: deny}}}}\n"
    ));
    let results = run_file(&policy, &file);
    let mismatches: Vec<(&str, &[Mismatch])> = results
        .iter()
        .map(|r| (r.case.name.as_str(), r.mismatches.as_slice()))
        .collect();
    assert_eq!(
        mismatches,
        [
            ("pass", &[][..]),
            ("decision", &[Mismatch::Decision]),
            ("reason", &[Mismatch::Reason]),
            ("no-rule-expected", &[Mismatch::Rule]),
            ("no-rule-given", &[Mismatch::Rule]),
            ("no-rule-checked", &[]),
        ]
    );
    assert!(results[0].passed() && !results[1].passed());
    assert_eq!(results[2].actual_rule(), "");
    assert_eq!(
        results[2].differences(),
        ["reason: expected no_matching_rule, got invalid_principal"]
    );
    assert_eq!(
        results[3].differences(),
        ["rule: expected no rule, got rule deny-b"]
    );
    assert_eq!(
        results[4].differences(),
        ["rule: expected rule deny-b, got no rule"]
    );
    // The explanation traces every rule, for the failure report.
    assert_eq!(results[1].explanation.rules.len(), 3);
}

#[test]
fn expectations_that_cannot_hold_are_located_at_the_case() {
    let policy = mk_policy(RULES);
    let file = mk_file(
        "cases:\n\
         - {name: fine, host: b.example.com, expect: {decision: deny, rule: deny-b}}\n\
         - {name: typo, host: a, expect: {decision: allow, rule: allow-aa}}\n\
         - {name: dry, host: c.example.com, expect: {decision: allow, rule: dry-c}}\n\
         - {name: action, host: a, expect: {decision: deny, rule: allow-a}}\n",
    );
    let errors = check_expectations(&policy, &file);
    let found: Vec<(usize, bool)> = errors
        .iter()
        .map(|e| (e.location.line, e.message.contains("expected rule")))
        .collect();
    assert_eq!(found, [(3, true), (4, true), (5, true)]);
    assert!(errors[0].message.contains("not a rule"), "{}", errors[0]);
    assert!(errors[1].message.contains("dry-run"), "{}", errors[1]);
    assert!(errors[2].message.contains("action ALLOW"), "{}", errors[2]);
}

// === coverage ===

#[test]
fn coverage_counts_deciding_rules_and_reported_dry_run_rules() {
    let policy = mk_policy(RULES);
    let names = |rules: &[&Rule]| rules.iter().map(|r| r.name.clone()).collect::<Vec<_>>();

    let allow_only = mk_file(&format!(
        "cases:\n- {{name: a, principal: '{PRINCIPAL_A}', host: a.example.com, expect: {{decision: allow}}}}\n"
    ));
    let results = run_file(&policy, &allow_only);
    let covered = coverage(&policy, &results);
    assert_eq!(names(&covered.covered), ["allow-a"]);
    assert_eq!(names(&covered.uncovered), ["deny-b", "dry-c"]);

    // A dry-run rule never decides; the decision reports it, and that covers it.
    let dry_run = mk_file("cases:\n- {name: c, host: c.example.com, expect: {decision: deny}}\n");
    let results = run_file(&policy, &dry_run);
    assert_eq!(
        results[0]
            .explanation
            .decision
            .dry_run
            .map(|d| d.rule.name.as_str()),
        Some("dry-c")
    );
    assert_eq!(names(&coverage(&policy, &results).covered), ["dry-c"]);

    // A rule that matched but did not decide is not covered: deny-b decides before allow-all.
    let shadowed = mk_policy(
        "rules:\n- name: allow-all\n- name: deny-b\n  action: DENY\n  to: {hosts: [b.example.com]}\n",
    );
    let file = mk_file("cases:\n- {name: b, host: b.example.com, expect: {decision: deny}}\n");
    let results = run_file(&shadowed, &file);
    let covered = coverage(&shadowed, &results);
    assert_eq!(names(&covered.covered), ["deny-b"]);
    assert_eq!(names(&covered.uncovered), ["allow-all"]);
    assert_eq!(rule_file(&shadowed, covered.uncovered[0]), "rules.yaml");
    assert_eq!(covered.uncovered[0].origin.line, 2);
}

#[test]
fn coverage_ignores_results_of_another_policy() {
    let policy = mk_policy(RULES);
    let other = mk_policy(RULES);
    let file = mk_file(&format!(
        "cases:\n- {{name: a, principal: '{PRINCIPAL_A}', host: a.example.com, expect: {{decision: allow}}}}\n"
    ));
    let results = run_file(&other, &file);
    assert!(coverage(&policy, &results).covered.is_empty());
}

// === JUnit ===

#[test]
fn junit_escapes_markup_quotes_and_line_breaks() {
    assert_eq!(
        attribute("a<b>&\"c\"'d'\n\te\r"),
        "a&lt;b&gt;&amp;&quot;c&quot;&apos;d&apos;&#10;&#9;e&#13;"
    );
    assert_eq!(
        text("x ]]> <y> & \"z\"\n"),
        "x ]]&gt; &lt;y&gt; &amp; \"z\"\n"
    );
}

#[test]
fn junit_replaces_characters_xml_cannot_carry() {
    assert_eq!(
        text("a\u{0}b\u{1b}c\u{fffe}d"),
        "a\u{fffd}b\u{fffd}c\u{fffd}d"
    );
    assert_eq!(attribute("\u{7f}é😀"), "\u{7f}é😀");
}

#[test]
fn junit_has_a_suite_per_file_and_a_failure_per_failed_case() {
    let policy = mk_policy(RULES);
    let file = mk_file(&format!(
        "cases:\n\
         - {{name: 'passes <1>', principal: '{PRINCIPAL_A}', host: a.example.com, expect: {{decision: allow}}}}\n\
         - {{name: 'fails \"2\"', host: x.example.com, expect: {{decision: allow}}}}\n"
    ));
    let results = run_file(&policy, &file);
    let xml = to_junit_xml(&[("dir/a&b.yaml", &results)], |r| {
        format!("body of {}", r.case.name)
    });
    let expected = "\
<?xml version=\"1.0\" encoding=\"UTF-8\"?>
<testsuites name=\"egress-authz test\" tests=\"2\" failures=\"1\" errors=\"0\">
  <testsuite name=\"dir/a&amp;b.yaml\" tests=\"2\" failures=\"1\" errors=\"0\" skipped=\"0\">
    <testcase name=\"passes &lt;1&gt;\" classname=\"dir/a&amp;b.yaml\"/>
    <testcase name=\"fails &quot;2&quot;\" classname=\"dir/a&amp;b.yaml\">
      <failure message=\"decision: expected allow, got deny\" type=\"decision\">body of fails \"2\"</failure>
    </testcase>
  </testsuite>
</testsuites>
";
    assert_eq!(xml, expected);
}
