//! Bounded waiting: every wait in the suites has a deadline, so a hang fails a test instead of stalling
//! the run, and nothing sleeps for readiness (a wait polls a readiness signal).

use std::future::Future;
use std::time::{Duration, Instant};

/// How long a server may take to log "Serving" (a cold debug binary on a busy 2-core machine).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for one RPC or admin request.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `poll_until` looks again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Bound for a whole test.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs a test body with a bound, so a hang fails the test instead of stalling the suite.
pub async fn bounded<T>(body: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .expect("test took longer than TEST_TIMEOUT")
}

/// Calls `f` every `POLL_INTERVAL` until it returns `Some`, or `None` once `timeout` has passed.
pub async fn poll_until<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// [`poll_until`] whose timeout is an error naming `what` was awaited (for `?` in setup code).
pub async fn poll_for<T, F, Fut>(timeout: Duration, what: &str, f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_until(timeout, f)
        .await
        .ok_or_else(|| format!("timed out after {timeout:?} waiting for {what}"))
}
