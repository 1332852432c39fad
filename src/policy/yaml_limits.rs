//! Bounds on what one rule file can make the parser build, so that a small file cannot take the server's
//! memory or CPU ("billion laughs": aliases of aliases that expand to gigabytes).
//!
//! The YAML parser builds one event per node written in the file, which [`MAX_NODES`] bounds. What the file's size does not bound is alias expansion: every
//! `*alias` is deserialized as a full copy of its anchor, so a few kilobytes can expand to gigabytes of
//! strings. The parser's own guard (100 alias uses per event in the document) still lets a 1 MiB scalar
//! be copied tens of thousands of times.
//!
//! So a file that can hold an alias is first walked with [`BudgetWalker`]: a `Deserialize` that keeps
//! nothing and counts what deserializing the file would visit (aliases expanded), stopping as soon as a
//! budget is spent. The walk costs at most the budget, and only then is the file deserialized for real.
//!
//! Two more things the size alone does not make cheap are found in one pass over the bytes, before the
//! parser sees the file, by [`pre_parse_check`]: deep flow nesting (`[[[[…`), since the parser's work per
//! token grows with the open flow collections, and many tiny nodes (`[a,a,a,…]`), since the parser keeps
//! about a hundred bytes of events per node, which makes 50 times the file's size.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Deepest nesting of sequences and mappings, counting the document's top-level mapping. The schema
/// needs 4 (file, rules, rule, `to`, `hosts` is 5 with the list); 64 leaves room for any hand-written
/// structure and keeps the walker's recursion (a few stack frames per level) far from the stack's end.
pub(super) const MAX_DEPTH: usize = 64;
/// Fewest values (scalars, sequences, mappings, keys included) a file may expand to, whatever its size.
/// 100k rules written out take about 1.5 million values, in a file whose size allows that many anyway;
/// the floor lets a small file use anchors freely (one anchored list of hosts used by a thousand rules).
pub(super) const MIN_EXPANDED_VALUES: u64 = 100_000;
/// Fewest bytes of scalar text a file may expand to, whatever its size.
pub(super) const MIN_EXPANDED_TEXT_BYTES: u64 = 1 << 20;
/// Expanded scalar text allowed per byte of file: aliases may make the strings a few times larger than
/// the file (reusing a long host list), not orders of magnitude.
pub(super) const EXPANDED_TEXT_PER_FILE_BYTE: u64 = 4;

/// What a file may expand to. Relative to its size, with floors: a file already pays for what it
/// writes out, and amplification of a few times is what sharing a list with anchors legitimately does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Budget {
    /// Values (scalars, sequences, mappings, keys).
    pub(super) values: u64,
    /// Bytes of scalar text.
    pub(super) text_bytes: u64,
    /// Nesting of sequences and mappings.
    pub(super) depth: usize,
}

impl Budget {
    /// The budget of a file of `file_bytes` bytes. Every value written in a file takes at least one byte,
    /// so the values budget of at least the file's size never rejects a file that uses no alias.
    pub(super) fn for_file_of(file_bytes: usize) -> Self {
        let file_bytes = u64::try_from(file_bytes).unwrap_or(u64::MAX);
        Self {
            values: MIN_EXPANDED_VALUES.max(file_bytes),
            text_bytes: MIN_EXPANDED_TEXT_BYTES
                .max(file_bytes.saturating_mul(EXPANDED_TEXT_PER_FILE_BYTE)),
            depth: MAX_DEPTH,
        }
    }
}

/// A bound that keeps one rule file from taking the server's memory or CPU, with its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Limit {
    /// The file is larger than this many bytes (checked by the loader, before reading it whole).
    #[error("the file is larger than {0} bytes, the limit for one rule file")]
    FileBytes(u64),
    /// With aliases expanded, the file holds more values (scalars, sequences, mappings) than this.
    #[error(
        "with its aliases expanded, the file holds more than {0} values (limit: the larger of \
         100000 and the file's size in bytes)"
    )]
    ExpandedValues(u64),
    /// With aliases expanded, the file holds more bytes of scalar text than this.
    #[error(
        "with its aliases expanded, the file holds more than {0} bytes of text (limit: the larger \
         of 1 MiB and 4 times the file's size)"
    )]
    ExpandedTextBytes(u64),
    /// Sequences and mappings are nested deeper than this.
    #[error("sequences and mappings are nested more than {0} levels deep")]
    Depth(usize),
    /// The file holds more YAML nodes than this, counted on its bytes before parsing.
    #[error(
        "the file holds more than {0} YAML nodes (scalars, lists, mappings, keys included), the limit \
         for one rule file"
    )]
    Nodes(u64),
    /// Aliases are used more often than the YAML parser allows (100 uses per value in the document).
    #[error(
        "aliases are used more often than the YAML parser allows (100 alias uses per value written)"
    )]
    AliasUses,
}

/// Walks one YAML document as deserializing it would, aliases expanded, within `budget`. On `Err`,
/// `Some(limit)` says the budget ran out (the error then carries where); `None` is a YAML error that
/// the real parse reports too.
pub(super) fn walk_within_budget<'de, D>(
    document: D,
    budget: Budget,
) -> Result<(), (D::Error, Option<Limit>)>
where
    D: de::Deserializer<'de>,
{
    let mut state = WalkState {
        values_left: budget.values,
        text_bytes_left: budget.text_bytes,
        budget,
        exceeded: None,
    };
    let walked = BudgetWalker {
        state: &mut state,
        depth: 0,
    }
    .deserialize(document);
    walked.map(|_| ()).map_err(|error| (error, state.exceeded))
}

struct WalkState {
    values_left: u64,
    text_bytes_left: u64,
    budget: Budget,
    exceeded: Option<Limit>,
}

impl WalkState {
    fn spend<E: de::Error>(&mut self, text_bytes: usize) -> Result<(), E> {
        let text_bytes = u64::try_from(text_bytes).unwrap_or(u64::MAX);
        match (
            self.values_left.checked_sub(1),
            self.text_bytes_left.checked_sub(text_bytes),
        ) {
            (Some(values), Some(text)) => {
                self.values_left = values;
                self.text_bytes_left = text;
                Ok(())
            }
            (None, _) => Err(self.fail(Limit::ExpandedValues(self.budget.values))),
            (_, None) => Err(self.fail(Limit::ExpandedTextBytes(self.budget.text_bytes))),
        }
    }

    fn fail<E: de::Error>(&mut self, exceeded: Limit) -> E {
        self.exceeded = Some(exceeded);
        E::custom(exceeded)
    }
}

/// Visits a value and everything in it, keeping nothing: `IgnoredAny` with a budget.
struct BudgetWalker<'a> {
    state: &'a mut WalkState,
    /// Sequences and mappings around the value being visited.
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for BudgetWalker<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl BudgetWalker<'_> {
    fn nested<E: de::Error>(&mut self) -> Result<BudgetWalker<'_>, E> {
        if self.depth >= self.state.budget.depth {
            return Err(self.state.fail(Limit::Depth(self.state.budget.depth)));
        }
        Ok(BudgetWalker {
            state: self.state,
            depth: self.depth + 1,
        })
    }

    fn inner(&mut self) -> BudgetWalker<'_> {
        BudgetWalker {
            state: self.state,
            depth: self.depth,
        }
    }
}

impl<'de> Visitor<'de> for BudgetWalker<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.state.spend(0)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.state.spend(0)
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.state.spend(0)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.state.spend(0)
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.state.spend(0)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.state.spend(0)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        self.state.spend(text.len())
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<(), E> {
        self.state.spend(bytes.len())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.state.spend(0)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.state.spend(0)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_newtype_struct<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.state.spend(0)?;
        let mut nested = self.nested()?;
        while seq.next_element_seed(nested.inner())?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.state.spend(0)?;
        let mut nested = self.nested()?;
        while map.next_key_seed(nested.inner())?.is_some() {
            map.next_value_seed(nested.inner())?;
        }
        Ok(())
    }

    /// A tagged value (`!tag value`): the tag names the variant, the value is walked.
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        use de::VariantAccess as _;
        let (IgnoredAny, variant) = data.variant::<IgnoredAny>()?;
        variant.newtype_variant_seed(self)
    }
}

/// Most YAML nodes (scalars, aliases, sequences, mappings, keys included, empty values included) a rule
/// file may hold, counted on its bytes before parsing by [`pre_parse_check`]. The parser keeps every event
/// of a document in memory, about a hundred bytes each, so the file size alone (32 MiB of `[a,a,…]` is
/// 16 million nodes) lets a file take gigabytes. The 100k generated benchmark rules (1.51 million nodes)
/// count 1.53 million in block style, 2.67 million in flow style and 2.77 million as JSON: this is 2.6
/// times the block file and 1.4 times the JSON one, room for 100k rules in any style.
pub(super) const MAX_NODES: u64 = 4_000_000;

/// What a file is refused for by [`pre_parse_check`]: the offset of the byte that crossed the bound.
pub(super) type PreParseError = (usize, Limit);

/// The checks done on the bytes before the parser sees the file, in one pass and without allocating:
/// flow nesting deeper than `max_depth` and more than `max_nodes` nodes (see [`NodeCounter`]).
///
/// Deep flow nesting: the parser does work for every open flow collection on every token and keeps
/// events for each, so a file of nothing but `[` (16 million levels in 32 MiB) takes minutes and
/// gigabytes to parse. The pass follows enough of YAML's lexical rules not to count brackets in comments,
/// quoted scalars, or plain scalars of block context (`key: a[0]`). Where it misreads (an unbalanced
/// quote inside a plain scalar), it would take more than `max_depth` brackets left open in the rest of
/// the file to reject it. Block nesting is not counted here: it takes a wider line per level, which the
/// file size bounds.
///
/// The node count, on the other hand, looks at every byte, comments and quoted scalars included: a
/// misreading there would let a file through with more nodes than counted, so it does not depend on it.
pub(super) fn pre_parse_check(
    text: &str,
    max_depth: usize,
    max_nodes: u64,
) -> Result<(), PreParseError> {
    let bytes = text.as_bytes();
    let mut nodes = NodeCounter::new(max_nodes);
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        nodes.count(bytes, i)?;
        let previous = i.checked_sub(1).map(|p| bytes[p]);
        let after_blank = previous.is_none_or(|p| p.is_ascii_whitespace());
        // Where a token may start: after a blank, or in flow context after an indicator.
        let token_start = after_blank
            || (depth > 0 && previous.is_some_and(|p| matches!(p, b'[' | b'{' | b',' | b':')));
        match bytes[i] {
            b'#' if after_blank => {
                let end = bytes[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |end| i + end);
                for skipped in i + 1..end {
                    nodes.count(bytes, skipped)?;
                }
                i = end;
                continue;
            }
            quote @ (b'"' | b'\'') if token_start => {
                i += 1;
                while i < bytes.len() {
                    nodes.count(bytes, i)?;
                    match bytes[i] {
                        b'\\' if quote == b'"' => {
                            i += 1;
                            if i < bytes.len() {
                                nodes.count(bytes, i)?;
                            }
                        }
                        b'\'' if quote == b'\'' && bytes.get(i + 1) == Some(&b'\'') => {
                            i += 1;
                            nodes.count(bytes, i)?;
                        }
                        b if b == quote => break,
                        _ => {}
                    }
                    i += 1;
                }
            }
            b'[' | b'{' if depth > 0 || token_start => {
                depth += 1;
                if depth > max_depth {
                    return Err((i, Limit::Depth(max_depth)));
                }
            }
            b']' | b'}' if depth > 0 => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// An upper bound of the number of nodes the parser can build from a file, counted byte by byte.
///
/// Why it cannot count fewer than the parser builds, whatever the bytes: every node the parser builds
/// (scalar, alias, sequence or mapping start, or the empty scalar of a value left out) fills a slot that
/// only these open, each taking one node:
/// - a document's root: the first document, and one per `---` (a later document needs one);
/// - a block sequence entry, after a `-` followed by a blank or a line break (the parser's only
///   condition for it), so counted for every `-` followed by anything but a printable ASCII character;
/// - a key and its value, after `:` (`a: b`, `: b`, `a:`; in a flow sequence `[a: b]` the mapping it
///   makes fills the entry's slot) or after `?` (`? a`), 2 each;
/// - the first entry of a flow collection after `[` (1) or `{` (a key and its value, 2), and each next
///   entry after `,` (2: a flow mapping's `{a, b}` leaves both values out).
///
/// A collection's start fills the slot of the key, value or entry it is, and its entries have slots of
/// their own, so nothing is built outside a slot. The count takes every such byte wherever it is, in
/// quoted scalars and comments too (a `:` in a comment is counted): the count can be more than the
/// parser's nodes, never less, without having to read the file the way the parser does. Over-counting
/// costs little in a rule file (a host list in flow style counts 2 per host, JSON 2 per value), and the
/// events the parser keeps, two per collection (start, end) and one per other node, stay below twice
/// the count.
struct NodeCounter {
    counted: u64,
    max: u64,
}

impl NodeCounter {
    fn new(max: u64) -> Self {
        // The first document's root.
        Self { counted: 1, max }
    }

    /// Counts the slots the byte at `i` opens; `Err` with its offset once the count passes the maximum.
    fn count(&mut self, bytes: &[u8], i: usize) -> Result<(), PreParseError> {
        let slots = match bytes[i] {
            b':' | b'?' | b'{' | b',' => 2,
            b'[' => 1,
            b'-' => {
                let block_entry = bytes.get(i + 1).is_none_or(|next| !next.is_ascii_graphic());
                let document_start = bytes[i..].starts_with(b"---");
                u64::from(block_entry) + u64::from(document_start)
            }
            _ => return Ok(()),
        };
        self.counted += slots;
        if self.counted > self.max {
            return Err((i, Limit::Nodes(self.max)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "? ", "?", ",", ", ", "[", "]", "{", "}", "\"", "'", "\"x y\"", "'x'", "# c\n", "#",
            "!t ", "|\n", ">\n", "\\",
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
}
