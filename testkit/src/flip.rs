//! The two rule sets reload and fault tests flip a server between, the check that tells them apart, and
//! the server's own account of a reload's outcome: its reload counters and `/rules`' `last_reload_error`.

use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tonic::transport::Channel;

use crate::check::{is_allowed, mk_http_check, reason_of, spiffe};
use crate::files::rules_allowing;
use crate::grpc::check;
use crate::server::Server;
use crate::wait::poll_until;

/// Reload attempts that changed the rule set or failed, by `result` (`success`, `failure`).
pub const RELOADS_TOTAL: &str = "egress_authz_reloads_total";

/// Rule set A: namespace `default` may reach `a.example.com` only.
pub fn rules_a() -> String {
    rules_allowing("allow-a", "a.example.com")
}

/// Rule set B: namespace `default` may reach `b.example.com` only.
pub fn rules_b() -> String {
    rules_allowing("allow-b", "b.example.com")
}

/// A check from namespace `default` to `host`.
pub fn check_to(namespace: &str, host: &str) -> CheckRequest {
    mk_http_check(&spiffe(namespace, "sleep"), host, 443, "GET", "/")
}

/// Allowed by A, denied by B.
pub fn check_a() -> CheckRequest {
    check_to("default", "a.example.com")
}

/// Asserts whether [`check_a`] is allowed now; `context` names the moment in the failure message.
pub async fn assert_allowed(
    client: &mut AuthorizationClient<Channel>,
    allowed: bool,
    context: &str,
) {
    let response = check(client, check_a()).await;
    assert_eq!(
        is_allowed(&response),
        allowed,
        "{context}: reason {:?}",
        reason_of(&response)
    );
}

/// `egress_authz_reloads_total{result}` as the server reports it now.
pub async fn reloads(server: &Server, result: &str) -> f64 {
    server
        .metrics()
        .await
        .get(RELOADS_TOTAL, &[("result", result)])
        .expect("reloads_total is pre-registered")
}

/// Waits until `egress_authz_reloads_total{result="failure"}` is above `failures`; false if it is not
/// within `give_up`.
pub async fn failure_counted(server: &Server, failures: f64, give_up: Duration) -> bool {
    let counted = poll_until(give_up, || async {
        (reloads(server, "failure").await > failures).then_some(())
    });
    counted.await.is_some()
}

/// The `last_reload_error` in a `/rules` answer, which must be there and contain `error_contains`.
pub fn reload_error(status: &serde_json::Value, error_contains: &str) -> String {
    let error = status["last_reload_error"].as_str();
    let error = error.unwrap_or_else(|| panic!("/rules has no last_reload_error: {status}"));
    assert!(
        error.contains(error_contains),
        "last_reload_error {error:?} lacks {error_contains:?}"
    );
    error.to_owned()
}

/// Waits until `/rules` shows no `last_reload_error`; false if it does not within `give_up`.
pub async fn error_cleared(server: &Server, give_up: Duration) -> bool {
    let cleared = poll_until(give_up, || async {
        let status = server.rules_status().await;
        status["last_reload_error"].is_null().then_some(())
    });
    cleared.await.is_some()
}
