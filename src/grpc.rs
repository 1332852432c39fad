//! The gRPC adapter: Envoy's `envoy.service.auth.v3.Authorization/Check` and the project's admin
//! `Explain`. Convert, decide, record, respond, in that order; no policy logic lives here.
//!
//! Every Check RPC succeeds. A request the server cannot authorise is a *deny with a reason*, never a
//! gRPC error: Envoy treats a failed RPC as an error, and `failure_mode_allow` (Istio `failOpen`) would
//! then let the request through. The service stays fail-closed whatever Envoy's settings are.

pub mod admin;
pub mod convert;

use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use tonic::{Request, Response, Status};

use crate::decision_log::DecisionLog;
use crate::metrics;
use crate::reload::RuleStore;

/// Serves Check from the current rule set.
#[derive(Debug, Clone)]
pub struct AuthzService {
    store: Arc<RuleStore>,
    log: Arc<DecisionLog>,
}

impl AuthzService {
    /// A service deciding from `store`, logging decisions through `log`.
    pub fn new(store: Arc<RuleStore>, log: Arc<DecisionLog>) -> Self {
        Self { store, log }
    }

    /// Decides one check. Synchronous and infallible; `check` only wraps it.
    pub fn decide(&self, check: &CheckRequest) -> CheckResponse {
        let started = Instant::now();
        // A guard, not a clone: the rule set cannot be freed under us, and no `.await` happens while held.
        let policy = self.store.current();
        let request = convert::egress_request(check);
        let decision = policy.decide(&request);
        let response = convert::to_check_response(&decision, request.protocol());
        let elapsed = started.elapsed();
        metrics::record_check(&policy, &decision, request.protocol(), elapsed);
        self.log
            .record(&decision, &request, convert::request_id(check), elapsed);
        response
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(self.decide(request.get_ref())))
    }
}
