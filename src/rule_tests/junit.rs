//! JUnit XML for CI systems: a `testsuite` per test file, a `testcase` per case, a `failure` per failed
//! case. Names come from test files, so everything written is escaped, and characters XML 1.0 cannot
//! carry at all (most control characters) are replaced: the report must stay well formed whatever a
//! case is named.

use std::fmt::Write as _;

use super::CaseResult;

/// The name of the `testsuites` element.
const SUITES_NAME: &str = "egress-authz test";

/// The report for `suites` (each a test file's name and its results, in order). `failure_text` gives the
/// body of a failed case's `failure` element (its `message` is the differences on one line).
pub fn to_junit_xml(
    suites: &[(&str, &[CaseResult<'_>])],
    failure_text: impl Fn(&CaseResult<'_>) -> String,
) -> String {
    let failed = |results: &[CaseResult<'_>]| results.iter().filter(|r| !r.passed()).count();
    let tests: usize = suites.iter().map(|(_, results)| results.len()).sum();
    let failures: usize = suites.iter().map(|(_, results)| failed(results)).sum();
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    // Writing to a String cannot fail.
    let _ = writeln!(
        xml,
        "<testsuites name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\">",
        attribute(SUITES_NAME)
    );
    for (file, results) in suites {
        let _ = writeln!(
            xml,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"0\">",
            attribute(file),
            results.len(),
            failed(results)
        );
        for result in *results {
            let open = format!(
                "    <testcase name=\"{}\" classname=\"{}\"",
                attribute(&result.case.name),
                attribute(file)
            );
            if result.passed() {
                let _ = writeln!(xml, "{open}/>");
            } else {
                let _ = writeln!(
                    xml,
                    "{open}>\n      <failure message=\"{}\" type=\"decision\">{}</failure>\n    </testcase>",
                    attribute(&result.differences().join("; ")),
                    text(&failure_text(result))
                );
            }
        }
        xml.push_str("  </testsuite>\n");
    }
    xml.push_str("</testsuites>\n");
    xml
}

/// `raw` as an attribute value between double quotes. Tabs and line breaks are written as character
/// references, since a parser would otherwise normalise them to spaces.
pub(super) fn attribute(raw: &str) -> String {
    escape(raw, |c| match c {
        '"' => Some("&quot;"),
        '\'' => Some("&apos;"),
        '\t' => Some("&#9;"),
        '\n' => Some("&#10;"),
        '\r' => Some("&#13;"),
        _ => None,
    })
}

/// `raw` as element content.
pub(super) fn text(raw: &str) -> String {
    escape(raw, |_| None)
}

fn escape(raw: &str, extra: impl Fn(char) -> Option<&'static str>) -> String {
    let mut escaped = String::with_capacity(raw.len());
    for c in raw.chars() {
        match (c, extra(c)) {
            (_, Some(reference)) => escaped.push_str(reference),
            ('&', None) => escaped.push_str("&amp;"),
            ('<', None) => escaped.push_str("&lt;"),
            // Only `]]>` needs it, but escaping every `>` is simpler and as valid.
            ('>', None) => escaped.push_str("&gt;"),
            (c, None) if allowed_in_xml(c) => escaped.push(c),
            _ => escaped.push(char::REPLACEMENT_CHARACTER),
        }
    }
    escaped
}

/// XML 1.0's `Char` production: no control characters but tab and line breaks, no U+FFFE or U+FFFF
/// (surrogates cannot occur in a Rust string). Not even as character references.
fn allowed_in_xml(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}
