//! Where each case of a test file is written, found after a successful parse (serde keeps no spans):
//! by looking for its `name:` key in the text, as the rule compiler locates rules.

/// The (line, column) of each case's `name` key, given the names in file order: the first such key at
/// or after the previous case's whose value is the name. A name the search cannot find (written with
/// escapes, say) gets the previous case's place, or the top of the file.
pub(super) fn case_starts<'n>(
    text: &str,
    names: impl Iterator<Item = &'n str>,
) -> Vec<(usize, usize)> {
    let keys = name_keys(text);
    let mut next = 0;
    let mut previous = (1, 1);
    names
        .map(|name| {
            if let Some(found) = keys[next..].iter().position(|key| key.value == name) {
                next += found;
                previous = (keys[next].line, keys[next].column);
                next += 1;
            }
            previous
        })
        .collect()
}

/// A `name` key written in the text, with its value as written (quotes removed).
struct NameKey<'t> {
    line: usize,
    column: usize,
    value: &'t str,
}

/// Every `name:` key in the text, block style or flow style (`{name: a, …}`), plain or quoted.
fn name_keys(text: &str) -> Vec<NameKey<'_>> {
    let mut keys = Vec::new();
    for (line_index, line) in text.lines().enumerate() {
        for (at, _) in line.match_indices("name") {
            let (start, end) = match (
                line[..at].chars().next_back(),
                line[at + 4..].chars().next(),
            ) {
                (Some(open @ ('"' | '\'')), Some(close)) if open == close => (at - 1, at + 5),
                _ => (at, at + 4),
            };
            let starts_key = line[..start]
                .chars()
                .next_back()
                .is_none_or(|c| matches!(c, ' ' | '\t' | '-' | '{' | ','));
            let rest = line[end..].trim_start();
            let Some(value) = rest.strip_prefix(':') else {
                continue;
            };
            if !starts_key {
                continue;
            }
            keys.push(NameKey {
                line: line_index + 1,
                column: start + 1,
                value: scalar(value.trim_start()),
            });
        }
    }
    keys
}

/// The scalar at the start of `text`, quotes removed: up to the closing quote, or for a plain scalar up
/// to a comment or what ends a flow value.
fn scalar(text: &str) -> &str {
    match text.chars().next() {
        Some(quote @ ('"' | '\'')) => {
            let inner = &text[1..];
            inner.find(quote).map_or(inner, |end| &inner[..end])
        }
        _ => {
            let end = text.find([',', '}', ']']).unwrap_or(text.len());
            let value = &text[..end];
            value.split(" #").next().unwrap_or(value).trim_end()
        }
    }
}
