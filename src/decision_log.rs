//! One structured event per decision, with volume control for large gateways.
//!
//! `--decision-log all|deny|none` picks what is logged; denies are sampled per (namespace, host, reason):
//! at most `limit` events per key per interval, and when an interval ends the number suppressed per key
//! is logged once. A misbehaving workload retrying in a loop therefore costs a bounded number of lines.

use std::collections::HashMap;
use std::hash::{BuildHasher as _, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::Level;

use crate::policy::{Decision, EgressRequest, Verdict, authority_host, parse_spiffe_id};

/// The `tracing` target of decision events and suppression summaries, for `RUST_LOG` filtering
/// (`RUST_LOG=info,egress_authz::decision=off`).
pub const TARGET: &str = "egress_authz::decision";

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

/// One (namespace, host, reason) key of the current interval. The map is keyed by a keyed hash of
/// these, so counting a repeat deny allocates nothing; the strings are copied once, for the summary.
#[derive(Debug)]
struct SampleKey {
    namespace: String,
    host: String,
    reason: &'static str,
    count: u32,
}

#[derive(Debug)]
struct SamplerState {
    window_start: Instant,
    keys: HashMap<u64, SampleKey>,
    /// Denies of keys beyond `MAX_SAMPLING_KEYS`, suppressed without a key of their own.
    overflow: u64,
}

/// Emits decision events.
#[derive(Debug)]
pub struct DecisionLog {
    mode: DecisionLogMode,
    level: Level,
    sampling: Sampling,
    /// Random per process, so a caller cannot pick hosts whose keys collide with another workload's.
    hasher: RandomState,
    state: Mutex<SamplerState>,
}

/// `tracing::event!` at a level chosen at run time (the macro wants a constant).
macro_rules! event_at {
    ($level:expr, $($rest:tt)+) => {
        match $level {
            Level::ERROR => tracing::event!(target: TARGET, Level::ERROR, $($rest)+),
            Level::WARN => tracing::event!(target: TARGET, Level::WARN, $($rest)+),
            Level::INFO => tracing::event!(target: TARGET, Level::INFO, $($rest)+),
            Level::DEBUG => tracing::event!(target: TARGET, Level::DEBUG, $($rest)+),
            _ => tracing::event!(target: TARGET, Level::TRACE, $($rest)+),
        }
    };
}

impl DecisionLog {
    /// A decision log.
    pub fn new(mode: DecisionLogMode, level: Level, sampling: Sampling) -> Self {
        Self {
            mode,
            level,
            sampling,
            hasher: RandomState::new(),
            state: Mutex::new(SamplerState {
                window_start: Instant::now(),
                keys: HashMap::new(),
                overflow: 0,
            }),
        }
    }

    /// Logs nothing; for tests and benchmarks.
    pub fn disabled() -> Self {
        Self::new(
            DecisionLogMode::None,
            Level::DEBUG,
            Sampling {
                limit: 0,
                interval: Duration::from_secs(1),
            },
        )
    }

    /// The sampling interval, for the task that calls `flush_expired`.
    pub fn sampling(&self) -> Sampling {
        self.sampling
    }

    fn enabled(&self) -> bool {
        match self.level {
            Level::ERROR => tracing::enabled!(target: TARGET, Level::ERROR),
            Level::WARN => tracing::enabled!(target: TARGET, Level::WARN),
            Level::INFO => tracing::enabled!(target: TARGET, Level::INFO),
            Level::DEBUG => tracing::enabled!(target: TARGET, Level::DEBUG),
            _ => tracing::enabled!(target: TARGET, Level::TRACE),
        }
    }

    /// Logs one decision if the mode, the log filter and the sampler allow it.
    pub fn record(
        &self,
        decision: &Decision<'_>,
        request: &EgressRequest<'_>,
        request_id: Option<&str>,
        elapsed: Duration,
    ) {
        let wanted = match self.mode {
            DecisionLogMode::All => true,
            DecisionLogMode::Deny => decision.verdict == Verdict::Deny,
            DecisionLogMode::None => false,
        };
        if !wanted || !self.enabled() {
            return;
        }
        let identity = parse_spiffe_id(request.principal);
        let namespace = identity.map_or("", |i| i.namespace);
        let host = match request.http {
            Some(http) => authority_host(http.authority).unwrap_or(http.authority),
            None if !request.destination_service.is_empty() => request.destination_service,
            None => request.sni,
        };
        if decision.verdict == Verdict::Deny
            && !self.sample(namespace, host, decision.reason.as_str())
        {
            return;
        }
        // The path without its query string or fragment: those may carry secrets (tokens, e-mails).
        let path = request
            .http
            .map(|h| h.path.split(['?', '#']).next().unwrap_or_default());
        event_at!(
            self.level,
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
        );
    }

    /// True if this deny may be logged; counts it either way.
    fn sample(&self, namespace: &str, host: &str, reason: &'static str) -> bool {
        if self.sampling.limit == 0 {
            return true;
        }
        let hash = self.hasher.hash_one((namespace, host, reason));
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.window_start.elapsed() >= self.sampling.interval {
            self.end_window(&mut state);
        }
        if let Some(key) = state.keys.get_mut(&hash) {
            key.count = key.count.saturating_add(1);
            return key.count <= self.sampling.limit;
        }
        if state.keys.len() >= MAX_SAMPLING_KEYS {
            state.overflow += 1;
            return false;
        }
        state.keys.insert(
            hash,
            SampleKey {
                namespace: namespace.to_owned(),
                host: host.to_owned(),
                reason,
                count: 1,
            },
        );
        true
    }

    /// Ends the sampling interval if it is over, logging what it suppressed. Called on a timer so a
    /// flood that stops is still summarised promptly, not only when the next deny arrives.
    pub fn flush_expired(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.window_start.elapsed() >= self.sampling.interval {
            self.end_window(&mut state);
        }
    }

    /// Ends the sampling interval now (at shutdown), logging what it suppressed.
    pub fn flush(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.end_window(&mut state);
    }

    fn end_window(&self, state: &mut SamplerState) {
        let limit = self.sampling.limit;
        for key in state.keys.values().filter(|key| key.count > limit) {
            event_at!(
                self.level,
                namespace = %key.namespace,
                host = %key.host,
                reason = key.reason,
                suppressed = key.count - limit,
                "Suppressed deny decision logs"
            );
        }
        if state.overflow > 0 {
            event_at!(
                self.level,
                suppressed = state.overflow,
                keys = MAX_SAMPLING_KEYS,
                "Suppressed deny decision logs beyond the sampling key limit"
            );
        }
        state.keys.clear();
        state.overflow = 0;
        state.window_start = Instant::now();
    }
}
