//! Compiling rule files: which files are refused and with what error, how files combine, and where
//! each error is located, whatever the style the file is written in.

use crate::test_fixtures::*;
use crate::*;

#[test]
fn invalid_rule_files_are_rejected_with_the_right_error() {
    type Expectation = fn(&CompileErrorKind) -> bool;
    let cases: &[(&str, Expectation)] = &[
        (
            "rules:\n- name: a\n  from: {namespace: [x]}\n",
            |k| matches!(k, CompileErrorKind::Syntax(m) if m.contains("unknown field")),
        ),
        ("rules:\n- name: a\n  action: MAYBE\n", |k| {
            matches!(k, CompileErrorKind::Syntax(_))
        }),
        ("rules: [\n", |k| matches!(k, CompileErrorKind::Syntax(_))),
        ("", |k| matches!(k, CompileErrorKind::EmptyFile)),
        ("# only a comment\n", |k| {
            matches!(k, CompileErrorKind::EmptyFile)
        }),
        ("rules:\n- name: Upper\n", |k| {
            matches!(k, CompileErrorKind::InvalidRuleName)
        }),
        ("rules:\n- name: a\n- name: a\n", |k| {
            matches!(k, CompileErrorKind::DuplicateRuleName { .. })
        }),
        ("rules:\n- name: a\n  to: {hosts: ['a.*.com']}\n", |k| {
            matches!(
                k,
                CompileErrorKind::InvalidValue {
                    field: "to.hosts",
                    ..
                }
            )
        }),
        ("rules:\n- name: a\n  to: {ports: [0]}\n", |k| {
            matches!(
                k,
                CompileErrorKind::InvalidValue {
                    field: "to.ports",
                    ..
                }
            )
        }),
        ("rules:\n- name: a\n  to: {ports: [70000]}\n", |k| {
            matches!(k, CompileErrorKind::Syntax(_))
        }),
        ("rules:\n- name: a\n  to: {paths: [nope]}\n", |k| {
            matches!(
                k,
                CompileErrorKind::InvalidValue {
                    field: "to.paths",
                    ..
                }
            )
        }),
        ("rules:\n- name: a\n  to: {methods: ['G T']}\n", |k| {
            matches!(
                k,
                CompileErrorKind::InvalidValue {
                    field: "to.methods",
                    ..
                }
            )
        }),
        (
            "rules:\n- name: a\n  from: {serviceAccounts: [sleep]}\n",
            |k| {
                matches!(
                    k,
                    CompileErrorKind::InvalidValue {
                        field: "from.serviceAccounts",
                        ..
                    }
                )
            },
        ),
        ("rules:\n- name: a\n  from: {namespaces: ['a*b']}\n", |k| {
            matches!(
                k,
                CompileErrorKind::InvalidValue {
                    field: "from.namespaces",
                    ..
                }
            )
        }),
        ("rules:\n- name: a\n  from: {}\n", |k| {
            matches!(k, CompileErrorKind::EmptyBlock("from", _))
        }),
        ("rules:\n- name: a\n  to: {hosts: []}\n", |k| {
            matches!(k, CompileErrorKind::EmptyBlock("to", _))
        }),
        ("trustDomains: []\nrules: []\n", |k| {
            matches!(k, CompileErrorKind::InvalidTrustDomains(_))
        }),
        ("trustDomains: [Cluster.Local]\nrules: []\n", |k| {
            matches!(k, CompileErrorKind::InvalidTrustDomains(_))
        }),
    ];
    for (yaml, expected) in cases {
        let errors = mk_errors(yaml);
        assert!(errors.iter().any(expected), "{yaml:?} gave {errors:?}");
    }
}

#[test]
fn files_in_a_directory_combine_and_must_agree() {
    let file = |name: &str, text: &str| SourceFile {
        name: name.into(),
        text: text.into(),
    };
    let policy = compile(&[
        file(
            "a.yaml",
            "defaultAction: DENY\nrules:\n- name: one\n  to: {hosts: [a.com]}\n",
        ),
        file(
            "b.yaml",
            "defaultAction: DENY\nrules:\n- name: two\n  to: {hosts: [b.com]}\n",
        ),
    ])
    .unwrap();
    assert_eq!(policy.rules().len(), 2);
    assert_eq!(policy.rules()[1].origin.file, 1);

    let errors = compile(&[
        file("a.yaml", "rules:\n- name: one\n"),
        file("b.yaml", "rules:\n- name: one\n"),
    ])
    .unwrap_err();
    assert!(
        matches!(&errors[0].kind, CompileErrorKind::DuplicateRuleName { first } if first.file == "a.yaml")
    );
    assert_eq!(errors[0].location.file, "b.yaml");

    let errors = compile(&[
        file("a.yaml", "defaultAction: DENY\nrules: []\n"),
        file("b.yaml", "defaultAction: ALLOW\nrules: []\n"),
    ])
    .unwrap_err();
    assert!(matches!(
        &errors[0].kind,
        CompileErrorKind::ConflictingSetting {
            setting: "defaultAction",
            ..
        }
    ));

    // Trust domains agree as sets, regardless of order.
    compile(&[
        file("a.yaml", "trustDomains: [a.local, b.local]\nrules: []\n"),
        file("b.yaml", "trustDomains: [b.local, a.local]\nrules: []\n"),
    ])
    .unwrap();
}

#[test]
fn a_byte_order_mark_is_not_an_error() {
    let policy = mk_policy("\u{feff}defaultAction: ALLOW\nrules: []\n");
    assert_eq!(policy.settings().default_action, Verdict::Allow);
}

#[test]
fn an_ipv4_rule_host_in_a_short_spelling_matches_the_dotted_quad() {
    let policy = mk_policy("rules:\n- name: loopback\n  to: {hosts: [\"127.1\"]}\n");
    assert_eq!(
        policy.rules()[0].to.as_ref().map(|t| &t.hosts[..]),
        Some(&[HostPattern::Exact("127.0.0.1".into())][..])
    );
    assert_eq!(
        outcome(&policy, &http(DEFAULT_SLEEP, "127.0.0.1")).1,
        Reason::AllowedByRule
    );
    assert!(matches!(
        mk_errors("rules:\n- name: a\n  to: {hosts: [\"1.2.3.4.5\"]}\n")[..],
        [CompileErrorKind::InvalidValue {
            field: "to.hosts",
            ..
        }]
    ));
}

// === Empty and multiple documents ===

#[test]
fn documents_with_nothing_in_them_are_empty_files() {
    for text in [
        "---\n",
        "---\n...\n",
        "---\n---\n",
        "# a comment\n---\n# another\n",
        "~\n",
        "null\n",
    ] {
        let errors = mk_errors_located(text);
        assert!(
            matches!(errors[0].kind, CompileErrorKind::EmptyFile),
            "{text:?}: {errors:?}"
        );
    }
}

#[test]
fn rules_with_no_value_is_an_error_at_the_key() {
    for text in [
        "defaultAction: ALLOW\nrules:\n",
        "defaultAction: ALLOW\nrules: ~\n",
        "defaultAction: ALLOW\nrules: null\n",
        "defaultAction: ALLOW\nrules:\n# the deny rules were here\n",
    ] {
        let errors = mk_errors_located(text);
        assert_eq!(errors.len(), 1, "{text:?}: {errors:?}");
        assert_eq!(
            errors[0].kind,
            CompileErrorKind::RulesWithoutValue,
            "{text:?}"
        );
        assert_eq!(errors[0].location.to_string(), "rules.yaml:2:1");
    }
    // Written empty, or left out, they are no rules.
    assert!(
        mk_policy("defaultAction: ALLOW\nrules: []\n")
            .rules()
            .is_empty()
    );
    assert!(mk_policy("defaultAction: ALLOW\n").rules().is_empty());
}

#[test]
fn from_or_to_with_no_value_is_an_empty_block_not_a_wildcard() {
    let errors = mk_errors("rules:\n- name: a\n  to: {hosts: [a.com]}\n  from:\n");
    assert!(
        matches!(errors[..], [CompileErrorKind::EmptyBlock("from", _)]),
        "{errors:?}"
    );
    let errors = mk_errors("rules:\n- name: a\n  from: {namespaces: [x]}\n  to:\n");
    assert!(
        matches!(errors[..], [CompileErrorKind::EmptyBlock("to", _)]),
        "{errors:?}"
    );
}

#[test]
fn a_second_document_is_an_error_where_it_starts() {
    let cases = [
        ("rules: []\n---\nrules: []\n", "rules.yaml:2:1"),
        ("---\nrules: []\n---\n", "rules.yaml:3:1"),
        (
            "# header\n---\nrules: []\n...\n# trailer\nrules: []\n",
            "rules.yaml:6:1",
        ),
        (
            "rules:\n- name: a\n  description: |\n    text\n--- # next\nrules: []\n",
            "rules.yaml:5:1",
        ),
    ];
    for (text, location) in cases {
        let errors = mk_errors_located(text);
        assert_eq!(errors.len(), 1, "{text:?}: {errors:?}");
        assert_eq!(
            errors[0].kind,
            CompileErrorKind::MultipleDocuments,
            "{text:?}"
        );
        assert_eq!(errors[0].location.to_string(), location, "{text:?}");
    }
    // Explicit start and end markers around one document are one document.
    assert_eq!(mk_policy("---\nrules: []\n...\n").rules().len(), 0);
}

// === Locations in every style ===

#[test]
fn errors_are_located_at_file_line_and_column() {
    let yaml = "rules:\n- name: ok\n- name: bad\n  to:\n    hosts: [fine.com, 'a.*.com']\n";
    let errors = compile(&[SourceFile {
        name: "team/rules.yaml".into(),
        text: yaml.into(),
    }])
    .unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].location.to_string(), "team/rules.yaml:5:24");
    assert_eq!(errors[0].rule.as_deref(), Some("bad"));
    assert!(
        errors[0]
            .to_string()
            .starts_with("team/rules.yaml:5:24: rule \"bad\": to.hosts")
    );

    let errors = mk_errors_located("rules:\n- name: a\n  frm: {}\n");
    assert_eq!((errors[0].location.line, errors[0].location.column), (3, 3));
}

#[test]
fn locating_errors_never_splits_a_utf8_character() {
    // Names written with escapes are not found verbatim, so the search position advances one byte per
    // rule from the start of the file; a non-ASCII comment there must not make the locator panic.
    let names: String = (b'a'..=b'f')
        .map(|c| format!("- name: \"\\x{c:x}\"\n"))
        .collect();
    let yaml = format!("# ééé\nrules:\n{names}- name: bad\n  to: {{hosts: ['a.*.com']}}\n");
    let errors = mk_errors_located(&yaml);
    assert!(
        errors.iter().any(|e| e.rule.as_deref() == Some("bad")),
        "{errors:?}"
    );
}

#[test]
fn errors_are_located_in_flow_style_and_in_json() {
    // (style, text, where each error is)
    let cases = [
        (
            "flow",
            "rules:\n- {name: ok, to: {hosts: [a.com]}}\n- {name: bad, to: {hosts: [b.com, 'a.*.com']}}\n- {name: Upper}\n",
            ["rules.yaml:3:36", "rules.yaml:4:4"],
        ),
        (
            "json",
            r#"{
  "defaultAction": "DENY",
  "trustDomains": ["cluster.local"],
  "rules": [
    {"name": "ok", "to": {"hosts": ["a.com"]}},
    {
      "name": "bad",
      "to": {"hosts": ["b.com", "a.*.com"]}
    },
    {"name": "Upper"}
  ]
}
"#,
            ["rules.yaml:8:34", "rules.yaml:10:6"],
        ),
    ];
    for (style, text, locations) in cases {
        let errors = mk_errors_located(text);
        let at: Vec<_> = errors.iter().map(|e| e.location.to_string()).collect();
        assert_eq!(at, locations, "{style}: {errors:?}");
    }
}

#[test]
fn settings_in_json_are_located_at_their_key() {
    let errors = compile(&[
        SourceFile {
            name: "a.json.yaml".into(),
            text: r#"{"defaultAction": "DENY", "rules": []}"#.into(),
        },
        SourceFile {
            name: "b.json.yaml".into(),
            text: "{\n  \"defaultAction\": \"ALLOW\"\n}\n".into(),
        },
    ])
    .unwrap_err();
    assert_eq!(errors[0].location.to_string(), "b.json.yaml:2:3");
    assert!(
        errors[0].to_string().contains("a.json.yaml:1:2"),
        "{errors:?}"
    );
}

#[test]
fn a_rule_name_written_differently_is_located_near_its_rule_without_scanning_the_file() {
    // The name is written with an escape, so it is not found as written: the rule falls back to the
    // previous rule's position rather than to something far away.
    let text = "rules:\n- name: first\n- name: \"sec\\u006fnd\"\n  to: {hosts: ['a.*.com']}\n";
    let errors = mk_errors_located(text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].rule.as_deref(), Some("second"));
    assert_eq!(errors[0].location.line, 4, "{errors:?}");
}
