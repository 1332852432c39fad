//! Bounds on what a rule file can make the parser build: the budget walk and pre-parse scan directly,
//! and alias amplification and nesting through `compile`.

use super::*;
use crate::test_fixtures::{mk_errors, mk_errors_located, mk_policy};
use crate::{CompileErrorKind, yaml_limits};

fn walk(text: &str, budget: Budget) -> Result<(), Option<Limit>> {
    walk_within_budget(yaml_serde::Deserializer::from_str(text), budget).map_err(|(_, e)| e)
}

fn roomy() -> Budget {
    Budget {
        values: 1_000,
        text_bytes: 1_000,
        depth: 8,
    }
}

#[test]
fn counts_every_value_once_without_aliases() {
    // A mapping, 2 keys, a sequence, 2 scalars, 1 scalar: 7 values, 12 bytes of text.
    let text = "rules: [ab, cd]\nx: yz\n";
    let exact = Budget {
        values: 7,
        text_bytes: 12,
        ..roomy()
    };
    assert_eq!(walk(text, exact), Ok(()));
    let one_value_less = Budget { values: 6, ..exact };
    assert_eq!(
        walk(text, one_value_less),
        Err(Some(Limit::ExpandedValues(6)))
    );
    let one_byte_less = Budget {
        text_bytes: 11,
        ..exact
    };
    assert_eq!(
        walk(text, one_byte_less),
        Err(Some(Limit::ExpandedTextBytes(11)))
    );
}

#[test]
fn counts_what_aliases_expand_to() {
    // The mapping and its 3 keys, and the anchored list (3 values) where written and once per alias.
    let text = "a: &l [x, y]\nb: *l\nc: *l\n";
    let values = 1 + 3 + 3 * 3;
    assert_eq!(walk(text, Budget { values, ..roomy() }), Ok(()));
    assert_eq!(
        walk(
            text,
            Budget {
                values: values - 1,
                ..roomy()
            }
        ),
        Err(Some(Limit::ExpandedValues(values - 1)))
    );
}

#[test]
fn stops_at_the_depth_limit() {
    let nested = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
    let budget = Budget {
        depth: 4,
        ..roomy()
    };
    assert_eq!(walk(&nested(4), budget), Ok(()));
    assert_eq!(walk(&nested(5), budget), Err(Some(Limit::Depth(4))));
}

#[test]
fn walks_tagged_values() {
    assert_eq!(walk("a: !t [x, y]\n", roomy()), Ok(()));
    assert_eq!(
        walk(
            "a: !t [x, y]\n",
            Budget {
                values: 3,
                ..roomy()
            }
        ),
        Err(Some(Limit::ExpandedValues(3)))
    );
}

#[test]
fn a_large_scalar_repeated_by_aliases_is_stopped_by_the_text_budget() {
    let text = format!(
        "a: &s {}\nb: [{}]\n",
        "x".repeat(10_000),
        ["*s"; 1_000].join(", ")
    );
    let budget = Budget::for_file_of(text.len());
    assert_eq!(
        walk(&text, budget),
        Err(Some(Limit::ExpandedTextBytes(MIN_EXPANDED_TEXT_BYTES)))
    );
}

#[test]
fn syntax_errors_are_not_budget_errors() {
    assert_eq!(walk("a: [\n", roomy()), Err(None));
}

/// What the pass counts for `text`: the bound of its node count.
fn counted_nodes(text: &str) -> u64 {
    let mut counter = NodeCounter::new(u64::MAX);
    for i in 0..text.len() {
        counter.count(text.as_bytes(), i).unwrap();
    }
    counter.counted
}

/// Nodes of a parsed value, as the parser built them (no alias in the generated texts).
fn parsed_nodes(value: &yaml_serde::Value) -> u64 {
    use yaml_serde::Value;
    match value {
        Value::Sequence(items) => 1 + items.iter().map(parsed_nodes).sum::<u64>(),
        Value::Mapping(map) => {
            1 + map
                .iter()
                .map(|(k, v)| parsed_nodes(k) + parsed_nodes(v))
                .sum::<u64>()
        }
        Value::Tagged(tagged) => parsed_nodes(&tagged.value),
        _ => 1,
    }
}

#[test]
fn floods_of_tiny_nodes_are_refused_where_the_count_passes_the_bound() {
    let max = 1_000;
    // 2 per `,`, 1 per `[` and 1 for the root: the 500th comma passes 1000.
    let flow = format!("[{}]", ["a"; 2_000].join(","));
    assert_eq!(
        pre_parse_check(&flow, MAX_DEPTH, max),
        Err((1 + 499 * 2 + 1, Limit::Nodes(max)))
    );
    let json = format!("[{}]", ["\"a\""; 2_000].join(","));
    assert_eq!(
        pre_parse_check(&json, MAX_DEPTH, max),
        Err((1 + 499 * 4 + 3, Limit::Nodes(max)))
    );
    // 1 per entry and 1 for the root: the 1000th entry passes 1000.
    let block = "- a\n".repeat(2_000);
    assert_eq!(
        pre_parse_check(&block, MAX_DEPTH, max),
        Err((999 * 4, Limit::Nodes(max)))
    );
    let mapping: String = (0..2_000).map(|i| format!("k{i}:\n")).collect();
    assert!(matches!(
        pre_parse_check(&mapping, MAX_DEPTH, max),
        Err((_, Limit::Nodes(1_000)))
    ));
    // Hiding the nodes in what looks like a comment or a quoted scalar does not take them out.
    let hidden = format!("# '\n\"#\n[{}]", ["a"; 2_000].join(","));
    assert!(matches!(
        pre_parse_check(&hidden, MAX_DEPTH, max),
        Err((_, Limit::Nodes(1_000)))
    ));
    assert_eq!(pre_parse_check(&flow, MAX_DEPTH, 4_000), Ok(()));
}

#[test]
fn realistic_rule_files_pass_with_room() {
    let rule = "- name: r1\n  action: DENY\n  from:\n    namespaces: [team-a, team-b]\n  to:\n    hosts: [api.example.com, \"*.example.org\"]\n    ports: [443]\n";
    let value: yaml_serde::Value = yaml_serde::from_str(rule).unwrap();
    // 21 nodes written; counted 23 (2 per `:`, a flow list 2 per item after the first).
    assert_eq!(parsed_nodes(&value), 21);
    assert_eq!(counted_nodes(rule), 23);
    let file = format!("defaultAction: DENY\nrules:\n{}", rule.repeat(100_000));
    assert!(file.len() < 32 << 20);
    assert_eq!(pre_parse_check(&file, MAX_DEPTH, MAX_NODES), Ok(()));
}

/// Texts made of YAML's indicators, blanks, line breaks and short scalars: whatever the parser makes
/// of them, when it makes a value, the count is not below its node count.
#[test]
fn the_count_bounds_the_parsers_node_count() {
    use proptest::prelude::*;
    let pieces = prop::sample::select(vec![
        "a", "bc", "1", " ", "  ", "\n", "\n  ", "\t", "- ", "-", "---\n", "...\n", ": ", ":",
        "? ", "?", ",", ", ", "[", "]", "{", "}", "\"", "'", "\"x y\"", "'x'", "# c\n", "#", "!t ",
        "|\n", ">\n", "\\",
    ]);
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 20_000,
        ..Default::default()
    });
    let parsed = std::cell::Cell::new(0u32);
    runner
        .run(&prop::collection::vec(pieces, 0..24), |pieces| {
            let text = pieces.concat();
            if let Ok(value) = yaml_serde::from_str::<yaml_serde::Value>(&text) {
                parsed.set(parsed.get() + 1);
                prop_assert!(
                    counted_nodes(&text) >= parsed_nodes(&value),
                    "{text:?}: counted {} < parsed {}",
                    counted_nodes(&text),
                    parsed_nodes(&value)
                );
            }
            Ok(())
        })
        .unwrap();
    // The test is only worth something if many of the texts parse.
    let parsed = parsed.get();
    assert!(parsed > 2_000, "only {parsed} texts parsed");
}

/// Values written out in block and flow style by the serializer, deeper and longer than the soup above.
#[test]
fn the_count_bounds_the_node_count_of_written_values() {
    use proptest::prelude::*;
    use yaml_serde::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        "[a-z :,-]{0,6}".prop_map(Value::String),
    ];
    let tree = leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Sequence),
            prop::collection::vec(("[a-z]{1,3}", inner), 0..6).prop_map(|pairs| {
                Value::Mapping(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (Value::String(k), v))
                        .collect(),
                )
            }),
        ]
    });
    proptest::proptest!(|(value in tree)| {
        let block = yaml_serde::to_string(&value).unwrap();
        let json = serde_json::to_string(&value).unwrap();
        for text in [block, json] {
            let parsed: Value = yaml_serde::from_str(&text).unwrap();
            prop_assert!(counted_nodes(&text) >= parsed_nodes(&parsed), "{text:?}");
        }
    });
}

/// The nesting part of the pass alone.
fn flow_nesting_exceeds(text: &str, max_depth: usize) -> Option<usize> {
    match pre_parse_check(text, max_depth, u64::MAX) {
        Ok(()) => None,
        Err((offset, limit)) => {
            assert_eq!(limit, Limit::Depth(max_depth));
            Some(offset)
        }
    }
}

#[test]
fn flow_nesting_is_measured_without_parsing() {
    let nested = |levels: usize| format!("a: {}{}\n", "[".repeat(levels), "]".repeat(levels));
    assert_eq!(flow_nesting_exceeds(&nested(4), 4), None);
    assert_eq!(flow_nesting_exceeds(&nested(5), 4), Some(3 + 4));
    assert_eq!(flow_nesting_exceeds("a: {b: [{c: [x]}]}\n", 3), Some(12));
    // JSON: brackets right after an indicator open collections too.
    assert_eq!(flow_nesting_exceeds("{\"a\":[[[1]]]}", 3), Some(7));
    // Not collections: in comments, quoted scalars, plain scalars of block context.
    let not_nested = concat!(
        "# [[[[[[\n",
        "a: x[[[[[[\n",
        "b: \"[[[[[[ \\\" [[[[\"\n",
        "c: '[[[['' [[[['\n",
        "d: [\"]]]]\", '[[[[[', x] # [[[[[\n",
    );
    assert_eq!(flow_nesting_exceeds(not_nested, 2), None);
}

#[test]
fn the_budget_grows_with_the_file_above_the_floors() {
    assert_eq!(
        Budget::for_file_of(10),
        Budget {
            values: MIN_EXPANDED_VALUES,
            text_bytes: MIN_EXPANDED_TEXT_BYTES,
            depth: MAX_DEPTH
        }
    );
    let big = Budget::for_file_of(10_000_000);
    assert_eq!((big.values, big.text_bytes), (10_000_000, 40_000_000));
}

// === Rule files cannot make the compiler build too much ===

/// `n` rules that each alias the same `scalar_bytes`-long description: tiny to write, `n * scalar_bytes`
/// bytes once the aliases are expanded.
fn alias_bomb(n: usize, scalar_bytes: usize) -> String {
    let mut text = format!(
        "rules:\n- name: r0\n  description: &d {}\n",
        "x".repeat(scalar_bytes)
    );
    for i in 1..n {
        text.push_str(&format!("- {{name: r{i}, description: *d}}\n"));
    }
    text
}

#[test]
fn aliases_expanding_a_long_scalar_are_refused_located_and_named() {
    // 200 MB of descriptions from a 300 kB file.
    let text = alias_bomb(10_000, 20_000);
    let errors = mk_errors_located(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        matches!(
            errors[0].kind,
            CompileErrorKind::LimitExceeded(Limit::ExpandedTextBytes(_))
        ),
        "{errors:?}"
    );
    let message = errors[0].to_string();
    assert!(message.starts_with("rules.yaml:"), "{message}");
    assert!(message.contains("bytes of text"), "{message}");
    assert!(
        errors[0].location.line > 2,
        "at the rule that overflows: {message}"
    );
}

#[test]
fn nested_aliases_are_refused() {
    // The classic: 9 levels of 10 aliases each, a billion strings.
    let mut text = "lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n".to_owned();
    for level in 1..9 {
        let previous = format!("*l{}", level - 1);
        text.push_str(&format!(
            "lol{level}: &l{level} [{}]\n",
            [previous.as_str(); 10].join(", ")
        ));
    }
    text.push_str("rules: []\n");
    let errors = mk_errors_located(&text);
    assert!(
        matches!(errors[0].kind, CompileErrorKind::LimitExceeded(_)),
        "{errors:?}"
    );
    assert!(errors[0].location.line >= 1 && errors[0].location.column >= 1);
}

#[test]
fn deep_nesting_in_a_file_with_anchors_is_refused() {
    let text = format!("rules: &r {}{}\n", "[".repeat(100), "]".repeat(100));
    let errors = mk_errors(&text);
    assert!(
        matches!(
            errors[0],
            CompileErrorKind::LimitExceeded(Limit::Depth(yaml_limits::MAX_DEPTH))
        ),
        "{errors:?}"
    );
}

#[test]
fn floods_of_nodes_or_brackets_are_refused_before_parsing_where_they_pass_the_bound() {
    // (what, text, limit passed, where, what the message says)
    let cases = [
        (
            // Counted: the root, 2 per `:`, 1 for `[`, 2 per `,`; the 1,999,998th comma passes 4 million.
            "tiny nodes",
            format!(
                "defaultAction: DENY\nrules: [{}a]\n",
                "a,".repeat(2_000_000)
            ),
            Limit::Nodes(yaml_limits::MAX_NODES),
            format!("rules.yaml:2:{}", 10 + 2 * (1_999_998 - 1)),
            "more than 4000000 YAML nodes",
        ),
        (
            "deep flow nesting, at the bracket",
            format!("rules: {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
            Limit::Depth(yaml_limits::MAX_DEPTH),
            "rules.yaml:1:72".to_owned(),
            "nested more than 64 levels deep",
        ),
    ];
    for (what, text, limit, location, message) in cases {
        let errors = mk_errors_located(&text);
        assert_eq!(errors.len(), 1, "{what}: {errors:?}");
        assert_eq!(
            errors[0].kind,
            CompileErrorKind::LimitExceeded(limit),
            "{what}"
        );
        assert_eq!(errors[0].location.to_string(), location, "{what}");
        assert!(
            errors[0].to_string().contains(message),
            "{what}: {errors:?}"
        );
    }
}

#[test]
fn anchors_for_sharing_values_are_fine() {
    let mut text =
        "rules:\n- name: r0\n  to:\n    hosts: &partners [a.example.com, b.example.com]\n"
            .to_owned();
    for i in 1..1_000 {
        text.push_str(&format!("- {{name: r{i}, to: {{hosts: *partners}}}}\n"));
    }
    let policy = mk_policy(&text);
    assert_eq!(policy.rules().len(), 1_000);
}
