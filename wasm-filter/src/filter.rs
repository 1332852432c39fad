//! The proxy-wasm glue: one root context per plugin configuration, an HTTP context per request and a
//! stream context per connection. Reads attributes, decides, answers, records; no policy logic here.
//!
//! Contexts share the live rules through an `Rc`: a VM runs on one thread, and a new configuration
//! replaces the root's `Rc` while requests already under way finish on the rules they started with.

use std::rc::Rc;

use egress_authz_policy::{HttpRequest, Protocol, Verdict};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

use crate::answer::{Outcome, REASON_HEADER, log_keys};
use crate::attributes::{Connection, headers};
use crate::config::{self, FilterKind, Rules};
use crate::metrics::{StatHost, Stats};

/// Envoy's stats through the proxy-wasm host calls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EnvoyStats;

impl StatHost for EnvoyStats {
    fn define_counter(&self, name: &str) -> Option<u32> {
        hostcalls::define_metric(MetricType::Counter, name).ok()
    }

    fn increment(&self, id: u32) {
        // A counter that cannot be incremented is no reason to fail a request; nothing else to do.
        let _ = hostcalls::increment_metric(id, 1);
    }
}

/// Registers the root context: called once when Envoy starts the VM.
pub(crate) fn start() {
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}

/// What every context of one configuration shares.
#[derive(Debug)]
struct Shared {
    rules: Rules,
    stats: Rc<Stats<EnvoyStats>>,
}

/// One plugin configuration: compiles the rules in `on_configure` and hands them to each request and
/// connection. Until configured, it has no rules and every request is denied.
#[derive(Debug)]
struct Root {
    shared: Option<Rc<Shared>>,
    stats: Option<Rc<Stats<EnvoyStats>>>,
    kind: FilterKind,
}

impl Default for Root {
    fn default() -> Self {
        Self {
            shared: None,
            stats: None,
            kind: FilterKind::Http,
        }
    }
}

impl Root {
    fn shared(&self) -> Rc<Shared> {
        match &self.shared {
            Some(shared) => Rc::clone(shared),
            None => Rc::new(Shared {
                rules: Rules::Invalid("the filter was not configured".to_owned()),
                stats: self.stats(),
            }),
        }
    }

    fn stats(&self) -> Rc<Stats<EnvoyStats>> {
        match &self.stats {
            Some(stats) => Rc::clone(stats),
            None => Rc::new(Stats::new(EnvoyStats)),
        }
    }
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let stats = self.stats();
        self.stats = Some(Rc::clone(&stats));
        let root_id = crate::attributes::text(property(&PLUGIN_ROOT_ID));
        self.kind = FilterKind::of_root_id(&root_id);
        let configuration = self.get_plugin_configuration().unwrap_or_default();
        let rules = config::load(&configuration);
        match &rules {
            Rules::Compiled(policy) => {
                log::info!(
                    "Rules applied: {} rules, sha256 {}, as the {:?} filter (root id {root_id:?})",
                    policy.rules().len(),
                    policy.digest(),
                    self.kind
                );
                stats.record_configuration(true);
            }
            Rules::Invalid(error) => {
                log::error!(
                    "Rejected the plugin configuration; denying every request as invalid_configuration: {error}"
                );
                stats.record_configuration(false);
            }
        }
        self.shared = Some(Rc::new(Shared { rules, stats }));
        // Accepted even when invalid: refusing it would fail Envoy's start or its listener update,
        // and on an update traffic would go on under the rules the operator just replaced. Denying
        // everything with its own reason fails closed, and shows in every response and log line.
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(HttpFilter {
            shared: self.shared(),
        }))
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(NetworkFilter {
            shared: self.shared(),
            verdict: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        // The same module serves `envoy.filters.http.wasm` and `envoy.filters.network.wasm`; Envoy
        // does not say which one a new context is for, the plugin's root id does.
        Some(match self.kind {
            FilterKind::Http => ContextType::HttpContext,
            FilterKind::Network => ContextType::StreamContext,
        })
    }
}

/// The plugin's root id (Envoy's `plugin_root_id` attribute).
const PLUGIN_ROOT_ID: [&str; 1] = ["plugin_root_id"];

/// Reads an attribute; absent (or unreadable) is `None`.
fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// Puts the outcome where the access log can read it (filter state, see [`log_keys`]).
fn publish(outcome: &Outcome<'_>) {
    for (key, value) in outcome.log_entries() {
        let Some(path) = log_keys::property(key) else {
            continue;
        };
        if hostcalls::set_property(vec![path], Some(value.as_bytes())).is_err() {
            log::warn!("Could not record {path} for the access log");
        }
    }
}

/// Decides with `shared`'s rules, counts, and publishes; `answer` acts on the outcome.
fn decide<T>(
    shared: &Shared,
    protocol: Protocol,
    request: &egress_authz_policy::EgressRequest<'_>,
    answer: impl FnOnce(&Outcome<'_>) -> T,
) -> T {
    let outcome = match &shared.rules {
        Rules::Compiled(policy) => Outcome::decided(&policy.decide(request)),
        Rules::Invalid(_) => Outcome::invalid_configuration(),
    };
    shared.stats.record(&outcome, protocol);
    publish(&outcome);
    log::debug!(
        "{} {} {}",
        protocol.as_str(),
        outcome.verdict.as_str(),
        outcome.reason.as_str()
    );
    answer(&outcome)
}

/// The HTTP filter: decides on the request headers.
#[derive(Debug)]
struct HttpFilter {
    shared: Rc<Shared>,
}

impl HttpFilter {
    fn header(&self, name: &str) -> String {
        crate::attributes::text(self.get_http_request_header_bytes(name))
    }
}

impl Context for HttpFilter {}

impl HttpContext for HttpFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let connection = Connection::read(property);
        let (authority, method, path) = (
            self.header(headers::AUTHORITY),
            self.header(headers::METHOD),
            self.header(headers::PATH),
        );
        let request = connection.http_request(HttpRequest {
            authority: &authority,
            method: &method,
            path: &path,
        });
        let deny = decide(&self.shared, Protocol::Http, &request, |outcome| {
            outcome.http_deny()
        });
        match deny {
            None => Action::Continue,
            Some(deny) => {
                self.send_http_response(
                    deny.status,
                    vec![(REASON_HEADER, deny.reason_header.as_str())],
                    Some(deny.body.as_bytes()),
                );
                Action::Pause
            }
        }
    }
}

/// The network filter: decides when the client first sends data, once its TLS handshake is done (the
/// peer certificate and SNI are known then, not when the connection is accepted), as Envoy's network
/// ext_authz does. A denied connection is closed with its data held back: no byte reaches the upstream.
#[derive(Debug)]
struct NetworkFilter {
    shared: Rc<Shared>,
    /// The connection's verdict, once its first data has been seen.
    verdict: Option<Verdict>,
}

impl Context for NetworkFilter {}

impl StreamContext for NetworkFilter {
    fn on_downstream_data(&mut self, _data_size: usize, _end_of_stream: bool) -> Action {
        let verdict = match self.verdict {
            Some(verdict) => verdict,
            None => {
                let connection = Connection::read(property);
                let verdict = decide(
                    &self.shared,
                    Protocol::Tcp,
                    &connection.tcp_request(),
                    |outcome| outcome.verdict,
                );
                self.verdict = Some(verdict);
                if verdict == Verdict::Deny {
                    self.close_downstream();
                }
                verdict
            }
        };
        match verdict {
            Verdict::Allow => Action::Continue,
            // Held back, on this call and any later one while the connection closes.
            Verdict::Deny => Action::Pause,
        }
    }
}
