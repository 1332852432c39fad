//! One structured event per decision, with volume control for large gateways.
//!
//! `--decision-log all|deny|none` picks what is logged; denies are sampled per (namespace, host, reason):
//! at most `limit` events per key per interval, and when an interval ends the number suppressed per key
//! is logged once. A misbehaving workload retrying in a loop therefore costs a bounded number of lines.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::Level;

use crate::policy::{Decision, EgressRequest, Verdict, authority_host, parse_spiffe_id};

/// Which decisions are logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DecisionLogMode {
    /// Every decision.
    All,
    /// Denies only (default): what operators act on.
    Deny,
    /// None.
    None,
}

/// Most distinct sampling keys tracked per interval; beyond it, new keys are suppressed too, so memory
/// stays bounded whatever the traffic.
const MAX_SAMPLING_KEYS: usize = 10_000;

/// Deny sampling: at most `limit` events per key per `interval`. `limit == 0` disables sampling.
#[derive(Clone, Copy, Debug)]
pub struct Sampling {
    /// Events per key per interval.
    pub limit: u32,
    /// The interval.
    pub interval: Duration,
}

type SampleKey = (String, String, &'static str);

#[derive(Debug)]
struct SamplerState {
    window_start: Instant,
    counts: HashMap<SampleKey, u32>,
}

/// Emits decision events.
#[derive(Debug)]
pub struct DecisionLog {
    mode: DecisionLogMode,
    level: Level,
    sampling: Sampling,
    state: Mutex<SamplerState>,
}

impl DecisionLog {
    /// A decision log.
    pub fn new(mode: DecisionLogMode, level: Level, sampling: Sampling) -> Self {
        Self {
            mode,
            level,
            sampling,
            state: Mutex::new(SamplerState {
                window_start: Instant::now(),
                counts: HashMap::new(),
            }),
        }
    }

    /// Logs nothing; for tests and benchmarks.
    pub fn disabled() -> Self {
        Self::new(DecisionLogMode::None, Level::DEBUG, Sampling { limit: 0, interval: Duration::from_secs(1) })
    }

    /// Logs one decision if the mode and the sampler allow it.
    pub fn record(&self, decision: &Decision<'_>, request: &EgressRequest<'_>, request_id: Option<&str>, elapsed: Duration) {
        let wanted = match self.mode {
            DecisionLogMode::All => true,
            DecisionLogMode::Deny => decision.verdict == Verdict::Deny,
            DecisionLogMode::None => false,
        };
        if !wanted || !tracing::level_enabled!(Level::ERROR) {
            return;
        }
        let identity = parse_spiffe_id(request.principal);
        let namespace = identity.map_or("", |i| i.namespace);
        let host = match request.http {
            Some(http) => authority_host(http.authority).unwrap_or(http.authority),
            None if !request.destination_service.is_empty() => request.destination_service,
            None => request.sni,
        };
        if decision.verdict == Verdict::Deny && !self.sample(namespace, host, decision.reason.as_str()) {
            return;
        }
        let path = request.http.map(|h| h.path.split(['?', '#']).next().unwrap_or_default());
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(
                    target: "egress_authz::decision",
                    $level,
                    decision = decision.verdict.as_str(),
                    reason = decision.reason.as_str(),
                    rule = decision.rule.map(|r| r.name.as_str()),
                    dry_run_rule = decision.dry_run.map(|d| d.rule.name.as_str()),
                    dry_run_decision = decision.dry_run.map(|d| d.verdict.as_str()),
                    protocol = request.protocol().as_str(),
                    principal = request.principal,
                    namespace = identity.map(|i| i.namespace),
                    service_account = identity.map(|i| i.service_account),
                    host,
                    port = request.port,
                    method = request.http.map(|h| h.method),
                    path,
                    request_id,
                    latency_us = elapsed.as_micros() as u64,
                    "Decision"
                )
            };
        }
        match self.level {
            Level::ERROR => emit!(Level::ERROR),
            Level::WARN => emit!(Level::WARN),
            Level::INFO => emit!(Level::INFO),
            Level::DEBUG => emit!(Level::DEBUG),
            _ => emit!(Level::TRACE),
        }
    }

    /// True if this deny may be logged; counts it either way.
    fn sample(&self, namespace: &str, host: &str, reason: &'static str) -> bool {
        if self.sampling.limit == 0 {
            return true;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.window_start.elapsed() >= self.sampling.interval {
            report_suppressed(&state.counts, self.sampling.limit);
            state.counts.clear();
            state.window_start = Instant::now();
        }
        let limit = self.sampling.limit;
        if let Some(count) = state.counts.get_mut(&(namespace.to_owned(), host.to_owned(), reason)) {
            *count = count.saturating_add(1);
            return *count <= limit;
        }
        if state.counts.len() >= MAX_SAMPLING_KEYS {
            return false;
        }
        state.counts.insert((namespace.to_owned(), host.to_owned(), reason), 1);
        true
    }
}

fn report_suppressed(counts: &HashMap<SampleKey, u32>, limit: u32) {
    for ((namespace, host, reason), count) in counts {
        if *count > limit {
            tracing::info!(
                target: "egress_authz::decision",
                namespace = %namespace,
                host = %host,
                reason = *reason,
                suppressed = count - limit,
                "Suppressed deny decision logs"
            );
        }
    }
}
