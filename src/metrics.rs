//! Prometheus metrics: every name and label key is spelled once, here; the rest of the crate calls the
//! `record_*` functions. Labels only take values from bounded sets (decisions, reason codes, protocols,
//! rule names): never the host, principal or path of a request.
#![allow(clippy::disallowed_macros)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use metrics::{
    Counter, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};

use crate::policy::{Decision, Policy, Protocol, Reason, Rule, Verdict};

/// Checks answered, by decision, reason code and protocol.
pub const CHECKS_TOTAL: &str = "egress_authz_checks_total";
/// Server time per Check, seconds.
pub const CHECK_DURATION_SECONDS: &str = "egress_authz_check_duration_seconds";
/// Rule matches (the deciding rule, and the dry-run rule reported), by rule, action and dry-run flag.
pub const RULE_MATCHES_TOTAL: &str = "egress_authz_rule_matches_total";
/// Checks where dry-run rules would have decided differently, by dry-run rule and would-be decision.
pub const DRY_RUN_TOTAL: &str = "egress_authz_dry_run_total";
/// Reload attempts that changed something or failed, by result.
pub const RELOADS_TOTAL: &str = "egress_authz_reloads_total";
/// Rules in the live rule set.
pub const RULES: &str = "egress_authz_rules";
/// Unix time of the last successful load.
pub const CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS: &str =
    "egress_authz_config_last_reload_success_timestamp_seconds";
/// Log lines that could not be written to stderr (a closed pipe, a full disk) and were dropped.
pub const LOG_WRITE_ERRORS_TOTAL: &str = "egress_authz_log_write_errors_total";
/// 1 unless the rules on disk are currently rejected (while `/rules` shows a `last_reload_error`).
/// Written by [`render`], not through the recorder (see there).
pub const CONFIG_LAST_RELOAD_SUCCESSFUL: &str = "egress_authz_config_last_reload_successful";
/// Unix time the process started (taken when its metrics come up, just after the first rule load): a
/// restart (a crash, an OOM kill) shows as a new value. The name Prometheus client libraries use, so
/// restart alerts written for other services apply.
pub const PROCESS_START_TIME_SECONDS: &str = "process_start_time_seconds";
/// Checks whose client reset the stream before sending its message (an Envoy timeout, typically).
pub const CHECKS_ABANDONED_TOTAL: &str = "egress_authz_checks_abandoned_total";
/// Log lines dropped because the queue to the log thread was full. Written by [`render`].
pub const LOG_LINES_DROPPED_TOTAL: &str = "egress_authz_log_lines_dropped_total";
/// Always 1, labelled with the live rule set's SHA-256, so a rollout can be seen to have landed.
/// Written by [`render`], not through the recorder (see there).
pub const CONFIG_INFO: &str = "egress_authz_config_info";

const LABEL_DECISION: &str = "decision";
const LABEL_REASON: &str = "reason";
const LABEL_PROTOCOL: &str = "protocol";
const LABEL_RULE: &str = "rule";
const LABEL_ACTION: &str = "action";
const LABEL_DRY_RUN: &str = "dry_run";
const LABEL_WOULD: &str = "would";
const LABEL_RESULT: &str = "result";
const LABEL_SHA256: &str = "sha256";

/// Histogram buckets for a decision that takes microseconds, up to a slow 10 ms.
const DURATION_BUCKETS: &[f64] = &[
    0.000_002, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001,
    0.002_5, 0.005, 0.01,
];

static RULE_METRICS: AtomicBool = AtomicBool::new(true);

/// Handles for the series every check touches, resolved once per label set, so recording a check
/// neither builds a key (a `Vec` of labels) nor looks it up in the recorder's registry (a sharded
/// lock). Set by `install`; without it (unit tests with a local recorder) the macros are used.
#[derive(Debug)]
struct CheckHandles {
    /// Indexed by `[verdict][reason][protocol]`; each handle is resolved on first use (the series
    /// themselves are pre-registered at zero by `describe`).
    checks: [[[OnceLock<Counter>; 2]; Reason::ALL.len()]; 2],
    duration: Histogram,
}

static CHECK_HANDLES: OnceLock<CheckHandles> = OnceLock::new();

fn checks_counter(verdict: Verdict, reason: Reason, protocol: Protocol) -> Counter {
    counter!(
        CHECKS_TOTAL,
        LABEL_DECISION => verdict.as_str(),
        LABEL_REASON => reason.as_str(),
        LABEL_PROTOCOL => protocol.as_str()
    )
}

/// Installs the global Prometheus recorder and describes every metric.
pub fn install(rule_metrics: bool) -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(CHECK_DURATION_SECONDS.to_owned()),
            DURATION_BUCKETS,
        )?
        .install_recorder()?;
    RULE_METRICS.store(rule_metrics, Ordering::Relaxed);
    describe();
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    gauge!(PROCESS_START_TIME_SECONDS).set(started.as_secs_f64());
    let _ = CHECK_HANDLES.set(CheckHandles {
        checks: std::array::from_fn(|_| {
            std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new()))
        }),
        duration: histogram!(CHECK_DURATION_SECONDS),
    });
    Ok(handle)
}

/// Registers help text and units with the current recorder.
pub fn describe() {
    describe_counter!(
        CHECKS_TOTAL,
        Unit::Count,
        "Checks answered, by decision, reason code and protocol"
    );
    describe_histogram!(
        CHECK_DURATION_SECONDS,
        Unit::Seconds,
        "Server time spent deciding one Check"
    );
    describe_counter!(
        RULE_MATCHES_TOTAL,
        Unit::Count,
        "Checks decided by each rule (and dry-run rules reported)"
    );
    describe_counter!(
        DRY_RUN_TOTAL,
        Unit::Count,
        "Checks where dry-run rules would have decided differently"
    );
    describe_counter!(
        RELOADS_TOTAL,
        Unit::Count,
        "Rule reloads that applied a change or failed"
    );
    describe_counter!(
        LOG_WRITE_ERRORS_TOTAL,
        Unit::Count,
        "Log lines dropped because stderr could not be written"
    );
    counter!(LOG_WRITE_ERRORS_TOTAL).absolute(0);
    describe_counter!(
        CHECKS_ABANDONED_TOTAL,
        Unit::Count,
        "Checks whose client reset the stream before sending the message (an Envoy timeout, typically)"
    );
    counter!(CHECKS_ABANDONED_TOTAL).absolute(0);
    describe_gauge!(
        PROCESS_START_TIME_SECONDS,
        Unit::Seconds,
        "Unix time the process started"
    );
    describe_gauge!(RULES, Unit::Count, "Rules in the live rule set");
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "Unix time of the last successful rule load"
    );
    // Pre-register the check counters so dashboards see zeros, not gaps, before the first check.
    for protocol in [Protocol::Http, Protocol::Tcp] {
        // A shed check is never read, so it never has a protocol.
        for reason in Reason::ALL.into_iter().filter(|r| *r != Reason::Overloaded) {
            let decision = reason.verdict().as_str();
            counter!(CHECKS_TOTAL, LABEL_DECISION => decision, LABEL_REASON => reason.as_str(), LABEL_PROTOCOL => protocol.as_str()).absolute(0);
        }
    }
    for reason in UNREAD_REASONS {
        unread_counter(reason).absolute(0);
    }
    for result in ["success", "failure"] {
        counter!(RELOADS_TOTAL, LABEL_RESULT => result).absolute(0);
    }
}

/// The `protocol` label of checks refused before their message was read.
const PROTOCOL_UNKNOWN: &str = "unknown";
/// Checks refused before their message was read, by reason.
const UNREAD_REASONS: [Reason; 2] = [Reason::Overloaded, Reason::InvalidRequest];

fn unread_counter(reason: Reason) -> Counter {
    counter!(
        CHECKS_TOTAL,
        LABEL_DECISION => reason.verdict().as_str(),
        LABEL_REASON => reason.as_str(),
        LABEL_PROTOCOL => PROTOCOL_UNKNOWN
    )
}

/// Counts a check refused before its message was read: shed (`overloaded`) or with an unreadable
/// gRPC frame (`invalid_request`). Cheap, since a flood of them is what shedding is for.
pub fn record_unread(reason: Reason) {
    static HANDLES: OnceLock<[Counter; UNREAD_REASONS.len()]> = OnceLock::new();
    // Cached handles only with the installed recorder (see `CheckHandles`).
    let cached = CHECK_HANDLES
        .get()
        .and(UNREAD_REASONS.iter().position(|r| *r == reason));
    match cached {
        Some(index) => {
            HANDLES.get_or_init(|| UNREAD_REASONS.map(unread_counter))[index].increment(1)
        }
        None => unread_counter(reason).increment(1),
    }
}

/// Records one answered check; `decision` is `policy`'s.
pub fn record_check(
    policy: &Policy,
    decision: &Decision<'_>,
    protocol: Protocol,
    elapsed: Duration,
) {
    let (verdict, reason) = (decision.verdict, decision.reason);
    if let Some(handles) = CHECK_HANDLES.get() {
        // Fieldless enums: the casts are their declaration indexes, within the arrays' bounds.
        handles.checks[verdict as usize][reason as usize][protocol as usize]
            .get_or_init(|| checks_counter(verdict, reason, protocol))
            .increment(1);
        handles.duration.record(elapsed.as_secs_f64());
    } else {
        checks_counter(verdict, reason, protocol).increment(1);
        histogram!(CHECK_DURATION_SECONDS).record(elapsed.as_secs_f64());
    }
    if RULE_METRICS.load(Ordering::Relaxed) {
        if let Some(rule) = decision.rule {
            record_rule_match(policy, rule, false);
        }
        if let Some(dry_run) = decision.dry_run {
            record_rule_match(policy, dry_run.rule, true);
        }
    }
    if let Some(dry_run) = decision.dry_run.filter(|_| decision.dry_run_disagrees()) {
        counter!(DRY_RUN_TOTAL, LABEL_RULE => dry_run.rule.name.clone(), LABEL_WOULD => dry_run.verdict.as_str())
            .increment(1);
    }
}

fn rule_match_counter(rule: &Rule, dry_run: bool) -> Counter {
    counter!(
        RULE_MATCHES_TOTAL,
        LABEL_RULE => rule.name.clone(),
        LABEL_ACTION => rule.action.as_str(),
        LABEL_DRY_RUN => if dry_run { "true" } else { "false" }
    )
}

/// This thread's `egress_authz_rule_matches_total` handles for one rule set, by rule position and dry-run
/// flag. Resolving a labelled counter copies the rule name into a key and looks the key up in the
/// recorder's registry; a handle is resolved once per rule, thread and rule set instead. Thread-local, so
/// recording takes no lock; it holds at most two handles per rule that decided a check on this thread.
#[derive(Default)]
struct RuleMatchHandles {
    /// The rule set the handles belong to. Equal digests mean equal rules in equal order, so a position
    /// names the same rule; any other rule set starts afresh.
    digest: String,
    by_position: HashMap<(usize, bool), Counter>,
}

thread_local! {
    static RULE_MATCH_HANDLES: RefCell<RuleMatchHandles> = RefCell::default();
}

fn record_rule_match(policy: &Policy, rule: &Rule, dry_run: bool) {
    // Without the installed recorder (unit tests with a local one), handles must not outlive it.
    let position = policy
        .rule_position(rule)
        .filter(|_| CHECK_HANDLES.get().is_some());
    let Some(position) = position else {
        rule_match_counter(rule, dry_run).increment(1);
        return;
    };
    RULE_MATCH_HANDLES.with_borrow_mut(|handles| {
        if handles.digest != policy.digest() {
            handles.digest.clear();
            handles.digest.push_str(policy.digest());
            handles.by_position.clear();
        }
        handles
            .by_position
            .entry((position, dry_run))
            .or_insert_with(|| rule_match_counter(rule, dry_run))
            .increment(1);
    });
}

/// Records the outcome of a reload that was not a no-op.
pub fn record_reload(success: bool) {
    let result = if success { "success" } else { "failure" };
    counter!(RELOADS_TOTAL, LABEL_RESULT => result).increment(1);
}

/// Counts a check whose client reset the stream before its message arrived.
pub fn record_abandoned_check() {
    counter!(CHECKS_ABANDONED_TOTAL).increment(1);
}

/// Counts a log line that could not be written. Lines that fail before the recorder is installed (only
/// startup errors, after which the process exits) are not counted.
pub fn record_log_write_error() {
    counter!(LOG_WRITE_ERRORS_TOTAL).increment(1);
}

/// Records the live rule set: its size and when it was loaded (its digest is rendered by [`render`]).
pub fn record_rule_set(rules: usize, loaded_at: SystemTime) {
    gauge!(RULES).set(rules as f64);
    let unix = loaded_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    gauge!(CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS).set(unix.as_secs_f64());
}

/// The Prometheus text for `/metrics`: the recorder's series plus `egress_authz_config_info` for the
/// live rule set and `egress_authz_config_last_reload_successful`. The info series is written here
/// rather than through the recorder because the `metrics` facade cannot delete a series: every past
/// digest would linger (as a 0), one more per reload, and `egress_authz_config_info` must name exactly
/// one rule set per process. The success flag is derived here from the status `/rules` reports
/// (`reload_failing` is its `last_error` being set), so the two cannot disagree; unlike
/// `egress_authz_reloads_total{result="failure"}`, which counts a rejected content once, it stays 0
/// for as long as the rules on disk are rejected.
pub fn render(handle: &PrometheusHandle, digest: &str, reload_failing: bool) -> String {
    let mut text = handle.render();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    // A hex digest needs no label escaping.
    let _ = write!(
        text,
        "# HELP {CONFIG_INFO} Always 1; the {LABEL_SHA256} label identifies the live rule set\n\
         # TYPE {CONFIG_INFO} gauge\n\
         {CONFIG_INFO}{{{LABEL_SHA256}=\"{digest}\"}} 1\n"
    );
    // Counted by the log writer, which cannot use the recorder (recording could log).
    let dropped = crate::telemetry::dropped_lines();
    let _ = write!(
        text,
        "# HELP {LOG_LINES_DROPPED_TOTAL} Log lines dropped because stderr did not keep up\n\
         # TYPE {LOG_LINES_DROPPED_TOTAL} counter\n\
         {LOG_LINES_DROPPED_TOTAL} {dropped}\n"
    );
    let successful = u8::from(!reload_failing);
    let _ = write!(
        text,
        "# HELP {CONFIG_LAST_RELOAD_SUCCESSFUL} 0 while the rules on disk are rejected; the last good rules serve\n\
         # TYPE {CONFIG_LAST_RELOAD_SUCCESSFUL} gauge\n\
         {CONFIG_LAST_RELOAD_SUCCESSFUL} {successful}\n"
    );
    text
}
