//! Prometheus metrics: every name and label key is spelled once, here; the rest of the crate calls the
//! `record_*` functions. Labels only take values from bounded sets (decisions, reason codes, protocols,
//! rule names): never the host, principal or path of a request.
#![allow(clippy::disallowed_macros)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};

use crate::policy::{Decision, Protocol, Reason};

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
/// Always 1, labelled with the live rule set's SHA-256, so a rollout can be seen to have landed.
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
    0.000_002, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01,
];

static RULE_METRICS: AtomicBool = AtomicBool::new(true);

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
    Ok(handle)
}

/// Registers help text and units with the current recorder.
pub fn describe() {
    describe_counter!(CHECKS_TOTAL, Unit::Count, "Checks answered, by decision, reason code and protocol");
    describe_histogram!(CHECK_DURATION_SECONDS, Unit::Seconds, "Server time spent deciding one Check");
    describe_counter!(RULE_MATCHES_TOTAL, Unit::Count, "Checks decided by each rule (and dry-run rules reported)");
    describe_counter!(DRY_RUN_TOTAL, Unit::Count, "Checks where dry-run rules would have decided differently");
    describe_counter!(RELOADS_TOTAL, Unit::Count, "Rule reloads that applied a change or failed");
    describe_gauge!(RULES, Unit::Count, "Rules in the live rule set");
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "Unix time of the last successful rule load"
    );
    describe_gauge!(CONFIG_INFO, "Always 1; the sha256 label identifies the live rule set");
    // Pre-register the check counters so dashboards see zeros, not gaps, before the first check.
    for protocol in [Protocol::Http, Protocol::Tcp] {
        for reason in Reason::ALL {
            let decision = match reason {
                Reason::AllowedByRule | Reason::DefaultAllow => "allow",
                _ => "deny",
            };
            counter!(CHECKS_TOTAL, LABEL_DECISION => decision, LABEL_REASON => reason.as_str(), LABEL_PROTOCOL => protocol.as_str()).absolute(0);
        }
    }
    for result in ["success", "failure"] {
        counter!(RELOADS_TOTAL, LABEL_RESULT => result).absolute(0);
    }
}

/// Records one answered check.
pub fn record_check(decision: &Decision<'_>, protocol: Protocol, elapsed: Duration) {
    counter!(
        CHECKS_TOTAL,
        LABEL_DECISION => decision.verdict.as_str(),
        LABEL_REASON => decision.reason.as_str(),
        LABEL_PROTOCOL => protocol.as_str()
    )
    .increment(1);
    histogram!(CHECK_DURATION_SECONDS).record(elapsed.as_secs_f64());
    if RULE_METRICS.load(Ordering::Relaxed) {
        if let Some(rule) = decision.rule {
            counter!(
                RULE_MATCHES_TOTAL,
                LABEL_RULE => rule.name.clone(),
                LABEL_ACTION => rule.action.as_str(),
                LABEL_DRY_RUN => "false"
            )
            .increment(1);
        }
        if let Some(dry_run) = decision.dry_run {
            counter!(
                RULE_MATCHES_TOTAL,
                LABEL_RULE => dry_run.rule.name.clone(),
                LABEL_ACTION => dry_run.rule.action.as_str(),
                LABEL_DRY_RUN => "true"
            )
            .increment(1);
        }
    }
    if let Some(dry_run) = decision.dry_run.filter(|_| decision.dry_run_disagrees()) {
        counter!(DRY_RUN_TOTAL, LABEL_RULE => dry_run.rule.name.clone(), LABEL_WOULD => dry_run.verdict.as_str())
            .increment(1);
    }
}

/// Records the outcome of a reload that was not a no-op.
pub fn record_reload(success: bool) {
    let result = if success { "success" } else { "failure" };
    counter!(RELOADS_TOTAL, LABEL_RESULT => result).increment(1);
}

/// Records the live rule set: its size, its digest and when it was loaded.
pub fn record_rule_set(digest: &str, rules: usize, loaded_at: SystemTime) {
    gauge!(RULES).set(rules as f64);
    let unix = loaded_at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    gauge!(CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS).set(unix.as_secs_f64());
    // The metrics facade cannot delete a series, so the previous digest's series drops to 0 and the
    // live one is 1: `egress_authz_config_info == 1` always names exactly the live rule set.
    static LAST: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(previous) = last.take().filter(|p| p != digest) {
        gauge!(CONFIG_INFO, LABEL_SHA256 => previous).set(0.0);
    }
    gauge!(CONFIG_INFO, LABEL_SHA256 => digest.to_owned()).set(1.0);
    *last = Some(digest.to_owned());
}
