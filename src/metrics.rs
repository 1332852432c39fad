//! Prometheus metrics: every name and label key is spelled once, here; the rest of the crate records
//! through a [`Metrics`] handle, which `app` creates and passes to the services the way it passes the
//! decision log. Labels only take values from bounded sets (decisions, reason codes, protocols, rule
//! names): never the host, principal or path of a request.
//!
//! The handle owns its recorder instead of installing a process-wide one, so a test makes its own and
//! reads what it recorded, and no check path depends on whether a global recorder happens to be set.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, NoopRecorder, Recorder,
    SharedString, Unit,
};
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};

use crate::policy::{Decision, Policy, Protocol, Reason, Rule};

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
/// Written by [`Metrics::render`] from the count `telemetry` keeps.
pub const LOG_WRITE_ERRORS_TOTAL: &str = "egress_authz_log_write_errors_total";
/// 1 unless the rules on disk are currently rejected (while `/rules` shows a `last_reload_error`).
/// Written by [`Metrics::render`], not through the recorder (see there).
pub const CONFIG_LAST_RELOAD_SUCCESSFUL: &str = "egress_authz_config_last_reload_successful";
/// Unix time the process started (taken when its metrics come up, just after the first rule load): a
/// restart (a crash, an OOM kill) shows as a new value. The name Prometheus client libraries use, so
/// restart alerts written for other services apply.
pub const PROCESS_START_TIME_SECONDS: &str = "process_start_time_seconds";
/// Checks whose client reset the stream before sending its message (an Envoy timeout, typically).
pub const CHECKS_ABANDONED_TOTAL: &str = "egress_authz_checks_abandoned_total";
/// Log lines dropped because the queue to the log thread was full. Written by [`Metrics::render`].
pub const LOG_LINES_DROPPED_TOTAL: &str = "egress_authz_log_lines_dropped_total";
/// Checks whose flow the traffic inventory could not record because it held `--traffic-max-entries`
/// keys already.
pub const TRAFFIC_OVERFLOW_TOTAL: &str = "egress_authz_traffic_overflow_total";
/// Flow keys the traffic inventory holds.
pub const TRAFFIC_ENTRIES: &str = "egress_authz_traffic_entries";
/// Saves of the traffic inventory to `--traffic-file`, by result.
pub const TRAFFIC_FILE_WRITES_TOTAL: &str = "egress_authz_traffic_file_writes_total";
/// Always 1, labelled with the live rule set's SHA-256, so a rollout can be seen to have landed.
/// Written by [`Metrics::render`], not through the recorder (see there).
pub const CONFIG_INFO: &str = "egress_authz_config_info";

/// Rules each tenant file serves (`--tenant-rules`), by tenant.
pub const TENANT_RULES: &str = "egress_authz_tenant_rules";
/// 1 while a tenant's file on disk is accepted, 0 while it is rejected (its previous rules, if any, serve).
pub const TENANT_CONFIG_VALID: &str = "egress_authz_tenant_config_valid";

const LABEL_DECISION: &str = "decision";
const LABEL_REASON: &str = "reason";
const LABEL_PROTOCOL: &str = "protocol";
const LABEL_RULE: &str = "rule";
const LABEL_ACTION: &str = "action";
const LABEL_DRY_RUN: &str = "dry_run";
const LABEL_WOULD: &str = "would";
const LABEL_RESULT: &str = "result";
const LABEL_SHA256: &str = "sha256";
const LABEL_TENANT: &str = "tenant";

/// Histogram buckets for a decision that takes microseconds, up to a slow 10 ms.
const DURATION_BUCKETS: &[f64] = &[
    0.000_002, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001,
    0.002_5, 0.005, 0.01,
];

/// The `protocol` label of checks refused before their message was read.
const PROTOCOL_UNKNOWN: &str = "unknown";
/// Checks refused before their message was read, by reason.
const UNREAD_REASONS: [Reason; 2] = [Reason::Overloaded, Reason::InvalidRequest];
/// The `result` label of `egress_authz_reloads_total`, indexed by `success as usize`.
const RELOAD_RESULTS: [&str; 2] = ["failure", "success"];
/// Protocols a read check has, indexed by `Protocol as usize`.
const PROTOCOLS: [Protocol; 2] = [Protocol::Http, Protocol::Tcp];

/// What the recorder is told about where a series comes from (the Prometheus exporter ignores it).
const METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Where the process records its metrics, cheap to clone. Series that every check touches are resolved
/// to handles once, so recording a check neither builds a key (a `Vec` of labels) nor looks it up in
/// the recorder's registry (a sharded lock).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Registry>,
}

struct Registry {
    /// Tells this registry's rule-match handles from another's in the per-thread cache.
    id: u64,
    recorder: Arc<dyn Recorder + Send + Sync>,
    /// Renders the recorder's series; absent for a recorder that keeps nothing.
    prometheus: Option<PrometheusHandle>,
    /// Whether `egress_authz_rule_matches_total` (one series per rule) is recorded.
    rule_metrics: bool,
    /// Indexed by `[reason][protocol]`; the verdict label follows from the reason. Those a check can
    /// have are set (at zero) from the start; the others only once recorded, so that `/metrics` does not
    /// list combinations that never happen.
    checks: [[OnceLock<Counter>; PROTOCOLS.len()]; Reason::ALL.len()],
    /// Indexed like [`UNREAD_REASONS`].
    unread: [Counter; UNREAD_REASONS.len()],
    duration: Histogram,
    /// Indexed like [`RELOAD_RESULTS`].
    reloads: [Counter; RELOAD_RESULTS.len()],
    abandoned: Counter,
    traffic_overflow: Counter,
    traffic_entries: Gauge,
    /// Indexed like [`RELOAD_RESULTS`].
    traffic_file_writes: [Counter; RELOAD_RESULTS.len()],
    rules: Gauge,
    last_success: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("rule_metrics", &self.inner.rule_metrics)
            .field("prometheus", &self.inner.prometheus.is_some())
            .finish_non_exhaustive()
    }
}

// === impl Metrics ===

impl Metrics {
    /// A Prometheus registry with every metric described and the fixed series at zero. `rule_metrics`
    /// turns on `egress_authz_rule_matches_total`.
    pub fn prometheus(rule_metrics: bool) -> Result<Self, BuildError> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(CHECK_DURATION_SECONDS.to_owned()),
                DURATION_BUCKETS,
            )?
            .build_recorder();
        let handle = recorder.handle();
        Ok(Self::with_recorder(
            Arc::new(recorder),
            Some(handle),
            rule_metrics,
        ))
    }

    /// A handle that records nothing, for code that needs one but not its numbers (fuzzing).
    pub fn disabled() -> Self {
        Self::with_recorder(Arc::new(NoopRecorder), None, false)
    }

    fn with_recorder(
        recorder: Arc<dyn Recorder + Send + Sync>,
        prometheus: Option<PrometheusHandle>,
        rule_metrics: bool,
    ) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        describe(recorder.as_ref());
        let counter = |name: &'static str, labels: Vec<Label>| {
            recorder.register_counter(&Key::from_parts(name, labels), &METADATA)
        };
        let checks: [[OnceLock<Counter>; PROTOCOLS.len()]; Reason::ALL.len()] = Default::default();
        let unread = UNREAD_REASONS.map(|reason| {
            counter(
                CHECKS_TOTAL,
                check_labels(reason, PROTOCOL_UNKNOWN).to_vec(),
            )
        });
        let reloads = RELOAD_RESULTS
            .map(|result| counter(RELOADS_TOTAL, vec![Label::new(LABEL_RESULT, result)]));
        let gauge = |name: &'static str| recorder.register_gauge(&Key::from_name(name), &METADATA);
        // Zeros, not gaps, on dashboards before the first check or reload. A shed check is never read,
        // so it never has a protocol: its read-check series are left out.
        for reason in Reason::ALL.into_iter().filter(|r| *r != Reason::Overloaded) {
            for protocol in PROTOCOLS {
                let labels = check_labels(reason, protocol.as_str()).to_vec();
                let handle = checks[reason as usize][protocol as usize]
                    .get_or_init(|| counter(CHECKS_TOTAL, labels));
                handle.absolute(0);
            }
        }
        for counter in unread.iter().chain(&reloads) {
            counter.absolute(0);
        }
        let abandoned = counter(CHECKS_ABANDONED_TOTAL, Vec::new());
        abandoned.absolute(0);
        let traffic_overflow = counter(TRAFFIC_OVERFLOW_TOTAL, Vec::new());
        traffic_overflow.absolute(0);
        let traffic_file_writes = RELOAD_RESULTS.map(|result| {
            counter(
                TRAFFIC_FILE_WRITES_TOTAL,
                vec![Label::new(LABEL_RESULT, result)],
            )
        });
        for counter in &traffic_file_writes {
            counter.absolute(0);
        }
        let traffic_entries = gauge(TRAFFIC_ENTRIES);
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        gauge(PROCESS_START_TIME_SECONDS).set(started.as_secs_f64());
        Self {
            inner: Arc::new(Registry {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                duration: recorder
                    .register_histogram(&Key::from_name(CHECK_DURATION_SECONDS), &METADATA),
                rules: gauge(RULES),
                last_success: gauge(CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS),
                recorder,
                prometheus,
                rule_metrics,
                checks,
                unread,
                reloads,
                abandoned,
                traffic_overflow,
                traffic_entries,
                traffic_file_writes,
            }),
        }
    }

    /// Counts a check refused before its message was read: shed (`overloaded`) or with an unreadable
    /// gRPC frame (`invalid_request`). Cheap, since a flood of them is what shedding is for.
    pub(crate) fn record_unread(&self, reason: Reason) {
        match UNREAD_REASONS.iter().position(|r| *r == reason) {
            Some(index) => self.inner.unread[index].increment(1),
            None => self
                .counter(
                    CHECKS_TOTAL,
                    check_labels(reason, PROTOCOL_UNKNOWN).to_vec(),
                )
                .increment(1),
        }
    }

    /// Records one answered check; `decision` is `policy`'s.
    pub(crate) fn record_check(
        &self,
        policy: &Policy,
        decision: &Decision<'_>,
        protocol: Protocol,
        elapsed: Duration,
    ) {
        let inner = &self.inner;
        // Fieldless enums: the casts are their declaration indexes, within the arrays' bounds.
        let reason = decision.reason;
        inner.checks[reason as usize][protocol as usize]
            .get_or_init(|| {
                self.counter(
                    CHECKS_TOTAL,
                    check_labels(reason, protocol.as_str()).to_vec(),
                )
            })
            .increment(1);
        inner.duration.record(elapsed.as_secs_f64());
        if inner.rule_metrics {
            if let Some(rule) = decision.rule {
                self.record_rule_match(policy, rule, false);
            }
            if let Some(dry_run) = decision.dry_run {
                self.record_rule_match(policy, dry_run.rule, true);
            }
        }
        if let Some(dry_run) = decision.dry_run.filter(|_| decision.dry_run_disagrees()) {
            let labels = vec![
                Label::new(LABEL_RULE, dry_run.rule.name.clone()),
                Label::new(LABEL_WOULD, dry_run.verdict.as_str()),
            ];
            self.counter(DRY_RUN_TOTAL, labels).increment(1);
        }
    }

    fn record_rule_match(&self, policy: &Policy, rule: &Rule, dry_run: bool) {
        let Some(position) = policy.rule_position(rule) else {
            self.rule_match_counter(rule, dry_run).increment(1);
            return;
        };
        RULE_MATCH_HANDLES.with_borrow_mut(|handles| {
            if handles.registry != Some(self.inner.id) || handles.digest != policy.digest() {
                handles.registry = Some(self.inner.id);
                handles.digest.clear();
                handles.digest.push_str(policy.digest());
                handles.by_position.clear();
            }
            handles
                .by_position
                .entry((position, dry_run))
                .or_insert_with(|| self.rule_match_counter(rule, dry_run))
                .increment(1);
        });
    }

    fn rule_match_counter(&self, rule: &Rule, dry_run: bool) -> Counter {
        let labels = vec![
            Label::new(LABEL_RULE, rule.name.clone()),
            Label::new(LABEL_ACTION, rule.action.as_str()),
            Label::new(LABEL_DRY_RUN, if dry_run { "true" } else { "false" }),
        ];
        self.counter(RULE_MATCHES_TOTAL, labels)
    }

    /// Records the outcome of a reload that was not a no-op.
    pub(crate) fn record_reload(&self, success: bool) {
        self.inner.reloads[usize::from(success)].increment(1);
    }

    /// Counts a check whose client reset the stream before its message arrived.
    pub(crate) fn record_abandoned_check(&self) {
        self.inner.abandoned.increment(1);
    }

    /// Counts checks the traffic inventory had no room for.
    pub(crate) fn record_traffic_overflow(&self, checks: u64) {
        self.inner.traffic_overflow.increment(checks);
    }

    /// Records how many flow keys the traffic inventory holds.
    pub(crate) fn record_traffic_entries(&self, entries: usize) {
        self.inner.traffic_entries.set(entries as f64);
    }

    /// Records one save of the traffic inventory to its file.
    pub(crate) fn record_traffic_file_write(&self, success: bool) {
        self.inner.traffic_file_writes[usize::from(success)].increment(1);
    }

    /// Records the live rule set: its size and when it was loaded (its digest is rendered by
    /// [`Metrics::render`]).
    pub(crate) fn record_rule_set(&self, rules: usize, loaded_at: SystemTime) {
        self.inner.rules.set(rules as f64);
        let unix = loaded_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        self.inner.last_success.set(unix.as_secs_f64());
    }

    /// The Prometheus text for `/metrics`: the recorder's series plus the ones written here.
    ///
    /// `egress_authz_config_info` is written here rather than through the recorder because the
    /// `metrics` facade cannot delete a series: every past digest would linger (as a 0), one more per
    /// reload, and it must name exactly one rule set per process. The success flag is derived from the
    /// status `/rules` reports (`reload_failing` is its `last_error` being set), so the two cannot
    /// disagree; unlike `egress_authz_reloads_total{result="failure"}`, which counts a rejected content
    /// once, it stays 0 for as long as the rules on disk are rejected. The log counters are kept by
    /// `telemetry`'s writer, which cannot use the recorder (recording could log).
    ///
    /// The tenant series are written here for the same reason: a tenant whose file is deleted must
    /// disappear from `/metrics`, not linger at its last value.
    pub fn render(
        &self,
        digest: &str,
        reload_failing: bool,
        tenants: &[TenantSeries<'_>],
    ) -> String {
        let mut text = self
            .inner
            .prometheus
            .as_ref()
            .map(PrometheusHandle::render)
            .unwrap_or_default();
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
        let dropped = crate::telemetry::dropped_lines();
        let _ = write!(
            text,
            "# HELP {LOG_LINES_DROPPED_TOTAL} Log lines dropped because stderr did not keep up\n\
             # TYPE {LOG_LINES_DROPPED_TOTAL} counter\n\
             {LOG_LINES_DROPPED_TOTAL} {dropped}\n"
        );
        let write_errors = crate::telemetry::write_errors();
        let _ = write!(
            text,
            "# HELP {LOG_WRITE_ERRORS_TOTAL} Log lines dropped because stderr could not be written\n\
             # TYPE {LOG_WRITE_ERRORS_TOTAL} counter\n\
             {LOG_WRITE_ERRORS_TOTAL} {write_errors}\n"
        );
        let successful = u8::from(!reload_failing);
        let _ = write!(
            text,
            "# HELP {CONFIG_LAST_RELOAD_SUCCESSFUL} 0 while the rules on disk are rejected; the last good rules serve\n\
             # TYPE {CONFIG_LAST_RELOAD_SUCCESSFUL} gauge\n\
             {CONFIG_LAST_RELOAD_SUCCESSFUL} {successful}\n"
        );
        if !tenants.is_empty() {
            write_tenant_series(&mut text, tenants);
        }
        text
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.inner
            .recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }
}

/// What `/metrics` shows about one tenant file.
#[derive(Clone, Copy, Debug)]
pub struct TenantSeries<'a> {
    /// The tenant (its file name's stem).
    pub tenant: &'a str,
    /// Rules it serves.
    pub rules: usize,
    /// Whether its file on disk is accepted.
    pub valid: bool,
}

/// `egress_authz_tenant_rules` and `egress_authz_tenant_config_valid`, one series per tenant file.
fn write_tenant_series(text: &mut String, tenants: &[TenantSeries<'_>]) {
    let _ = write!(
        text,
        "# HELP {TENANT_RULES} Rules each tenant file serves\n# TYPE {TENANT_RULES} gauge\n"
    );
    for tenant in tenants {
        let label = escape_label(tenant.tenant);
        let _ = writeln!(
            text,
            "{TENANT_RULES}{{{LABEL_TENANT}=\"{label}\"}} {}",
            tenant.rules
        );
    }
    let _ = write!(
        text,
        "# HELP {TENANT_CONFIG_VALID} 1 while the tenant's file on disk is accepted, 0 while it is rejected\n\
         # TYPE {TENANT_CONFIG_VALID} gauge\n"
    );
    for tenant in tenants {
        let label = escape_label(tenant.tenant);
        let valid = u8::from(tenant.valid);
        let _ = writeln!(
            text,
            "{TENANT_CONFIG_VALID}{{{LABEL_TENANT}=\"{label}\"}} {valid}"
        );
    }
}

/// A label value in the Prometheus text format. A tenant is named by its file name, which need not be
/// a valid namespace (that file is then rejected, and still reported).
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The labels of `egress_authz_checks_total`; the decision is the one `reason` always has.
fn check_labels(reason: Reason, protocol: &'static str) -> [Label; 3] {
    [
        Label::new(LABEL_DECISION, reason.verdict().as_str()),
        Label::new(LABEL_REASON, reason.as_str()),
        Label::new(LABEL_PROTOCOL, protocol),
    ]
}

/// Registers help text and units with `recorder`.
fn describe(recorder: &dyn Recorder) {
    let counters = [
        (
            CHECKS_TOTAL,
            "Checks answered, by decision, reason code and protocol",
        ),
        (
            RULE_MATCHES_TOTAL,
            "Checks decided by each rule (and dry-run rules reported)",
        ),
        (
            DRY_RUN_TOTAL,
            "Checks where dry-run rules would have decided differently",
        ),
        (
            RELOADS_TOTAL,
            "Rule reloads that applied a change or failed",
        ),
        (
            CHECKS_ABANDONED_TOTAL,
            "Checks whose client reset the stream before sending the message (an Envoy timeout, typically)",
        ),
        (
            TRAFFIC_OVERFLOW_TOTAL,
            "Checks whose flow the traffic inventory could not record because it was full",
        ),
        (
            TRAFFIC_FILE_WRITES_TOTAL,
            "Saves of the traffic inventory to --traffic-file, by result",
        ),
    ];
    for (name, help) in counters {
        recorder.describe_counter(
            KeyName::from_const_str(name),
            Some(Unit::Count),
            SharedString::const_str(help),
        );
    }
    recorder.describe_histogram(
        KeyName::from_const_str(CHECK_DURATION_SECONDS),
        Some(Unit::Seconds),
        SharedString::const_str("Server time spent deciding one Check"),
    );
    let gauges = [
        (
            PROCESS_START_TIME_SECONDS,
            Unit::Seconds,
            "Unix time the process started",
        ),
        (RULES, Unit::Count, "Rules in the live rule set"),
        (
            TRAFFIC_ENTRIES,
            Unit::Count,
            "Flow keys held by the traffic inventory",
        ),
        (
            CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS,
            Unit::Seconds,
            "Unix time of the last successful rule load",
        ),
    ];
    for (name, unit, help) in gauges {
        recorder.describe_gauge(
            KeyName::from_const_str(name),
            Some(unit),
            SharedString::const_str(help),
        );
    }
}

/// This thread's `egress_authz_rule_matches_total` handles for one rule set of one registry, by rule
/// position and dry-run flag. Resolving a labelled counter copies the rule name into a key and looks the
/// key up in the recorder's registry; a handle is resolved once per rule, thread and rule set instead.
/// Thread-local, so recording takes no lock; it holds at most two handles per rule that decided a check
/// on this thread.
#[derive(Default)]
struct RuleMatchHandles {
    /// The registry the handles were resolved in ([`Registry::id`]).
    registry: Option<u64>,
    /// The rule set the handles belong to. Equal digests mean equal rules in equal order, so a position
    /// names the same rule; any other rule set starts afresh.
    digest: String,
    by_position: HashMap<(usize, bool), Counter>,
}

thread_local! {
    static RULE_MATCH_HANDLES: RefCell<RuleMatchHandles> = RefCell::default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_series_start_at_zero_and_count_through_the_handle() {
        let metrics = Metrics::prometheus(true).unwrap();
        metrics.record_unread(Reason::Overloaded);
        metrics.record_reload(false);
        let text = metrics.render("abc", true, &[]);
        for line in [
            "egress_authz_checks_total{decision=\"deny\",reason=\"overloaded\",protocol=\"unknown\"} 1",
            "egress_authz_checks_total{decision=\"allow\",reason=\"allowed_by_rule\",protocol=\"tcp\"} 0",
            "egress_authz_reloads_total{result=\"failure\"} 1",
            "egress_authz_reloads_total{result=\"success\"} 0",
            "egress_authz_config_info{sha256=\"abc\"} 1",
            "egress_authz_config_last_reload_successful 0",
            "egress_authz_checks_abandoned_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert!(!text.contains("reason=\"overloaded\",protocol=\"http\""));
        assert!(
            !text.contains(TENANT_RULES),
            "no tenant series without tenants"
        );
    }

    #[test]
    fn tenant_series_follow_the_tenants_reported() {
        let metrics = Metrics::prometheus(false).unwrap();
        let tenant = |tenant, rules, valid| TenantSeries {
            tenant,
            rules,
            valid,
        };
        let text = metrics.render(
            "abc",
            false,
            &[
                tenant("payments", 3, true),
                tenant("shop", 2, false),
                tenant("we\"ird", 0, false),
            ],
        );
        for line in [
            "egress_authz_tenant_rules{tenant=\"payments\"} 3",
            "egress_authz_tenant_rules{tenant=\"shop\"} 2",
            "egress_authz_tenant_config_valid{tenant=\"payments\"} 1",
            "egress_authz_tenant_config_valid{tenant=\"shop\"} 0",
            "egress_authz_tenant_config_valid{tenant=\"we\\\"ird\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        // A tenant no longer reported (its file was deleted) has no series left.
        let after = metrics.render("abc", false, &[tenant("payments", 3, true)]);
        assert!(!after.contains("shop"), "{after}");
    }
}
