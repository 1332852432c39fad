//! Rule-file text: names, contents, locations of things written in it, and the rule set's digest.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use sha2::{Digest, Sha256};

/// A rule file's name (as shown in errors) and contents.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// The path as given by the user, used in messages.
    pub name: String,
    /// The file's text.
    pub text: String,
}

/// A place in a rule file, 1-based.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file's name.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Finds where things are written in a file's text, for error locations. serde's model does not keep
/// spans, so rules are found by their `name` key (in order) and values by searching inside the rule.
///
/// Everything here is linear in the file's size whatever the style (block, flow on one line, JSON):
/// rules are located by one pass over the text collecting every `name` key with its value, then by a
/// lookup per rule; searches for a value stay inside their rule's extent. A search that runs to the end
/// of the file for every rule (a name written in a way the search does not recognise) makes compiling
/// 100k rules take minutes.
pub(super) struct Locator<'a> {
    file: &'a SourceFile,
    /// Byte offset of every line's start. Every rule is located, so counting newlines from the top
    /// each time would make compiling quadratic in the file size (minutes at 100k rules).
    line_starts: Vec<usize>,
    /// Every `name` key written in the file: its value as written (quotes removed) → byte offsets of
    /// the key, ascending.
    names: HashMap<&'a str, Vec<usize>>,
}

impl<'a> Locator<'a> {
    pub(super) fn new(file: &'a SourceFile) -> Self {
        let text = file.text.as_str();
        let newlines = text.match_indices('\n').map(|(i, _)| i + 1);
        let line_starts = std::iter::once(0).chain(newlines).collect();
        let mut names: HashMap<&str, Vec<usize>> = HashMap::new();
        for (offset, _) in text.match_indices("name") {
            if let Some(key) = key_at(text, offset, "name") {
                names
                    .entry(scalar_after(text, key.value_start))
                    .or_default()
                    .push(key.offset);
            }
        }
        Self {
            file,
            line_starts,
            names,
        }
    }

    pub(super) fn at(&self, offset: usize) -> Location {
        let offset = char_boundary(&self.file.text, offset);
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let line_start = self.line_starts[line - 1];
        let column = offset - line_start + 1;
        Location {
            file: self.file.name.clone(),
            line,
            column,
        }
    }

    /// The byte offset of the first `name` key at or after `from` whose value is `name`, or `from` when
    /// there is none (a name written with escapes, say).
    pub(super) fn rule(&self, name: &str, from: usize) -> usize {
        self.names
            .get(name)
            .and_then(|offsets| {
                let first = offsets.partition_point(|&offset| offset < from);
                offsets.get(first).copied()
            })
            .unwrap_or(from)
            .min(self.file.text.len())
    }

    /// The offset of the first occurrence of `value` in `within`, a range of byte offsets.
    pub(super) fn find_within(&self, within: Range<usize>, value: &str) -> Option<usize> {
        let text = &self.file.text;
        let start = char_boundary(text, within.start);
        let end = char_boundary(text, within.end.max(start));
        text[start..end].find(value).map(|i| start + i)
    }

    /// The location of the first occurrence of `value` at or after `from`.
    pub(super) fn value_after(&self, from: usize, value: &str) -> Option<Location> {
        self.find_within(from..self.file.text.len(), value)
            .map(|offset| self.at(offset))
    }

    /// The offset of the first occurrence of `value` at or after `from`.
    pub(super) fn find_after(&self, from: usize, value: &str) -> Option<usize> {
        self.find_within(from..self.file.text.len(), value)
    }

    /// The offset of a mapping key, written plain or quoted (`key:`, `"key":`), if it is written.
    pub(super) fn key_offset(&self, key: &str) -> Option<usize> {
        let text = &self.file.text;
        text.match_indices(key)
            .find_map(|(offset, _)| key_at(text, offset, key))
            .map(|found| found.offset)
    }

    /// The location of a top-level key, written plain or quoted (`key:`, `"key":`), or the file's start.
    pub(super) fn key(&self, key: &str) -> Location {
        let text = &self.file.text;
        text.match_indices(key)
            .find_map(|(offset, _)| key_at(text, offset, key))
            .map_or_else(|| self.at(0), |found| self.at(found.offset))
    }
}

/// A mapping key found in the text.
struct KeyAt {
    /// Where the key starts (its opening quote, if quoted).
    offset: usize,
    /// Where its value starts, past the `:` and any blanks.
    value_start: usize,
}

/// `key` written as a mapping key at `offset` (plain, `"key"` or `'key'`, then `:`), not as part of a
/// longer word (`hostname:`) or of a value.
fn key_at(text: &str, offset: usize, key: &str) -> Option<KeyAt> {
    let bytes = text.as_bytes();
    let mut start = offset;
    let mut end = offset + key.len();
    if let (Some(&open @ (b'"' | b'\'')), Some(&close)) =
        (offset.checked_sub(1).map(|i| &bytes[i]), bytes.get(end))
    {
        if open != close {
            return None;
        }
        start -= 1;
        end += 1;
    }
    let before_ok =
        start == 0 || matches!(bytes[start - 1], b' ' | b'\t' | b'\n' | b'\r' | b'{' | b',');
    if !before_ok {
        return None;
    }
    let mut colon = end;
    while matches!(bytes.get(colon), Some(b' ' | b'\t')) {
        colon += 1;
    }
    if bytes.get(colon) != Some(&b':') {
        return None;
    }
    // A plain `key:` must be followed by a blank (or the end) to be a key; JSON's `"key":` need not be.
    let after = colon + 1;
    if start == offset && !matches!(bytes.get(after), None | Some(b' ' | b'\t' | b'\n' | b'\r')) {
        return None;
    }
    let mut value_start = after;
    while matches!(bytes.get(value_start), Some(b' ' | b'\t')) {
        value_start += 1;
    }
    Some(KeyAt {
        offset: start,
        value_start,
    })
}

/// The scalar written at `start` as it reads, quotes removed: up to the closing quote, or for a plain
/// scalar up to the end of the line, a comment, or what ends a value in flow style (`,`, `}`, `]`).
/// Escapes are not decoded: a rule name that needs them is invalid anyway.
fn scalar_after(text: &str, start: usize) -> &str {
    let rest = &text[start..];
    // Scans only as far as the value goes: a JSON file is often a single line, and finding the line's
    // end for every name would make locating quadratic.
    let end_of = |stops: &[u8]| {
        rest.bytes()
            .position(|b| b == b'\n' || b == b'\r' || stops.contains(&b))
            .unwrap_or(rest.len())
    };
    match rest.as_bytes().first() {
        Some(&quote @ (b'"' | b'\'')) => {
            let inner = &rest[1..];
            let close = inner
                .bytes()
                .position(|b| b == quote || b == b'\n' || b == b'\r')
                .unwrap_or(inner.len());
            &inner[..close]
        }
        _ => {
            let value = &rest[..end_of(b",}]")];
            value.split(" #").next().unwrap_or(value).trim_end()
        }
    }
}

/// SHA-256 over each file's base name and content, hex-encoded.
pub fn digest(files: &[SourceFile]) -> String {
    let mut hasher = Sha256::new();
    for file in files {
        // The base name, not the path: the same ConfigMap mounted anywhere has the same digest.
        let name = std::path::Path::new(&file.name)
            .file_name()
            .map_or(file.name.as_str(), |n| n.to_str().unwrap_or_default());
        // Length-prefix each part so that moving bytes between name and text changes the digest.
        for part in [name.as_bytes(), file.text.as_bytes()] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
    }
    hasher
        .finalize()
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            use std::fmt::Write as _;
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// The largest char boundary at or before `offset`, so a search position can never split a UTF-8
/// character (offsets advance byte by byte when a rule's written name differs from its parsed value).
fn char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

#[cfg(test)]
mod tests {
    use crate::compile;

    use super::*;

    #[test]
    fn digest_depends_on_content_not_on_directory() {
        let mk = |name: &str, text: &str| {
            compile(&[SourceFile {
                name: name.into(),
                text: text.into(),
            }])
            .unwrap()
            .digest()
            .to_owned()
        };
        assert_eq!(
            mk("/etc/a/rules.yaml", "rules: []\n"),
            mk("/other/rules.yaml", "rules: []\n")
        );
        assert_ne!(
            mk("rules.yaml", "rules: []\n"),
            mk("rules.yaml", "rules: []\n# changed\n")
        );
    }
}
