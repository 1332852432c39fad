//! Recorded traffic: reading traffic inventories and decision logs into flows ([`read_recorded`]), and
//! replaying every flow under both rule sets ([`replay`]).
//!
//! A file is a traffic inventory when it is one JSON document naming `"format": "egress-authz-traffic"`,
//! else a decision log: the server's `--log-format json` lines, of which only the decision events are
//! read. Checks refused before they were read (reason `invalid_request` or `overloaded`, protocol
//! `unknown` in an inventory) carry nothing to replay: they are counted and skipped.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use super::probe::{Outcome, Probe};
use crate::decision_log::TARGET;
use crate::policy::{Policy, Protocol, Reason};
use crate::traffic::{FORMAT, InventoryDocument, InventoryError};

/// The message of a decision event (see `decision_log`): other events share its target.
const DECISION_MESSAGE: &str = "Decision";

/// How far into a file to look for the inventory's `format` field, which it writes first.
const FORMAT_SNIFF_BYTES: usize = 4096;

/// Which kind of file recorded the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordedKind {
    /// A traffic inventory (`/traffic`, `--traffic-file`).
    Inventory,
    /// Decision-log JSON lines.
    DecisionLog,
}

impl RecordedKind {
    /// How the report names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inventory => "inventory",
            Self::DecisionLog => "decision-log",
        }
    }
}

/// One `--against` file, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedFile {
    /// The path as given.
    pub name: String,
    /// Inventory or decision log.
    pub kind: RecordedKind,
    /// Each replayable flow with its number of checks.
    pub(super) flows: Vec<(Probe, u64)>,
    /// Log lines that are other events than decisions.
    pub skipped_events: u64,
    /// Flows (inventory entries or decision lines) refused before they were read.
    pub not_replayable: u64,
}

/// Why an `--against` file could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordedError {
    /// A traffic inventory that does not parse.
    #[error("{file}: {source}")]
    Inventory {
        /// The path as given.
        file: String,
        /// What is wrong.
        source: InventoryError,
    },
    /// A decision-log line that cannot be read.
    #[error("{file}:{line}: {problem}")]
    Line {
        /// The path as given.
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
}

/// Reads an `--against` file. `trust_domain` names the callers of an inventory that lists no trust
/// domain of its own (the old rule set's first).
pub fn read_recorded(
    name: &str,
    bytes: &[u8],
    trust_domain: &str,
) -> Result<RecordedFile, RecordedError> {
    if is_inventory(bytes) {
        let document =
            InventoryDocument::parse(bytes).map_err(|source| RecordedError::Inventory {
                file: name.to_owned(),
                source,
            })?;
        Ok(from_inventory(name, &document, trust_domain))
    } else {
        from_decision_log(name, bytes)
    }
}

/// An inventory is one JSON document with a `format` field; a decision log is a JSON object per line.
/// A file that does not parse whole (a cut-off inventory, or a log of several lines) is a log when its
/// first line is JSON on its own, and an inventory when it starts like one.
fn is_inventory(bytes: &[u8]) -> bool {
    if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
        return value.get("format").is_some();
    }
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(FORMAT_SNIFF_BYTES)]);
    let first_line = text.lines().find(|line| !line.trim().is_empty());
    if first_line.is_some_and(|line| serde_json::from_str::<Value>(line).is_ok()) {
        return false;
    }
    text.trim_start().starts_with('{') && text.contains(&format!("\"{FORMAT}\""))
}

fn from_inventory(name: &str, document: &InventoryDocument, trust_domain: &str) -> RecordedFile {
    let trust_domain = document
        .trust_domains
        .first()
        .map_or(trust_domain, String::as_str);
    let mut file = RecordedFile {
        name: name.to_owned(),
        kind: RecordedKind::Inventory,
        flows: Vec::new(),
        skipped_events: 0,
        not_replayable: 0,
    };
    for entry in &document.entries {
        let reason = entry.reason_code();
        let protocol = entry.protocol_kind();
        let Some(protocol) = protocol.filter(|_| !is_refusal(reason)) else {
            file.not_replayable += 1;
            continue;
        };
        // The inventory records no method or path: replayed empty, as `suggest --rules` does, so a
        // rule that needs them does not match.
        let probe = Probe {
            principal: entry
                .caller()
                .map(|(ns, sa)| format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}"))
                .unwrap_or_default(),
            http: protocol == Protocol::Http,
            host: entry.host.clone(),
            port: entry.port,
            method: String::new(),
            path: String::new(),
            sni_mismatch: reason == Some(Reason::SniHostMismatch),
        };
        file.flows.push((probe, entry.count));
    }
    file
}

/// Refused before the check was read: nothing in it to replay.
fn is_refusal(reason: Option<Reason>) -> bool {
    matches!(reason, Some(Reason::InvalidRequest | Reason::Overloaded))
}

fn from_decision_log(name: &str, bytes: &[u8]) -> Result<RecordedFile, RecordedError> {
    let mut file = RecordedFile {
        name: name.to_owned(),
        kind: RecordedKind::DecisionLog,
        flows: Vec::new(),
        skipped_events: 0,
        not_replayable: 0,
    };
    for (index, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let located = |problem: String| RecordedError::Line {
            file: name.to_owned(),
            line: index + 1,
            problem,
        };
        let line = std::str::from_utf8(line)
            .map_err(|_| located("not UTF-8 text".to_owned()))?
            .trim();
        if line.is_empty() {
            continue;
        }
        let event: Value = serde_json::from_str(line).map_err(|error| {
            located(format!(
                "not a JSON log line (expected --log-format json): {error}"
            ))
        })?;
        // `fields` holds the event's fields unless the log was written with them flattened.
        let fields = event.get("fields").unwrap_or(&event);
        let is_decision = event.get("target").and_then(Value::as_str) == Some(TARGET)
            && fields.get("message").and_then(Value::as_str) == Some(DECISION_MESSAGE);
        if !is_decision {
            file.skipped_events += 1;
            continue;
        }
        match decision_probe(fields).map_err(located)? {
            Some(probe) => file.flows.push((probe, 1)),
            None => file.not_replayable += 1,
        }
    }
    Ok(file)
}

/// The probe a decision event describes, `None` for a check refused before it was read.
fn decision_probe(fields: &Value) -> Result<Option<Probe>, String> {
    let text = |field: &str| -> Result<Option<&str>, String> {
        match fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(value)) => Ok(Some(value)),
            Some(other) => Err(format!(
                "decision event field {field:?} is not a string: {other}"
            )),
        }
    };
    let required =
        |field: &str| text(field)?.ok_or_else(|| format!("decision event without field {field:?}"));
    let reason_text = required("reason")?;
    let reason = Reason::ALL.into_iter().find(|r| r.as_str() == reason_text);
    if reason.is_none() {
        return Err(format!(
            "decision event with unknown reason {reason_text:?}"
        ));
    }
    if is_refusal(reason) {
        return Ok(None);
    }
    let http = match required("protocol")? {
        "http" => true,
        "tcp" => false,
        other => return Err(format!("decision event with unknown protocol {other:?}")),
    };
    let port = match fields.get("port") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| format!("decision event field \"port\" is not a port: {value}"))?,
        ),
    };
    Ok(Some(Probe {
        principal: text("principal")?.unwrap_or_default().to_owned(),
        http,
        host: required("host")?.to_owned(),
        port,
        method: text("method")?.unwrap_or_default().to_owned(),
        path: text("path")?.unwrap_or_default().to_owned(),
        sni_mismatch: reason == Some(Reason::SniHostMismatch),
    }))
}

/// What was read from one `--against` file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SourceSummary {
    /// The path as given.
    pub file: String,
    /// `inventory` or `decision-log`.
    pub kind: RecordedKind,
    /// Replayable flows read (inventory entries or decision lines).
    pub flows: usize,
    /// The checks they stand for.
    pub checks: u64,
    /// Log lines that are other events than decisions.
    pub skipped_events: u64,
    /// Flows refused before they were read, not replayable.
    pub not_replayable: u64,
}

/// A replayed flow whose decision or deciding rule changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChangedFlow {
    /// The caller's SPIFFE ID, or `<none>`.
    pub caller: String,
    /// `http` or `tcp`.
    pub protocol: &'static str,
    /// The destination host, as recorded.
    pub host: String,
    /// The destination port, when recorded.
    pub port: Option<u16>,
    /// The HTTP method, when recorded.
    pub method: Option<String>,
    /// The HTTP path (without query), when recorded.
    pub path: Option<String>,
    /// The recorded SNI named another host than the `:authority`.
    pub sni_mismatch: bool,
    /// Checks recorded for this flow, over every file.
    pub checks: u64,
    /// The decision under the old rules.
    pub old: Outcome,
    /// The decision under the new rules.
    pub new: Outcome,
}

/// The flows of one kind of change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowGroup {
    /// Distinct flows.
    pub flows: usize,
    /// Checks they stand for.
    pub checks: u64,
    /// Distinct callers, sorted.
    pub callers: Vec<String>,
    /// The flows, sorted by caller, protocol, host, port, method and path.
    pub entries: Vec<ChangedFlow>,
}

impl FlowGroup {
    fn push(&mut self, flow: ChangedFlow) {
        self.flows += 1;
        self.checks = self.checks.saturating_add(flow.checks);
        self.entries.push(flow);
    }

    fn finish(&mut self) {
        let callers: BTreeSet<&str> = self.entries.iter().map(|f| f.caller.as_str()).collect();
        self.callers = callers.into_iter().map(str::to_owned).collect();
    }
}

/// Recorded traffic replayed under both rule sets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RecordedDiff {
    /// Each file read.
    pub sources: Vec<SourceSummary>,
    /// Distinct flows replayed (equal flows of several files count once).
    pub flows: usize,
    /// Checks they stand for.
    pub checks: u64,
    /// Allowed before, denied after: these break someone.
    pub newly_denied: FlowGroup,
    /// Denied before, allowed after: these widen access.
    pub newly_allowed: FlowGroup,
    /// Decided alike, by another rule (or by the default instead of a rule, or the reverse).
    pub rule_changed: FlowGroup,
}

/// Replays every flow of `files` under `old` and `new`.
pub(super) fn replay(files: &[RecordedFile], old: &Policy, new: &Policy) -> RecordedDiff {
    let mut merged: BTreeMap<&Probe, u64> = BTreeMap::new();
    let mut diff = RecordedDiff::default();
    for file in files {
        let mut checks = 0_u64;
        for (probe, count) in &file.flows {
            checks = checks.saturating_add(*count);
            let total = merged.entry(probe).or_insert(0);
            *total = total.saturating_add(*count);
        }
        diff.sources.push(SourceSummary {
            file: file.name.clone(),
            kind: file.kind,
            flows: file.flows.len(),
            checks,
            skipped_events: file.skipped_events,
            not_replayable: file.not_replayable,
        });
    }
    diff.flows = merged.len();
    for (probe, checks) in merged {
        diff.checks = diff.checks.saturating_add(checks);
        let (before, after) = (probe.decide(old), probe.decide(new));
        let group = match (before.is_allow(), after.is_allow()) {
            (true, false) => &mut diff.newly_denied,
            (false, true) => &mut diff.newly_allowed,
            _ if before.rule != after.rule => &mut diff.rule_changed,
            _ => continue,
        };
        group.push(ChangedFlow {
            caller: probe.caller().to_owned(),
            protocol: probe.protocol().as_str(),
            host: probe.host.clone(),
            port: probe.port,
            method: (!probe.method.is_empty()).then(|| probe.method.clone()),
            path: (!probe.path.is_empty()).then(|| probe.path.clone()),
            sni_mismatch: probe.sni_mismatch,
            checks,
            old: before,
            new: after,
        });
    }
    for group in [
        &mut diff.newly_denied,
        &mut diff.newly_allowed,
        &mut diff.rule_changed,
    ] {
        group.finish();
    }
    diff
}
