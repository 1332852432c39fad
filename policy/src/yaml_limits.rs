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
mod tests;
