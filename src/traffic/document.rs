//! The inventory as a document: what `GET /traffic` serves, what `--traffic-file` holds and what
//! `suggest --from` reads. One format for all three, so a saved `/traffic` response is a valid input.
//!
//! The format is a contract, documented in the README ("Traffic inventory"): `format` names it,
//! `version` changes whenever a field changes meaning or is added, and readers refuse versions they do
//! not know instead of guessing.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::policy::{Protocol, Reason, Verdict};

/// The value of `format`, which tells an inventory from any other JSON.
pub const FORMAT: &str = "egress-authz-traffic";
/// The version this build writes and reads.
pub const VERSION: u64 = 1;
/// The namespace and service account of a caller without a trusted identity.
pub const NO_CALLER: &str = "<none>";
/// The host of a check that named no valid destination host (none, or not a DNS name or IP literal).
pub const NO_HOST: &str = "<invalid>";
/// The protocol of a check refused before its message was read.
pub const PROTOCOL_UNKNOWN: &str = "unknown";

/// A traffic inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryDocument {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`] when written by this build.
    pub version: u64,
    /// When the document was produced (RFC 3339, UTC, seconds).
    pub generated_at: String,
    /// The trust domains of the rules live when it was produced: where the callers' identities come
    /// from, so a rule file suggested from it trusts the same ones.
    pub trust_domains: Vec<String>,
    /// The server's `--traffic-max-entries`.
    pub max_entries: u64,
    /// Checks whose flow was not recorded because the inventory was full.
    pub overflow: u64,
    /// One entry per flow key, sorted by key.
    pub entries: Vec<FlowEntry>,
}

/// One flow key and its counts. The key is everything but `count`, `first_seen` and `last_seen`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowEntry {
    /// The caller's namespace from its trusted identity, or [`NO_CALLER`].
    pub namespace: String,
    /// The caller's service account from its trusted identity, or [`NO_CALLER`].
    pub service_account: String,
    /// `http`, `tcp`, or `unknown` for a check refused before it was read.
    pub protocol: String,
    /// The destination host normalised as rules see it, or [`NO_HOST`].
    pub host: String,
    /// The destination port, when the check carried one.
    pub port: Option<u16>,
    /// `allow` or `deny`.
    pub decision: String,
    /// The reason code.
    pub reason: String,
    /// The deciding rule, when one decided.
    pub rule: Option<String>,
    /// Checks with this key.
    pub count: u64,
    /// The first such check (RFC 3339, UTC, seconds).
    pub first_seen: String,
    /// The last such check (RFC 3339, UTC, seconds).
    pub last_seen: String,
}

/// Why a document could not be read. Each message says what the file is, not only what the parser
/// saw, since the usual mistakes are a file cut off by a full disk and the wrong file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InventoryError {
    /// Nothing in it.
    #[error("the file is empty, not a traffic inventory")]
    Empty,
    /// JSON that ends early.
    #[error("the traffic inventory is cut off (truncated?): {0}")]
    Truncated(String),
    /// Not JSON at all.
    #[error("not a traffic inventory (not JSON): {0}")]
    NotJson(String),
    /// JSON, but not an inventory.
    #[error("not an egress-authz traffic inventory: no \"format\": \"{FORMAT}\"")]
    Foreign,
    /// An inventory of a version this build does not know.
    #[error("traffic inventory version {0} is not supported (this build reads version {VERSION})")]
    UnknownVersion(String),
    /// An inventory whose fields are wrong.
    #[error("invalid traffic inventory: {0}")]
    Invalid(String),
    /// A valid inventory that records no flow.
    #[error("the traffic inventory records no flow")]
    NoFlows,
}

impl InventoryDocument {
    /// Reads a document, checking its format and version first so a foreign file or a future version
    /// is named as such rather than reported as a missing field.
    pub fn parse(bytes: &[u8]) -> Result<Self, InventoryError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(InventoryError::Empty);
        }
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            if e.is_eof() {
                InventoryError::Truncated(e.to_string())
            } else {
                InventoryError::NotJson(e.to_string())
            }
        })?;
        if value.get("format").and_then(serde_json::Value::as_str) != Some(FORMAT) {
            return Err(InventoryError::Foreign);
        }
        match value.get("version") {
            Some(version) if version.as_u64() == Some(VERSION) => {}
            Some(version) => return Err(InventoryError::UnknownVersion(version.to_string())),
            None => {
                return Err(InventoryError::Invalid(
                    "missing field `version`".to_owned(),
                ));
            }
        }
        let document: Self =
            serde_json::from_value(value).map_err(|e| InventoryError::Invalid(e.to_string()))?;
        document.check()?;
        Ok(document)
    }

    /// Checks what serde cannot: values from fixed sets, and times that parse.
    fn check(&self) -> Result<(), InventoryError> {
        parse_time(&self.generated_at).map_err(|e| located("generated_at", &e))?;
        for (index, entry) in self.entries.iter().enumerate() {
            entry
                .check()
                .map_err(|e| located(&format!("entries[{index}]"), &e))?;
        }
        Ok(())
    }

    /// The JSON text, pretty-printed with a final newline (a file a person may read).
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }
}

fn located(at: &str, problem: &str) -> InventoryError {
    InventoryError::Invalid(format!("{at}: {problem}"))
}

impl FlowEntry {
    fn check(&self) -> Result<(), String> {
        if self.protocol_kind().is_none() && self.protocol != PROTOCOL_UNKNOWN {
            return Err(format!("unknown protocol {:?}", self.protocol));
        }
        let reason = self
            .reason_code()
            .ok_or_else(|| format!("unknown reason {:?}", self.reason))?;
        if self.decision != reason.verdict().as_str() {
            return Err(format!(
                "decision {:?} does not go with reason {:?}",
                self.decision, self.reason
            ));
        }
        if (self.namespace == NO_CALLER) != (self.service_account == NO_CALLER) {
            return Err("namespace and service_account must both be \"<none>\" or neither".into());
        }
        if self.count == 0 {
            return Err("count is 0".into());
        }
        let first = parse_time(&self.first_seen).map_err(|e| format!("first_seen: {e}"))?;
        let last = parse_time(&self.last_seen).map_err(|e| format!("last_seen: {e}"))?;
        if last < first {
            return Err("last_seen is before first_seen".into());
        }
        Ok(())
    }

    /// The caller as `(namespace, service account)`, when it had a trusted identity.
    pub fn caller(&self) -> Option<(&str, &str)> {
        (self.namespace != NO_CALLER).then_some((&self.namespace, &self.service_account))
    }

    /// The protocol, when the check was read.
    pub fn protocol_kind(&self) -> Option<Protocol> {
        [Protocol::Http, Protocol::Tcp]
            .into_iter()
            .find(|p| p.as_str() == self.protocol)
    }

    /// The reason, when it is one this build knows.
    pub fn reason_code(&self) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == self.reason)
    }

    /// The decision.
    pub fn verdict(&self) -> Verdict {
        if self.decision == Verdict::Allow.as_str() {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }

    /// The flow key: every field but the counts and times.
    pub fn key(&self) -> FlowKeyFields<'_> {
        (
            &self.namespace,
            &self.service_account,
            &self.protocol,
            &self.host,
            self.port,
            &self.decision,
            &self.reason,
            self.rule.as_deref(),
        )
    }
}

/// A flow key's fields in entry order, which is also the order entries are sorted in.
pub type FlowKeyFields<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    Option<u16>,
    &'a str,
    &'a str,
    Option<&'a str>,
);

/// Merges documents (several replicas, several days): counts of equal keys add up, first and last
/// seen widen. The entries come out sorted by key.
pub fn merge_entries<'a>(
    documents: impl IntoIterator<Item = &'a InventoryDocument>,
) -> Vec<FlowEntry> {
    let mut merged: BTreeMap<FlowKeyFields<'a>, FlowEntry> = BTreeMap::new();
    for document in documents {
        for entry in &document.entries {
            merged
                .entry(entry.key())
                .and_modify(|seen| {
                    seen.count = seen.count.saturating_add(entry.count);
                    // RFC 3339 UTC strings of one shape order as the times do.
                    if entry.first_seen < seen.first_seen {
                        seen.first_seen.clone_from(&entry.first_seen);
                    }
                    if entry.last_seen > seen.last_seen {
                        seen.last_seen.clone_from(&entry.last_seen);
                    }
                })
                .or_insert_with(|| entry.clone());
        }
    }
    merged.into_values().collect()
}

/// Unix seconds as RFC 3339 UTC with seconds, the one shape this format writes.
pub fn format_time(unix_seconds: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_seconds)).to_string()
}

/// RFC 3339 back to unix seconds; only the shape [`format_time`] writes is accepted, so that times
/// compare as strings.
pub fn parse_time(text: &str) -> Result<u64, String> {
    let time = humantime::parse_rfc3339(text).map_err(|e| {
        format!("{text:?} is not an RFC 3339 UTC time like 2026-01-31T12:00:00Z: {e}")
    })?;
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("{text:?} is before 1970"))?
        .as_secs();
    if format_time(seconds) != text {
        return Err(format!(
            "{text:?} is not in the form 2026-01-31T12:00:00Z (UTC, whole seconds)"
        ));
    }
    Ok(seconds)
}

/// Now, in unix seconds.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(namespace: &str, host: &str, count: u64, first: u64, last: u64) -> FlowEntry {
        FlowEntry {
            namespace: namespace.to_owned(),
            service_account: "default".to_owned(),
            protocol: "http".to_owned(),
            host: host.to_owned(),
            port: Some(443),
            decision: "allow".to_owned(),
            reason: "default_allow".to_owned(),
            rule: None,
            count,
            first_seen: format_time(first),
            last_seen: format_time(last),
        }
    }

    fn document(entries: Vec<FlowEntry>) -> InventoryDocument {
        InventoryDocument {
            format: FORMAT.to_owned(),
            version: VERSION,
            generated_at: format_time(1_800_000_000),
            trust_domains: vec!["cluster.local".to_owned()],
            max_entries: 100_000,
            overflow: 0,
            entries,
        }
    }

    #[test]
    fn a_document_reads_back_as_written() {
        let written = document(vec![entry("a", "x.example.com", 3, 10, 20)]);
        assert_eq!(
            InventoryDocument::parse(written.to_json().as_bytes()),
            Ok(written)
        );
    }

    #[test]
    fn unreadable_documents_say_what_they_are() {
        let json = document(vec![entry("a", "x.example.com", 3, 10, 20)]).to_json();
        type Expectation = fn(&InventoryError) -> bool;
        let cases: [(&[u8], Expectation); 7] = [
            (b"", |e| *e == InventoryError::Empty),
            (b" \n", |e| *e == InventoryError::Empty),
            (&json.as_bytes()[..json.len() / 2], |e| {
                matches!(e, InventoryError::Truncated(_))
            }),
            (b"rules: []", |e| matches!(e, InventoryError::NotJson(_))),
            (br#"{"sha256": "ab", "rules": 3}"#, |e| {
                *e == InventoryError::Foreign
            }),
            (br#"[1, 2]"#, |e| *e == InventoryError::Foreign),
            (
                br#"{"format": "egress-authz-traffic", "version": 2}"#,
                |e| *e == InventoryError::UnknownVersion("2".to_owned()),
            ),
        ];
        for (bytes, expected) in cases {
            let error = InventoryDocument::parse(bytes).unwrap_err();
            assert!(
                expected(&error),
                "{:?}: {error:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn invalid_entries_are_located() {
        let mut bad = document(vec![
            entry("a", "x.example.com", 3, 10, 20),
            entry("b", "y.example.com", 1, 30, 20),
        ]);
        let error = InventoryDocument::parse(bad.to_json().as_bytes()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid traffic inventory: entries[1]: last_seen is before first_seen"
        );
        bad.entries[1] = entry("b", "y.example.com", 1, 10, 20);
        bad.entries[1].reason = "no_matching_rule".to_owned();
        let error = InventoryDocument::parse(bad.to_json().as_bytes()).unwrap_err();
        assert!(
            error.to_string().contains("entries[1]: decision"),
            "{error}"
        );
        let text = bad
            .to_json()
            .replace("\"count\": 1", "\"count\": 1, \"path\": \"/x\"");
        let error = InventoryDocument::parse(text.as_bytes()).unwrap_err();
        assert!(
            error.to_string().contains("unknown field `path`"),
            "{error}"
        );
    }

    #[test]
    fn merging_adds_counts_and_widens_times() {
        let one = document(vec![entry("a", "x.example.com", 3, 10, 20)]);
        let two = document(vec![
            entry("a", "x.example.com", 4, 5, 15),
            entry("a", "w.example.com", 1, 7, 7),
        ]);
        let merged = merge_entries([&one, &two]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].host, "w.example.com", "sorted by key");
        assert_eq!(merged[1].count, 7);
        assert_eq!(merged[1].first_seen, format_time(5));
        assert_eq!(merged[1].last_seen, format_time(20));
    }

    #[test]
    fn times_have_one_shape() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_time("2026-12-02T15:12:31Z"), Ok(1_796_224_351));
        assert!(parse_time("2026-12-02T15:12:31.5Z").is_err());
        assert!(parse_time("2026-12-02 15:12:31").is_err());
    }
}
