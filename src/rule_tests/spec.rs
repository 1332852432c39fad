//! The test file as a person writes it, read with every mistake located at `file:line:column`.
//!
//! serde keeps no spans, so the checks that concern a whole case (no destination, a duplicate name, an
//! expectation that contradicts itself) run inside the deserializer, while the parser still knows where
//! the case's mapping starts: an error raised there is located at the case. Where each case starts is
//! also needed after a successful parse (failures and errors about rule names point at it), and is
//! found by looking for its `name:` key in the text.

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::policy::{Location, Reason, Verdict};

mod locate;

use locate::case_starts;

/// What a case is sent as when it names no method.
pub const DEFAULT_METHOD: &str = "GET";
/// What a case is sent as when it names no path.
pub const DEFAULT_PATH: &str = "/";

/// A parsed test file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestFile {
    /// The file's name, as given by the user.
    pub name: String,
    /// The rules to test, as written (relative to the test file's directory); `--rules` overrides it.
    pub rules: Option<String>,
    /// The cases, in file order. Never empty; names are unique.
    pub cases: Vec<TestCase>,
}

/// One request and what the rules are expected to decide about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestCase {
    /// Unique in its file.
    pub name: String,
    /// The caller's SPIFFE ID; empty for a caller without identity.
    pub principal: String,
    /// The HTTP `:authority`, or with `tcp` the destination (`destination.service`).
    pub host: Option<String>,
    /// The TLS SNI: alone, a TCP check; with `host`, the SNI an HTTP check carries.
    pub sni: Option<String>,
    /// The port the gateway received the request on.
    pub port: Option<u16>,
    /// HTTP method; HTTP cases only.
    pub method: Option<String>,
    /// HTTP path; HTTP cases only.
    pub path: Option<String>,
    /// A TCP (network filter) check even though `host` is given.
    pub tcp: bool,
    /// What the rules must decide.
    pub expect: Expectation,
    /// Where the case is written: its `name` key.
    pub location: Location,
}

/// What a case expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expectation {
    /// Allow or deny.
    pub decision: Verdict,
    /// The reason code; not checked when absent.
    pub reason: Option<Reason>,
    /// The deciding rule's name; not checked when absent, and `""` for "no rule decided".
    pub rule: Option<String>,
}

/// A test file that cannot be run, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct InvalidTestFile {
    /// Where the mistake is.
    pub location: Location,
    /// What is wrong.
    pub message: String,
}

// === impl TestFile ===

impl TestFile {
    /// Reads the test file `name` whose text is `text`.
    pub fn parse(name: &str, text: &str) -> Result<Self, InvalidTestFile> {
        let at = |line, column| Location {
            file: name.to_owned(),
            line,
            column,
        };
        // YAML allows a byte-order mark; the parser does not.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return Err(InvalidTestFile {
                location: at(1, 1),
                message: "empty test file: it needs `cases:`".to_owned(),
            });
        }
        let raw: RawTestFile = yaml_serde::from_str(text).map_err(|error| {
            let (line, column) = error.location().map_or((1, 1), |l| (l.line(), l.column()));
            // The message repeats the location at its end; keep just the cause.
            let message = error.to_string();
            let message = message
                .rsplit_once(" at line ")
                .map_or(message.as_str(), |(cause, _)| cause)
                .to_owned();
            InvalidTestFile {
                location: at(line, column),
                message,
            }
        })?;
        let RawTestFile { rules, cases } = raw;
        let starts = case_starts(text, cases.iter().map(|case| case.name.as_str()));
        let cases = cases
            .into_iter()
            .zip(starts)
            .map(|(case, (line, column))| case.located(at(line, column)))
            .collect();
        Ok(Self {
            name: name.to_owned(),
            rules,
            cases,
        })
    }
}

/// The top level of a test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTestFile {
    rules: Option<String>,
    #[serde(deserialize_with = "cases")]
    cases: Vec<ParsedCase>,
}

/// A case as written, before it is checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    #[serde(default)]
    principal: Option<String>,
    host: Option<String>,
    sni: Option<String>,
    port: Option<u16>,
    method: Option<String>,
    path: Option<String>,
    #[serde(default)]
    tcp: bool,
    expect: RawExpectation,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpectation {
    #[serde(deserialize_with = "decision")]
    decision: Verdict,
    #[serde(default, deserialize_with = "reason")]
    reason: Option<Reason>,
    rule: Option<String>,
}

/// A checked case whose place in the file is not known yet.
#[derive(Debug)]
struct ParsedCase {
    name: String,
    principal: String,
    host: Option<String>,
    sni: Option<String>,
    port: Option<u16>,
    method: Option<String>,
    path: Option<String>,
    tcp: bool,
    expect: Expectation,
}

impl ParsedCase {
    fn located(self, location: Location) -> TestCase {
        let Self {
            name,
            principal,
            host,
            sni,
            port,
            method,
            path,
            tcp,
            expect,
        } = self;
        TestCase {
            name,
            principal,
            host,
            sni,
            port,
            method,
            path,
            tcp,
            expect,
            location,
        }
    }
}

/// `cases:`: a non-empty sequence of cases with unique names.
fn cases<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<ParsedCase>, D::Error> {
    struct Cases;

    impl<'de> Visitor<'de> for Cases {
        type Value = Vec<ParsedCase>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of cases")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut cases = Vec::new();
            let mut names = HashSet::new();
            while let Some(case) = seq.next_element_seed(CaseSeed { seen: &names })? {
                names.insert(case.name.clone());
                cases.push(case);
            }
            if cases.is_empty() {
                return Err(de::Error::custom(
                    "no cases: a test file tests at least one",
                ));
            }
            Ok(cases)
        }
    }

    deserializer.deserialize_seq(Cases)
}

/// Reads one case, knowing the names of the cases before it. The checks run inside `visit_map`, so the
/// parser locates their errors at the case's mapping.
struct CaseSeed<'s> {
    seen: &'s HashSet<String>,
}

impl<'de> DeserializeSeed<'de> for CaseSeed<'_> {
    type Value = ParsedCase;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for CaseSeed<'_> {
    type Value = ParsedCase;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a case (name, principal, host or sni, …, expect)")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let raw = RawCase::deserialize(MapAccessDeserializer::new(map))?;
        check_case(raw, self.seen).map_err(de::Error::custom)
    }
}

/// The mistakes serde's derive cannot see: they concern several fields, or other cases.
fn check_case(raw: RawCase, seen: &HashSet<String>) -> Result<ParsedCase, String> {
    let RawCase {
        name,
        principal,
        host,
        sni,
        port,
        method,
        path,
        tcp,
        expect,
    } = raw;
    let fail = |why: String| Err(format!("case {name:?}: {why}"));
    if seen.contains(&name) {
        return fail("a case of this name is already in this file".to_owned());
    }
    if host.is_none() && sni.is_none() {
        return fail("names no destination: give `host` or `sni`".to_owned());
    }
    // As `explain` reads a request: `sni` alone is a TCP check.
    let http = !tcp && host.is_some();
    if !http && (method.is_some() || path.is_some()) {
        return fail(
            "`method` and `path` apply to HTTP checks only, and this is a TCP one".to_owned(),
        );
    }
    let RawExpectation {
        decision,
        reason,
        rule,
    } = expect;
    if let Some(reason) = reason {
        if reason.verdict() != decision {
            return fail(format!(
                "expects decision {} with reason {}, which always {}",
                decision.as_str(),
                reason.as_str(),
                reason.verdict().as_str()
            ));
        }
        let decided_by_rule = matches!(reason, Reason::AllowedByRule | Reason::DeniedByRule);
        match rule.as_deref() {
            Some("") if decided_by_rule => {
                return fail(format!(
                    "expects reason {} with no rule (`rule: \"\"`), but that reason always has one",
                    reason.as_str()
                ));
            }
            Some(rule) if !rule.is_empty() && !decided_by_rule => {
                return fail(format!(
                    "expects rule {rule:?} with reason {}, which no rule gives",
                    reason.as_str()
                ));
            }
            _ => {}
        }
    }
    Ok(ParsedCase {
        name,
        principal: principal.unwrap_or_default(),
        host,
        sni,
        port,
        method,
        path,
        tcp,
        expect: Expectation {
            decision,
            reason,
            rule,
        },
    })
}

/// A code written in the file as one of a fixed set of spellings (`allow`, `no_matching_rule`).
struct Code<T: 'static> {
    all: &'static [T],
    spelling: fn(&T) -> &'static str,
    what: &'static str,
}

impl<T: Copy> Visitor<'_> for Code<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {}", self.what)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        self.all
            .iter()
            .find(|code| (self.spelling)(code) == text)
            .copied()
            .ok_or_else(|| {
                let known: Vec<&str> = self.all.iter().map(self.spelling).collect();
                E::custom(format!(
                    "unknown {} {text:?}, expected one of: {}",
                    self.what,
                    known.join(", ")
                ))
            })
    }
}

/// Decisions are spelled as in decision logs and metrics: `allow`, `deny`.
fn decision<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Verdict, D::Error> {
    // Inside `deserialize_str`, so the parser locates an unknown code at the value.
    deserializer.deserialize_str(Code {
        all: &Verdict::ALL,
        spelling: |verdict| verdict.as_str(),
        what: "decision",
    })
}

/// Reasons are the codes of [`Reason::ALL`].
fn reason<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Reason>, D::Error> {
    deserializer
        .deserialize_str(Code {
            all: &Reason::ALL,
            spelling: |reason| reason.as_str(),
            what: "reason",
        })
        .map(Some)
}
