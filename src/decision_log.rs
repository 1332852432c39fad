//! One structured event per decision, with volume control for large gateways.
//!
//! `--decision-log all|deny|none` picks what is logged; denies are sampled per (namespace, host, reason):
//! at most `limit` events per key per interval, the interval starting at the key's first deny, and when
//! it ends the number suppressed is logged once for that key. A misbehaving workload retrying in a loop
//! therefore costs a bounded number of lines, and what it cost is still visible.

use std::collections::HashMap;
use std::hash::{BuildHasher as _, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::Level;

use crate::policy::{Decision, EgressRequest, Verdict};

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

/// Most distinct hosts tracked per (namespace, reason); beyond it a namespace's denies share one key
/// with host `*`, so a workload cycling through host names costs one budget, not one per name, and
/// cannot use up the keys other namespaces need.
const MAX_HOSTS_PER_NAMESPACE: u32 = 64;

/// The host of the sampling key when a namespace has used up its distinct hosts.
const ANY_HOST: &str = "*";

/// The host of the sampling key for a host that is not a DNS name or IP literal.
const INVALID_HOST: &str = "<invalid>";

/// Longest value of each request-controlled field in a decision line; longer ones are cut with a
/// marker saying how much was cut. A SPIFFE ID is a few dozen bytes, a host at most 253 (longer is
/// invalid anyway), and a path past 1 KiB says nothing more to a reader.
const MAX_PRINCIPAL_LOGGED: usize = 256;
const MAX_HOST_LOGGED: usize = 256;
const MAX_METHOD_LOGGED: usize = 32;
const MAX_PATH_LOGGED: usize = 1024;
const MAX_REQUEST_ID_LOGGED: usize = 128;

/// `value`, or its first `max` bytes (at a character boundary) and `…[+N bytes]`.
fn bounded(value: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if value.len() <= max {
        return value.into();
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[+{} bytes]", &value[..end], value.len() - end).into()
}

/// Deny sampling: at most `limit` events per key per `interval`. `limit == 0` disables sampling.
#[derive(Clone, Copy, Debug)]
pub struct Sampling {
    /// Events per key per interval.
    pub limit: u32,
    /// The interval.
    pub interval: Duration,
}

/// One (namespace, host, reason) key and its interval. The map is keyed by a keyed hash of these, so
/// counting a repeat deny allocates nothing; the strings are copied once, for the summary.
#[derive(Debug)]
struct SampleKey {
    /// Hash of (namespace, reason), to release the namespace's host budget when the key is forgotten.
    scope: u64,
    namespace: String,
    host: String,
    reason: &'static str,
    window_start: Instant,
    count: u32,
}

#[derive(Debug)]
struct SamplerState {
    keys: HashMap<u64, SampleKey>,
    /// Distinct hosts tracked per (namespace, reason) hash.
    hosts_per_scope: HashMap<u64, u32>,
    /// Denies of new keys while `MAX_SAMPLING_KEYS` were tracked, suppressed without a key of their own.
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
                keys: HashMap::new(),
                hosts_per_scope: HashMap::new(),
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

    /// Logs one decision if the mode, the log filter and the sampler allow it. The caller and the
    /// destination are the decision's facts, so a line names what was decided on; the request gives
    /// what the policy does not interpret (the raw principal, method and path).
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
        let facts = &decision.facts;
        let identity = facts.caller;
        let namespace = identity.map_or("", |i| i.namespace);
        // Sample on the normalised host: `A.com`, `a.com.` and `a.com:443` are one destination.
        let mut scratch = None;
        let sample_host = facts.normalized_host(&mut scratch).unwrap_or(INVALID_HOST);
        if decision.verdict == Verdict::Deny
            && !self.sample(namespace, sample_host, decision.reason.as_str())
        {
            return;
        }
        let path = request.http.map(|h| h.path_without_query());
        // Every request-controlled field is bounded, so no caller can make one line arbitrarily long.
        event_at!(
            self.level,
            decision = decision.verdict.as_str(),
            reason = decision.reason.as_str(),
            rule = decision.rule.map(|r| r.name.as_str()),
            dry_run_rule = decision.dry_run.map(|d| d.rule.name.as_str()),
            dry_run_decision = decision.dry_run.map(|d| d.verdict.as_str()),
            protocol = request.protocol().as_str(),
            principal = %bounded(request.principal, MAX_PRINCIPAL_LOGGED),
            namespace = identity.map(|i| bounded(i.namespace, MAX_PRINCIPAL_LOGGED)).map(tracing::field::display),
            service_account = identity.map(|i| bounded(i.service_account, MAX_PRINCIPAL_LOGGED)).map(tracing::field::display),
            host = %bounded(facts.host, MAX_HOST_LOGGED),
            port = facts.port,
            method = request.http.map(|h| bounded(h.method, MAX_METHOD_LOGGED)).map(tracing::field::display),
            path = path.map(|p| bounded(p, MAX_PATH_LOGGED)).map(tracing::field::display),
            request_id = request_id.map(|id| bounded(id, MAX_REQUEST_ID_LOGGED)).map(tracing::field::display),
            latency_us = elapsed.as_micros() as u64,
            "Decision"
        );
    }

    /// True if this deny may be logged; counts it either way.
    fn sample(&self, namespace: &str, host: &str, reason: &'static str) -> bool {
        let (limit, interval) = (self.sampling.limit, self.sampling.interval);
        if limit == 0 {
            return true;
        }
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let scope = self.hasher.hash_one((namespace, reason));
        let (mut host, mut hash) = (host, self.hasher.hash_one((namespace, host, reason)));
        let budget_used = state.hosts_per_scope.get(&scope).copied().unwrap_or(0);
        if !state.keys.contains_key(&hash) && budget_used >= MAX_HOSTS_PER_NAMESPACE {
            host = ANY_HOST;
            hash = self.hasher.hash_one((namespace, host, reason));
        }
        if let Some(key) = state.keys.get_mut(&hash) {
            if now.duration_since(key.window_start) >= interval {
                self.report(key);
                key.window_start = now;
                key.count = 0;
            }
            key.count = key.count.saturating_add(1);
            return key.count <= limit;
        }
        if state.keys.len() >= MAX_SAMPLING_KEYS {
            state.overflow += 1;
            return false;
        }
        *state.hosts_per_scope.entry(scope).or_insert(0) += 1;
        state.keys.insert(
            hash,
            SampleKey {
                scope,
                namespace: namespace.to_owned(),
                host: host.to_owned(),
                reason,
                window_start: now,
                count: 1,
            },
        );
        true
    }

    /// Ends the intervals that are over, logging what they suppressed, and forgets their keys. Called
    /// on a timer, so a flood that stops is summarised promptly, not only when the key's next deny
    /// arrives, and the key map only holds keys seen within the last interval.
    pub fn flush_expired(&self) {
        let interval = self.sampling.interval;
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let SamplerState {
            keys,
            hosts_per_scope,
            ..
        } = &mut *state;
        keys.retain(|_, key| {
            let expired = now.duration_since(key.window_start) >= interval;
            if expired {
                self.report(key);
                release(hosts_per_scope, key.scope);
            }
            !expired
        });
        self.report_overflow(&mut state);
    }

    /// Ends every interval now (at shutdown), logging what they suppressed.
    pub fn flush(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for key in state.keys.values() {
            self.report(key);
        }
        state.keys.clear();
        state.hosts_per_scope.clear();
        self.report_overflow(&mut state);
    }

    fn report(&self, key: &SampleKey) {
        let limit = self.sampling.limit;
        if key.count > limit {
            event_at!(
                self.level,
                namespace = %key.namespace,
                host = %key.host,
                reason = key.reason,
                suppressed = key.count - limit,
                "Suppressed deny decision logs"
            );
        }
    }

    fn report_overflow(&self, state: &mut SamplerState) {
        if state.overflow > 0 {
            event_at!(
                self.level,
                suppressed = state.overflow,
                keys = MAX_SAMPLING_KEYS,
                "Suppressed deny decision logs beyond the sampling key limit"
            );
            state.overflow = 0;
        }
    }
}

/// Gives back one host of a (namespace, reason) budget.
fn release(hosts_per_scope: &mut HashMap<u64, u32>, scope: u64) {
    if let Some(count) = hosts_per_scope.get_mut(&scope) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            hosts_per_scope.remove(&scope);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{HttpRequest, SourceFile, compile};

    fn mk_log(limit: u32, interval: Duration) -> DecisionLog {
        DecisionLog::new(
            DecisionLogMode::Deny,
            Level::INFO,
            Sampling { limit, interval },
        )
    }

    #[test]
    fn each_key_gets_its_own_budget_per_interval() {
        let log = mk_log(2, Duration::from_secs(3600));
        let logged = |ns, host| {
            (0..5)
                .filter(|_| log.sample(ns, host, "no_matching_rule"))
                .count()
        };
        assert_eq!(logged("a", "x.example.com"), 2);
        assert_eq!(logged("a", "y.example.com"), 2);
        assert_eq!(logged("b", "x.example.com"), 2);
        assert!(!log.sample("a", "x.example.com", "no_matching_rule"));
        assert!(log.sample("a", "x.example.com", "denied_by_rule"));
    }

    #[test]
    fn a_namespace_cycling_through_hosts_shares_one_budget_beyond_its_host_limit() {
        let log = mk_log(2, Duration::from_secs(3600));
        let hosts: Vec<String> = (0..MAX_HOSTS_PER_NAMESPACE + 50)
            .map(|i| format!("h{i}.example.com"))
            .collect();
        let logged = hosts
            .iter()
            .filter(|h| log.sample("noisy", h, "no_matching_rule"))
            .count();
        // One event per distinct host up to the limit, then the shared `*` key's budget of 2.
        assert_eq!(logged, MAX_HOSTS_PER_NAMESPACE as usize + 2);
        // Other namespaces are unaffected.
        assert!(log.sample("quiet", "h0.example.com", "no_matching_rule"));
        // Forgetting expired keys gives the budget back.
        let log = mk_log(1, Duration::ZERO);
        for host in &hosts {
            log.sample("noisy", host, "no_matching_rule");
        }
        log.flush_expired();
        assert!(log.state.lock().unwrap().hosts_per_scope.is_empty());
    }

    #[test]
    fn a_key_starts_over_after_its_interval() {
        let log = mk_log(1, Duration::ZERO);
        assert!(log.sample("a", "x", "no_matching_rule"));
        assert!(
            log.sample("a", "x", "no_matching_rule"),
            "a zero interval is always over"
        );
    }

    #[test]
    fn flushing_forgets_expired_keys_only() {
        let log = mk_log(1, Duration::from_secs(3600));
        assert!(log.sample("a", "x", "no_matching_rule"));
        log.flush_expired();
        assert!(
            !log.sample("a", "x", "no_matching_rule"),
            "still in its interval"
        );
        log.flush();
        assert!(
            log.sample("a", "x", "no_matching_rule"),
            "flush ends every interval"
        );
    }

    #[test]
    fn no_sampling_logs_everything() {
        let log = mk_log(0, Duration::from_secs(3600));
        assert!((0..100).all(|_| log.sample("a", "x", "no_matching_rule")));
    }

    /// Writes log output into a shared buffer.
    struct Capture(std::sync::Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The fields of each line `record` writes for `decision` in `all` mode, as JSON.
    fn logged_fields(
        decision: &Decision<'_>,
        request: &EgressRequest<'_>,
    ) -> Vec<serde_json::Value> {
        let buffer = std::sync::Arc::new(Mutex::new(Vec::new()));
        let shared = std::sync::Arc::clone(&buffer);
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(Level::TRACE)
            .with_writer(move || Capture(std::sync::Arc::clone(&shared)))
            .finish();
        let log = DecisionLog::new(
            DecisionLogMode::All,
            Level::INFO,
            Sampling {
                limit: 0,
                interval: Duration::from_secs(1),
            },
        );
        tracing::subscriber::with_default(subscriber, || {
            log.record(decision, request, None, Duration::ZERO);
        });
        let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["fields"].clone())
            .collect()
    }

    #[test]
    fn a_line_names_the_caller_and_host_the_decision_was_made_on() {
        let policy = compile(&[SourceFile {
            name: "rules.yaml".into(),
            text: "rules:\n- name: google\n  to: {hosts: [developers.google.com]}\n".into(),
        }])
        .unwrap();
        // (request, host logged, caller's namespace and service account logged)
        let cases = [
            // Istio's cluster SNI names the gateway, so the TLS SNI is the destination; the caller's
            // trust domain is not trusted, so it is no caller.
            (
                EgressRequest {
                    principal: "spiffe://evil.example/ns/default/sa/sleep",
                    destination_service: "outbound_.443_._.x.svc.cluster.local",
                    sni: "developers.google.com",
                    port: Some(443),
                    ..Default::default()
                },
                "developers.google.com",
                None,
            ),
            (
                EgressRequest {
                    principal: "spiffe://cluster.local/ns/default/sa/sleep",
                    http: Some(HttpRequest {
                        authority: "Developers.Google.com:443",
                        method: "GET",
                        path: "/",
                    }),
                    port: Some(443),
                    ..Default::default()
                },
                "Developers.Google.com",
                Some(("default", "sleep")),
            ),
        ];
        for (request, host, caller) in cases {
            let decision = policy.decide(&request);
            let facts = decision.facts;
            let fields = logged_fields(&decision, &request);
            assert_eq!(fields.len(), 1, "{request:?}: {fields:?}");
            let logged = &fields[0];
            let logged_caller = logged["namespace"]
                .as_str()
                .zip(logged["service_account"].as_str());
            assert_eq!(logged["host"].as_str(), Some(facts.host), "{request:?}");
            assert_eq!(logged["host"].as_str(), Some(host), "{request:?}");
            assert_eq!(
                logged_caller,
                facts.caller.map(|c| (c.namespace, c.service_account)),
                "{request:?}"
            );
            assert_eq!(logged_caller, caller, "{request:?}");
            assert_eq!(logged["port"].as_u64(), Some(443), "{request:?}");
        }
    }
}
