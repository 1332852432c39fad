//! The admin HTTP listener: `/healthz`, `/readyz`, `/metrics` (Prometheus text), `/rules` (JSON, with
//! each tenant file's state under `tenants`) and
//! `/traffic` (the traffic inventory, JSON). Only here, never on the gRPC port: the inventory says who
//! talks to what, and the deploy bundle lets only monitoring and operators reach this port.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::UNIX_EPOCH;

use crate::metrics::{Metrics, TenantSeries};
use crate::reload::{RuleStore, TenantStatus};
use crate::traffic::TrafficInventory;
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
    /// The traffic inventory, unless it is turned off.
    pub(crate) traffic: Option<Arc<TrafficInventory>>,
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
        .route("/traffic", get(traffic))
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
    let tenants: Vec<TenantSeries<'_>> = status
        .tenants
        .iter()
        .map(|tenant| TenantSeries {
            tenant: &tenant.namespace,
            rules: tenant.rules,
            valid: tenant.last_error.is_none(),
        })
        .collect();
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(
            status.live.policy.digest(),
            status.last_error.is_some(),
            &tenants,
        ),
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
        "tenant_rules_path": state.store.tenant_dir().map(|dir| dir.display().to_string()),
        "tenant_rules_error": status.tenant_dir_error,
        "tenants": status.tenants.iter().map(tenant_json).collect::<Vec<_>>(),
    }))
}

/// One tenant in `/rules`: what serves (digest, rule count, since when) and what is wrong on disk.
fn tenant_json(tenant: &TenantStatus) -> serde_json::Value {
    let unix_seconds = |at: std::time::SystemTime| {
        at.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
    };
    serde_json::json!({
        "namespace": tenant.namespace,
        "file": tenant.file.display().to_string(),
        "sha256": tenant.sha256,
        "rules": tenant.rules,
        "last_error": tenant.last_error,
        "last_reload_success_unix_seconds": tenant.last_reload_success.map(unix_seconds),
    })
}

async fn traffic(
    State(state): State<AdminState>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let Some(inventory) = state.traffic else {
        return (
            StatusCode::NOT_FOUND,
            [("content-type", "text/plain; charset=utf-8")],
            "the traffic inventory is off (--traffic-max-entries 0)\n".to_owned(),
        );
    };
    // A snapshot of 100k flows takes milliseconds: off the async workers.
    let trust_domains = state
        .store
        .current()
        .policy
        .settings()
        .trust_domains
        .clone();
    match tokio::task::spawn_blocking(move || inventory.snapshot(&trust_domains).to_json()).await {
        Ok(document) => (
            StatusCode::OK,
            [("content-type", "application/json")],
            document,
        ),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain; charset=utf-8")],
            format!("cannot take a snapshot of the traffic inventory: {error}\n"),
        ),
    }
}
