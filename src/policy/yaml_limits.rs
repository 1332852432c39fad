//! Bounds on what one rule file can make the parser build, so that a small file cannot take the server's
//! memory or CPU ("billion laughs": aliases of aliases that expand to gigabytes).
//!
//! The YAML parser builds one event per node written in the file, which the file's size bounds (the loader
//! refuses files over a maximum size). What the file's size does not bound is alias expansion: every
//! `*alias` is deserialized as a full copy of its anchor, so a few kilobytes can expand to gigabytes of
//! strings. The parser's own guard (100 alias uses per event in the document) still lets a 1 MiB scalar
//! be copied tens of thousands of times.
//!
//! So a file that can hold an alias is first walked with [`BudgetWalker`]: a `Deserialize` that keeps
//! nothing and counts what deserializing the file would visit (aliases expanded), stopping as soon as a
//! budget is spent. The walk costs at most the budget, and only then is the file deserialized for real.
//!
//! Deep flow nesting (`[[[[…`) is the other thing the size alone does not make cheap: the parser's work
//! per token grows with the open flow collections. [`flow_nesting_exceeds`] finds it in one pass over
//! the bytes, before the parser sees the file.

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

/// The offset of the first `[` or `{` nested more than `max_depth` flow collections deep, found without
/// parsing. The parser does work for every open flow collection on every token and keeps events for
/// each, so a file of nothing but `[` (16 million levels in 32 MiB) takes minutes and gigabytes to parse;
/// this check takes one pass over the bytes.
///
/// It follows enough of YAML's lexical rules not to count brackets in comments, quoted scalars, or plain
/// scalars of block context (`key: a[0]`). Where it misreads (an unbalanced quote inside a plain scalar),
/// it would take more than `max_depth` brackets left open in the rest of the file to reject it. Block
/// nesting is not counted here: it takes a wider line per level, which the file size bounds.
pub(super) fn flow_nesting_exceeds(text: &str, max_depth: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let previous = i.checked_sub(1).map(|p| bytes[p]);
        let after_blank = previous.is_none_or(|p| p.is_ascii_whitespace());
        // Where a token may start: after a blank, or in flow context after an indicator.
        let token_start = after_blank
            || (depth > 0 && previous.is_some_and(|p| matches!(p, b'[' | b'{' | b',' | b':')));
        match bytes[i] {
            b'#' if after_blank => {
                i = bytes[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |end| i + end);
                continue;
            }
            quote @ (b'"' | b'\'') if token_start => {
                i += 1;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' if quote == b'"' => i += 1,
                        b'\'' if quote == b'\'' && bytes.get(i + 1) == Some(&b'\'') => i += 1,
                        b if b == quote => break,
                        _ => {}
                    }
                    i += 1;
                }
            }
            b'[' | b'{' if depth > 0 || token_start => {
                depth += 1;
                if depth > max_depth {
                    return Some(i);
                }
            }
            b']' | b'}' if depth > 0 => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
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
