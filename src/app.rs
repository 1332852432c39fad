//! `serve`: load the rules (fail fast), then run the gRPC server and the admin listener until
//! SIGTERM/SIGINT, then drain.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::admin_http::{self, AdminState};
use crate::cli::{
    DEFAULT_MAX_CHECKS_IN_FLIGHT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_STREAMS_PER_CONNECTION, ServeArgs,
};
use crate::decision_log::{DecisionLog, Sampling};
use crate::grpc::AuthzService;
use crate::grpc::admin::{AdminService, pb};
use crate::grpc::endpoint::{CheckEndpoint, Limits};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::reload::{LoadError, RuleStore, load_policy};
use crate::telemetry;
use crate::traffic::TrafficInventory;
use crate::traffic::persist::Saver;

/// The gRPC service name Envoy's health checks and Kubernetes gRPC probes ask about.
pub(crate) const AUTHZ_SERVICE_NAME: &str = crate::grpc::endpoint::SERVICE_NAME;

/// The shortest period of the task that ends deny-sampling intervals.
const MIN_FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// Fallback drain deadline should adding the grace period to now overflow.
const MAX_DEADLINE: Duration = Duration::from_secs(24 * 60 * 60);

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
    let policy = load_rules(&args.rules)?;
    let metrics =
        Metrics::prometheus(args.rule_metrics).context("cannot set up the metrics registry")?;
    let store = Arc::new(rule_store(&args, policy, &metrics)?);
    let grpc_listener = bind(args.grpc_addr, "gRPC").await?;
    let admin_listener = bind(args.admin_addr, "admin").await?;
    let (grpc_addr, admin_addr) = (grpc_listener.local_addr()?, admin_listener.local_addr()?);
    let (traffic, saver) = traffic_inventory(&args, &store, &metrics).await?;
    let stop = Stop::new();
    crate::watch::spawn(Arc::clone(&store), stop.grpc.subscribe());
    let decision_log = Arc::new(decision_log(&args));
    let flusher = tokio::spawn(flush_suppressed(
        Arc::clone(&decision_log),
        stop.grpc.subscribe(),
    ));
    let services = GrpcServices {
        store: Arc::clone(&store),
        decision_log: Arc::clone(&decision_log),
        metrics: metrics.clone(),
        traffic: traffic.clone(),
    };
    let limits = GrpcLimits::from(&args);
    let (health, grpc) = grpc_server(grpc_listener, services, &limits, stop.grpc_stopped())?;
    set_serving(&health, true).await;
    let admin_state = AdminState {
        store: Arc::clone(&store),
        metrics,
        traffic,
        shutting_down: Arc::clone(&stop.shutting_down),
    };
    let admin = axum::serve(admin_listener, admin_http::router(admin_state))
        .with_graceful_shutdown(stop.admin_stopped());
    let live = store.current();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        %grpc_addr,
        %admin_addr,
        rules_sha256 = %live.policy.digest(),
        rules = live.policy.rules().len(),
        rules_path = %args.rules.display(),
        tenants = store.status().tenants.len(),
        "Serving"
    );
    drop(live);
    if let Some(saver) = &saver {
        tokio::spawn(
            saver
                .clone()
                .save_periodically(args.traffic_file_interval, stop.grpc.subscribe()),
        );
    }
    let running = Running {
        health,
        grpc: tokio::spawn(grpc),
        admin: tokio::spawn(async move { admin.await }),
        flusher,
        decision_log,
        saver,
    };
    let signal = shutdown_signal().await;
    running
        .drain(stop, signal, args.shutdown_grace, args.shutdown_delay)
        .await
}

/// The traffic inventory `serve`'s flags ask for, and what saves it to a file when they name one.
async fn traffic_inventory(
    args: &ServeArgs,
    store: &Arc<RuleStore>,
    metrics: &Metrics,
) -> anyhow::Result<(Option<Arc<TrafficInventory>>, Option<Saver>)> {
    if args.traffic_max_entries == 0 {
        anyhow::ensure!(
            args.traffic_file.is_none(),
            "--traffic-file needs the traffic inventory, which --traffic-max-entries 0 turns off"
        );
        return Ok((None, None));
    }
    let inventory = Arc::new(TrafficInventory::new(
        args.traffic_max_entries,
        metrics.clone(),
    ));
    let Some(path) = args.traffic_file.clone() else {
        return Ok((Some(inventory), None));
    };
    let store = Arc::clone(store);
    let saver = Saver {
        inventory: Arc::clone(&inventory),
        trust_domains: Arc::new(move || store.current().policy.settings().trust_domains.clone()),
        metrics: metrics.clone(),
        path,
    };
    let path = saver.path.display().to_string();
    let saver = saver
        .open()
        .await
        .with_context(|| format!("cannot keep the traffic inventory in {path}"))?;
    Ok((Some(inventory), Some(saver)))
}

/// The decision log `serve`'s flags ask for.
fn decision_log(args: &ServeArgs) -> DecisionLog {
    DecisionLog::new(
        args.decision_log,
        args.decision_log_level,
        Sampling {
            limit: args.decision_log_sample_limit,
            interval: args.decision_log_sample_interval,
        },
    )
}

/// How `serve` stops. Two signals: the gRPC side (and the reload triggers) stop when shutdown begins;
/// the admin listener stays up through the drain so `/readyz` answers 503 and `/metrics` can still be
/// scraped.
struct Stop {
    grpc: watch::Sender<bool>,
    admin: watch::Sender<bool>,
    /// Set once shutdown begins; `/readyz` then fails.
    shutting_down: Arc<AtomicBool>,
}

impl Stop {
    fn new() -> Self {
        Self {
            grpc: watch::Sender::new(false),
            admin: watch::Sender::new(false),
            shutting_down: Arc::new(AtomicBool::new(false)),
        }
    }

    fn grpc_stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        wait_for(self.grpc.subscribe())
    }

    fn admin_stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        wait_for(self.admin.subscribe())
    }
}

/// The servers and tasks `serve` started, to drain once a signal arrives.
struct Running {
    health: HealthReporter,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    admin: JoinHandle<std::io::Result<()>>,
    flusher: JoinHandle<()>,
    decision_log: Arc<DecisionLog>,
    /// Saves the traffic inventory one last time once no check is left.
    saver: Option<Saver>,
}

impl Running {
    /// Not ready and NOT_SERVING first; then, after `delay` (time for Envoy's health checks and
    /// Kubernetes endpoints to notice), stop accepting and let in-flight RPCs finish (tonic sends each
    /// connection a GOAWAY), all within `grace`.
    async fn drain(
        self,
        stop: Stop,
        signal: &str,
        grace: Duration,
        delay: Duration,
    ) -> anyhow::Result<()> {
        let started = tokio::time::Instant::now();
        // `parse_duration` bounds both durations, so this cannot overflow; saturate anyway.
        let deadline = started
            .checked_add(grace)
            .unwrap_or_else(|| started + MAX_DEADLINE);
        tracing::info!(
            signal,
            ?grace,
            ?delay,
            "Shutting down; draining in-flight checks"
        );
        stop.shutting_down.store(true, Ordering::Release);
        set_serving(&self.health, false).await;
        tokio::time::sleep_until(deadline.min(started + delay)).await;
        stop.grpc.send_replace(true);

        let grpc = tokio::time::timeout_at(deadline, self.grpc).await;
        stop.admin.send_replace(true);
        let admin = tokio::time::timeout_at(deadline, self.admin).await;
        let _ = self.flusher.await;
        self.decision_log.flush();
        if let Some(saver) = &self.saver {
            match saver.save().await {
                Ok(()) => {
                    tracing::info!(path = %saver.path.display(), "Saved the traffic inventory")
                }
                Err(error) => {
                    tracing::error!(path = %saver.path.display(), %error, "Cannot save the traffic inventory")
                }
            }
        }
        match (grpc, admin) {
            (Ok(grpc), Ok(admin)) => {
                grpc.context("gRPC server task failed")?
                    .context("gRPC server failed")?;
                admin
                    .context("admin server task failed")?
                    .context("admin server failed")?;
                tracing::info!("Stopped");
            }
            _ => tracing::warn!(?grace, "Grace period over; exiting with requests in flight"),
        }
        Ok(())
    }
}

/// The first load of the rules: every error is logged, and any of them stops the server from starting.
fn load_rules(path: &Path) -> anyhow::Result<Policy> {
    match load_policy(path) {
        Ok(policy) => Ok(policy),
        Err(LoadError::Invalid(errors)) => {
            for error in &errors {
                tracing::error!(%error, "Invalid rule file");
            }
            anyhow::bail!(
                "{} error(s) in the rules at {}",
                errors.len(),
                path.display()
            );
        }
        Err(error) => Err(error).context("cannot load the rules"),
    }
}

/// The store of live rules: the platform rules, and the tenant files when `--tenant-rules` names a
/// directory (where a bad file is rejected alone, so the server starts without it).
fn rule_store(args: &ServeArgs, policy: Policy, metrics: &Metrics) -> anyhow::Result<RuleStore> {
    let Some(dir) = &args.tenant_rules else {
        return Ok(RuleStore::new(args.rules.clone(), policy, metrics.clone()));
    };
    // Platform files read as tenant files (or the reverse) would let a platform file be overruled by
    // the guardrails meant for teams, and every platform file would fail as a tenant file.
    let canonical =
        |path: &Path| std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let (rules, tenants) = (canonical(&args.rules), canonical(dir));
    anyhow::ensure!(
        !rules.starts_with(&tenants) && !tenants.starts_with(&rules),
        "--tenant-rules {} and --rules {} must not overlap",
        dir.display(),
        args.rules.display()
    );
    RuleStore::with_tenants(args.rules.clone(), policy, dir.clone(), metrics.clone())
        .context("cannot read the tenant rules directory")
}

/// Limits of the gRPC server, from `serve`'s flags.
#[derive(Clone, Copy, Debug)]
pub struct GrpcLimits {
    /// Largest CheckRequest (and Explain request) read.
    pub max_request_bytes: usize,
    /// Checks in flight past which new ones are shed.
    pub max_checks_in_flight: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// HTTP/2 streams per connection.
    pub max_streams_per_connection: u32,
}

impl From<&ServeArgs> for GrpcLimits {
    fn from(args: &ServeArgs) -> Self {
        Self {
            max_request_bytes: args.max_request_bytes,
            max_checks_in_flight: args.max_checks_in_flight as usize,
            max_connections: args.max_connections as usize,
            max_streams_per_connection: args.max_streams_per_connection,
        }
    }
}

/// `serve`'s defaults.
impl Default for GrpcLimits {
    fn default() -> Self {
        Self {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_checks_in_flight: DEFAULT_MAX_CHECKS_IN_FLIGHT as usize,
            max_connections: DEFAULT_MAX_CONNECTIONS as usize,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
        }
    }
}

/// What the gRPC services decide from, log to and count in.
#[derive(Clone, Debug)]
pub struct GrpcServices {
    /// The live rules.
    pub store: Arc<RuleStore>,
    /// Where decisions are logged.
    pub decision_log: Arc<DecisionLog>,
    /// Where checks are counted.
    pub metrics: Metrics,
    /// Where every check's flow is counted (learn mode), unless the inventory is off.
    pub traffic: Option<Arc<TrafficInventory>>,
}

/// The gRPC server on `listener` as `serve` runs it (Check, health, reflection, the admin Explain,
/// within `limits`), until `shutdown` completes; built in one place for `serve` and for tests. Returns
/// the health reporter, which starts out with no status set (see [`set_serving`]), and the server to
/// spawn.
pub fn grpc_server(
    listener: TcpListener,
    services: GrpcServices,
    limits: &GrpcLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(
    HealthReporter,
    impl Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
)> {
    let (incoming, connections) = crate::listener::incoming(listener, limits.max_connections);
    let (health, health_service) = tonic_health::server::health_reporter();
    let (reflection, reflection_v1alpha) =
        crate::grpc::admin::reflection_services().context("cannot build the reflection service")?;
    let GrpcServices {
        store,
        decision_log,
        metrics,
        traffic,
    } = services;
    let check = CheckEndpoint::new(
        AuthzService::new(Arc::clone(&store), decision_log, metrics).recording_traffic(traffic),
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
    Ok((
        health,
        router.serve_with_incoming_shutdown(incoming, shutdown),
    ))
}

/// Reports the server and the Check service as SERVING or NOT_SERVING to gRPC health checks.
pub async fn set_serving(health: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
    health.set_service_status(AUTHZ_SERVICE_NAME, status).await;
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
