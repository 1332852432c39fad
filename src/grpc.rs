//! The gRPC adapter: Envoy's `envoy.service.auth.v3.Authorization/Check` and the project's admin
//! `Explain`. Read, decide, record, respond, in that order; no policy logic lives here.
//!
//! Every Check RPC succeeds. A request the server cannot authorise is a *deny with a reason*, never a
//! gRPC error: Envoy treats a failed RPC as an error, and `failure_mode_allow` (Istio `failOpen`) would
//! then let the request through. The service stays fail-closed whatever Envoy's settings are, and
//! whatever bytes it is sent: see `wire` for how a check is read and `endpoint` for the gRPC framing.

pub mod admin;
pub mod convert;
pub mod endpoint;
pub mod wire;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::service::auth::v3::CheckResponse;

use crate::decision_log::DecisionLog;
use crate::metrics::Metrics;
use crate::policy::{Decision, EgressRequest, HttpRequest, Protocol, Reason};
use crate::reload::RuleStore;
use crate::traffic::TrafficInventory;

/// Serves Check from the current rule set.
#[derive(Debug, Clone)]
pub struct AuthzService {
    store: Arc<RuleStore>,
    log: Arc<DecisionLog>,
    metrics: Metrics,
    traffic: Option<Arc<TrafficInventory>>,
}

impl AuthzService {
    /// A service deciding from `store`, logging decisions through `log` and counting them in `metrics`.
    pub fn new(store: Arc<RuleStore>, log: Arc<DecisionLog>, metrics: Metrics) -> Self {
        Self {
            store,
            log,
            metrics,
            traffic: None,
        }
    }

    /// The same service, also counting every check in `traffic` (learn mode) when there is one.
    pub fn recording_traffic(self, traffic: Option<Arc<TrafficInventory>>) -> Self {
        Self { traffic, ..self }
    }

    /// Where this service counts its checks, for the transport around it to count what it refuses.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts a check refused before its message was read (shed, or an unreadable gRPC frame).
    pub fn record_unread(&self, reason: Reason) {
        self.metrics.record_unread(reason);
        if let Some(traffic) = &self.traffic {
            traffic.record_unread(reason);
        }
    }

    /// Decides one check given as its protobuf encoding. Synchronous and infallible: any bytes get
    /// an answer, counted and logged like every decision.
    pub fn decide_message(&self, message: &[u8]) -> CheckResponse {
        match wire::read_check_request(message) {
            Ok(fields) => self.decide_fields(&fields),
            Err(malformed) => {
                tracing::debug!(
                    problem = malformed.what,
                    "A check that is not a well-formed CheckRequest"
                );
                let protocol = if malformed.saw_http {
                    Protocol::Http
                } else {
                    Protocol::Tcp
                };
                self.refuse(Reason::InvalidRequest, protocol)
            }
        }
    }

    /// The answer to a check refused before the rules are consulted: a deny with `reason`, counted
    /// and logged like a decision.
    fn refuse(&self, reason: Reason, protocol: Protocol) -> CheckResponse {
        let started = Instant::now();
        let decision = Decision::refused(reason);
        let request = EgressRequest {
            http: (protocol == Protocol::Http).then(HttpRequest::default),
            ..EgressRequest::default()
        };
        let response = convert::to_check_response(&decision, protocol);
        let elapsed = started.elapsed();
        let live = self.store.current();
        self.metrics
            .record_check(&live.policy, &decision, protocol, elapsed);
        self.record_traffic(&decision, protocol);
        self.log.record(&decision, &request, None, elapsed);
        response
    }

    fn record_traffic(&self, decision: &Decision<'_>, protocol: Protocol) {
        if let Some(traffic) = &self.traffic {
            traffic.record(decision, protocol);
        }
    }

    fn decide_fields(&self, fields: &wire::CheckFields<'_>) -> CheckResponse {
        let started = Instant::now();
        let text = CheckText::from_fields(fields);
        let request = text.request();
        // A guard, not a clone: the rule set cannot be freed under us, and no `.await` happens while held.
        let live = self.store.current();
        let decision = live.policy.decide(&request);
        let response = convert::to_check_response(&decision, request.protocol());
        let elapsed = started.elapsed();
        self.metrics
            .record_check(&live.policy, &decision, request.protocol(), elapsed);
        self.record_traffic(&decision, request.protocol());
        let request_id = text.request_id.as_deref().filter(|id| !id.is_empty());
        self.log.record(&decision, &request, request_id, elapsed);
        response
    }
}

/// A check's fields as text. Bytes that are not UTF-8 become U+FFFD, which no host, SPIFFE ID or
/// method accepts: an unreadable SNI or `:authority` is denied as `invalid_host`, an unreadable
/// principal leaves the caller without an identity (`invalid_principal` under a default deny). Valid
/// text is borrowed, so the common case copies nothing.
struct CheckText<'a> {
    principal: Cow<'a, str>,
    destination_service: Cow<'a, str>,
    sni: Cow<'a, str>,
    port: Option<u16>,
    http: Option<[Cow<'a, str>; 3]>,
    request_id: Option<Cow<'a, str>>,
}

impl<'a> CheckText<'a> {
    fn from_fields(fields: &wire::CheckFields<'a>) -> Self {
        let text = |bytes: &'a [u8]| String::from_utf8_lossy(bytes);
        Self {
            principal: text(fields.principal),
            destination_service: text(fields.destination_service),
            sni: text(fields.sni),
            port: fields.port,
            http: fields
                .http
                .map(|http| [text(http.authority), text(http.method), text(http.path)]),
            request_id: fields.http.map(|http| text(http.request_id)),
        }
    }

    fn request(&self) -> EgressRequest<'_> {
        EgressRequest {
            http: self
                .http
                .as_ref()
                .map(|[authority, method, path]| HttpRequest {
                    authority,
                    method,
                    path,
                }),
            principal: &self.principal,
            destination_service: &self.destination_service,
            sni: &self.sni,
            port: self.port,
        }
    }
}
