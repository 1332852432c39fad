//! `serve`: load the rules (fail fast), then run the gRPC server and the admin listener until
//! SIGTERM/SIGINT, then drain.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_health::ServingStatus;

use crate::admin_http::{self, AdminState};
use crate::cli::ServeArgs;
use crate::decision_log::{DecisionLog, Sampling};
use crate::grpc::AuthzService;
use crate::grpc::admin::{AdminService, pb};
use crate::grpc::endpoint::{CheckEndpoint, Limits};
use crate::listener::OpenConnections;
use crate::reload::{LoadError, RuleStore, load_policy};
use crate::{metrics, telemetry};
use tonic::transport::server::Router;

/// The gRPC service name Envoy's health checks and Kubernetes gRPC probes ask about.
pub const AUTHZ_SERVICE_NAME: &str = crate::grpc::endpoint::SERVICE_NAME;

/// The shortest period of the task that ends deny-sampling intervals.
const MIN_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// Fallback drain deadline should adding the grace period to now overflow.
const MAX_DEADLINE: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// Runs the server; returns when it has shut down.
pub fn serve(args: ServeArgs) -> ExitCode {
    // Held to the end of `serve`, so the lines still queued are written before the process exits.
    let _log_guard = telemetry::init(args.log_format);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = args.worker_threads {
        runtime.worker_threads(threads.max(1));
    }
    let result = runtime
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "Exiting");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let policy = match load_policy(&args.rules) {
        Ok(policy) => policy,
        Err(LoadError::Invalid(errors)) => {
            for error in &errors {
                tracing::error!(%error, "Invalid rule file");
            }
            anyhow::bail!(
                "{} error(s) in the rules at {}",
                errors.len(),
                args.rules.display()
            );
        }
        Err(error) => return Err(error).context("cannot load the rules"),
    };
    let prometheus =
        metrics::install(args.rule_metrics).context("cannot install the metrics recorder")?;
    let store = Arc::new(RuleStore::new(args.rules.clone(), policy));

    let grpc_listener = bind(args.grpc_addr, "gRPC").await?;
    let admin_listener = bind(args.admin_addr, "admin").await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    // Two stop signals: the gRPC side (and the reload triggers) stop when shutdown begins; the admin
    // listener stays up through the drain so `/readyz` answers 503 and `/metrics` can still be scraped.
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let shutting_down = Arc::new(AtomicBool::new(false));
    crate::watch::spawn(Arc::clone(&store), shutdown_rx.clone());

    let decision_log = Arc::new(DecisionLog::new(
        args.decision_log,
        args.decision_log_level,
        Sampling {
            limit: args.decision_log_sample_limit,
            interval: args.decision_log_sample_interval,
        },
    ));
    let flusher = tokio::spawn(flush_suppressed(
        Arc::clone(&decision_log),
        shutdown_rx.clone(),
    ));
    let (incoming, connections) =
        crate::listener::incoming(grpc_listener, args.max_connections as usize);
    let (health, router) = grpc_router(
        Arc::clone(&store),
        Arc::clone(&decision_log),
        &GrpcLimits::from(&args),
        connections,
    )?;
    health.set_service_status("", ServingStatus::Serving).await;
    health
        .set_service_status(AUTHZ_SERVICE_NAME, ServingStatus::Serving)
        .await;
    let grpc = router.serve_with_incoming_shutdown(incoming, wait_for(shutdown_rx.clone()));
    let admin = axum::serve(
        admin_listener,
        admin_http::router(AdminState {
            store: Arc::clone(&store),
            prometheus,
            shutting_down: Arc::clone(&shutting_down),
        }),
    )
    .with_graceful_shutdown(wait_for(admin_stop_rx));

    let status = store.status();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        %grpc_addr,
        %admin_addr,
        rules_sha256 = %status.digest,
        rules = status.rules,
        rules_path = %args.rules.display(),
        "Serving"
    );

    let grpc_task = tokio::spawn(grpc);
    let admin_task = tokio::spawn(async move { admin.await });

    let signal = shutdown_signal().await;
    let started = tokio::time::Instant::now();
    // `parse_duration` bounds both durations, so this cannot overflow; saturate anyway.
    let deadline = started
        .checked_add(args.shutdown_grace)
        .unwrap_or_else(|| started + MAX_DEADLINE);
    tracing::info!(signal, grace = ?args.shutdown_grace, delay = ?args.shutdown_delay, "Shutting down; draining in-flight checks");
    // Not ready and NOT_SERVING first; then, after --shutdown-delay (time for Envoy's health checks and
    // Kubernetes endpoints to notice), stop accepting and let in-flight RPCs finish (tonic sends each
    // connection a GOAWAY), all within the grace period.
    shutting_down.store(true, Ordering::Release);
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_service_status(AUTHZ_SERVICE_NAME, ServingStatus::NotServing)
        .await;
    tokio::time::sleep_until(deadline.min(started + args.shutdown_delay)).await;
    let _ = shutdown_tx.send(true);

    let grpc = tokio::time::timeout_at(deadline, grpc_task).await;
    let _ = admin_stop_tx.send(true);
    let admin = tokio::time::timeout_at(deadline, admin_task).await;
    let _ = flusher.await;
    decision_log.flush();
    match (grpc, admin) {
        (Ok(grpc), Ok(admin)) => {
            grpc.context("gRPC server task failed")?
                .context("gRPC server failed")?;
            admin
                .context("admin server task failed")?
                .context("admin server failed")?;
            tracing::info!("Stopped");
        }
        _ => tracing::warn!(
            grace = ?args.shutdown_grace,
            "Grace period over; exiting with requests in flight"
        ),
    }
    Ok(())
}

/// Limits of the gRPC server, from `serve`'s flags.
#[derive(Clone, Copy, Debug)]
pub struct GrpcLimits {
    /// Largest CheckRequest (and Explain request) read.
    pub max_request_bytes: usize,
    /// Checks in flight past which new ones are shed.
    pub max_checks_in_flight: usize,
    /// HTTP/2 streams per connection.
    pub max_streams_per_connection: u32,
}

impl From<&ServeArgs> for GrpcLimits {
    fn from(args: &ServeArgs) -> Self {
        Self {
            max_request_bytes: args.max_request_bytes,
            max_checks_in_flight: args.max_checks_in_flight as usize,
            max_streams_per_connection: args.max_streams_per_connection,
        }
    }
}

/// Everything the gRPC port serves (Check, health, reflection, the admin Explain), built in one place
/// for `serve` and for tests. Returns the health reporter, which starts out with no status set.
pub fn grpc_router(
    store: Arc<RuleStore>,
    decision_log: Arc<DecisionLog>,
    limits: &GrpcLimits,
    connections: OpenConnections,
) -> anyhow::Result<(tonic_health::server::HealthReporter, Router)> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let (reflection, reflection_v1alpha) =
        crate::grpc::admin::reflection_services().context("cannot build the reflection service")?;
    let check = CheckEndpoint::new(
        AuthzService::new(Arc::clone(&store), decision_log),
        Limits {
            max_message_bytes: limits.max_request_bytes,
            max_in_flight: limits.max_checks_in_flight,
        },
        connections,
    );
    let router = tonic::transport::Server::builder()
        // Bounds per connection; `listener::incoming` bounds the connections (and sets TCP_NODELAY,
        // which tonic's own option would not do on an incoming stream).
        .max_concurrent_streams(limits.max_streams_per_connection)
        // h2 answers more than this many streams reset before the server accepted them with a GOAWAY
        // for the whole connection (its rapid-reset defence, default 20). Envoy resets a check when its
        // timeout fires, so under overload a burst of those would fail every check on the connection,
        // which `failOpen` turns into allows. Allow as many as a connection may have streams.
        .http2_max_pending_accept_reset_streams(Some(limits.max_streams_per_connection as usize))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(check)
        .add_service(
            pb::admin_server::AdminServer::new(AdminService::new(store))
                .max_decoding_message_size(limits.max_request_bytes),
        );
    Ok((health, router))
}

/// Ends deny-sampling intervals on time, so what a flood suppressed is reported once it stops, not
/// only when the next deny arrives.
async fn flush_suppressed(log: Arc<DecisionLog>, mut shutdown: watch::Receiver<bool>) {
    // Half the interval: a key's interval starts at its first deny, not on a tick.
    let interval = (log.sampling().interval / 2).max(MIN_FLUSH_INTERVAL);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => log.flush_expired(),
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr}"))
}

async fn wait_for(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Waits for SIGTERM (Kubernetes) or SIGINT (Ctrl-C); returns the signal's name.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            _ => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
