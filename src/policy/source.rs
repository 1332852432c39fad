//! Rule-file text: names, contents, locations of things written in it, and the rule set's digest.

use std::fmt;

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
/// spans, so rules are found by their `name:` line (in order) and values by searching inside the rule.
pub(super) struct Locator<'a> {
    file: &'a SourceFile,
    /// Byte offset of every line's start. Every rule is located, so counting newlines from the top
    /// each time would make compiling quadratic in the file size (minutes at 100k rules).
    line_starts: Vec<usize>,
}

impl<'a> Locator<'a> {
    pub(super) fn new(file: &'a SourceFile) -> Self {
        let newlines = file.text.match_indices('\n').map(|(i, _)| i + 1);
        let line_starts = std::iter::once(0).chain(newlines).collect();
        Self { file, line_starts }
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

    /// The byte offset and location of the `name: <name>` of a rule, searching from `from`.
    pub(super) fn rule(&self, name: &str, from: usize) -> (usize, Location) {
        let text = &self.file.text;
        let mut offset = char_boundary(text, from);
        while let Some(found) = text[offset..].find("name:") {
            let start = offset + found;
            let line_end = text[start..].find('\n').map_or(text.len(), |e| start + e);
            let value = text[start + "name:".len()..line_end].trim();
            let value = value
                .split(" #")
                .next()
                .unwrap_or(value)
                .trim()
                .trim_matches(['"', '\'']);
            if value == name {
                return (start, self.at(start));
            }
            offset = start + 1;
        }
        (from, self.at(from))
    }

    /// The location of the first occurrence of `value` at or after `from`.
    pub(super) fn value_after(&self, from: usize, value: &str) -> Option<Location> {
        let text = &self.file.text;
        let from = char_boundary(text, from);
        text[from..].find(value).map(|i| self.at(from + i))
    }

    /// The location of a top-level key.
    pub(super) fn key(&self, key: &str) -> Location {
        let text = &self.file.text;
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            if line.starts_with(key) && line[key.len()..].trim_start().starts_with(':') {
                return self.at(offset);
            }
            offset += line.len();
        }
        self.at(0)
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
