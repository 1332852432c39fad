//! The admin HTTP listener: `/healthz`, `/readyz`, `/metrics` (Prometheus text) and `/rules` (JSON).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::UNIX_EPOCH;

use crate::metrics::Metrics;
use crate::reload::RuleStore;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

/// What the admin endpoints read.
#[derive(Clone, Debug)]
pub(crate) struct AdminState {
    /// The live rules.
    pub(crate) store: Arc<RuleStore>,
    /// Renders the metrics.
    pub(crate) metrics: Metrics,
    /// Set once shutdown begins; `/readyz` then fails so load balancers stop sending.
    pub(crate) shutting_down: Arc<AtomicBool>,
}

/// The admin routes.
pub(crate) fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/rules", get(rules))
        .route("/status", get(rules))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    // Rules are always loaded once the listener exists (startup fails fast otherwise).
    if state.shutting_down.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics(State(state): State<AdminState>) -> ([(&'static str, &'static str); 1], String) {
    let status = state.store.status();
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        state
            .metrics
            .render(status.live.policy.digest(), status.last_error.is_some()),
    )
}

async fn rules(State(state): State<AdminState>) -> axum::Json<serde_json::Value> {
    let status = state.store.status();
    let (policy, loaded_at) = (&status.live.policy, status.live.loaded_at);
    let loaded_at = loaded_at.duration_since(UNIX_EPOCH).unwrap_or_default();
    axum::Json(serde_json::json!({
        "sha256": policy.digest(),
        "rules": policy.rules().len(),
        "files": policy.files(),
        "path": state.store.path().display().to_string(),
        "last_reload_success_unix_seconds": loaded_at.as_secs_f64(),
        "last_reload_error": status.last_error,
        "warnings": status.warnings,
    }))
}
