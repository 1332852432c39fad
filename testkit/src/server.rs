//! The real `egress-authz` binary as a child process, the one way every suite starts it.
//!
//! `ServerBuilder::new(rules).spawn()` starts `egress-authz serve` with `--log-format json` on ephemeral
//! ports and returns once the server has logged its "Serving" line (the readiness signal: it is logged
//! after both listeners are bound and the rules are loaded), so no test sleeps for readiness. The
//! child is killed when the `Server` is dropped. Every stderr line is kept, so tests can wait for a
//! log event with a deadline. The `Server` also has gRPC clients, the admin endpoints and `/metrics`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

use crate::http::http_get;
use crate::prom::Metrics;
use crate::wait::{POLL_INTERVAL, RPC_TIMEOUT, STARTUP_TIMEOUT};

/// Where the server binary is: `EGRESS_AUTHZ_BIN` if set; else the `egress-authz` that Cargo built
/// next to the running executable (a test in `target/<profile>/deps`, an example in
/// `target/<profile>/examples`, both one level below the binaries), which Cargo builds before it runs
/// an integration test of the package.
pub fn server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("EGRESS_AUTHZ_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the running executable's path");
    let mut dir = exe.parent().expect("an executable is in a directory");
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir = dir
            .parent()
            .expect("deps/ and examples/ are in the profile directory");
    }
    dir.join(format!("egress-authz{}", std::env::consts::EXE_SUFFIX))
}

/// Options for one `egress-authz serve` process.
#[derive(Debug)]
pub struct ServerBuilder {
    rules: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    uid: Option<u32>,
    stderr_file: Option<PathBuf>,
}

impl ServerBuilder {
    /// A server reading `rules` (a file or a directory).
    pub fn new(rules: impl Into<PathBuf>) -> Self {
        Self {
            rules: rules.into(),
            args: Vec::new(),
            env: Vec::new(),
            uid: None,
            stderr_file: None,
        }
    }

    /// Adds command-line arguments after `serve`.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable (e.g. `RUST_LOG`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Runs the server as another user (for permission tests when the test runs as root).
    pub fn uid(mut self, uid: u32) -> Self {
        self.uid = Some(uid);
        self
    }

    /// Sends stderr to the file `path` (created or appended to) instead of a pipe, so a test can put
    /// the server's log on a filesystem of its choosing. `Server::logs` then follows the file.
    pub fn stderr_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.stderr_file = Some(path.into());
        self
    }

    fn command(&self) -> Command {
        let mut command = Command::new(server_bin());
        command
            .arg("serve")
            .arg("--rules")
            .arg(&self.rules)
            .args([
                "--grpc-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .args(&self.args)
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(uid) = self.uid {
            command.uid(uid).gid(uid);
        }
        command
    }

    /// Starts the server and waits for its "Serving" line.
    pub async fn spawn(self) -> Server {
        match self.try_spawn().await {
            Ok(server) => server,
            Err(failure) => panic!("server did not start: {failure}"),
        }
    }

    /// Starts the server; `Err` carries the exit status and stderr if it exited before serving.
    pub async fn try_spawn(self) -> Result<Server, StartFailure> {
        let mut command = self.command();
        if let Some(path) = &self.stderr_file {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("open the stderr file");
            command.stderr(file);
        }
        let mut child = command.spawn().expect("spawn egress-authz");
        let logs = Logs::default();
        let reader_logs = logs.clone();
        let (log_reading, mut reading) = tokio::sync::watch::channel(true);
        let reader = match (&self.stderr_file, child.stderr.take()) {
            (Some(path), _) => tokio::spawn(follow_file(path.clone(), reader_logs)),
            (None, Some(stderr)) => tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                // While paused, nothing is read: the pipe fills up as behind a stuck log collector.
                while reading.wait_for(|go| *go).await.is_ok() {
                    let Ok(Some(line)) = lines.next_line().await else {
                        break;
                    };
                    reader_logs.push(line);
                }
                reader_logs.close();
            }),
            (None, None) => panic!("stderr is piped"),
        };
        let serving = logs
            .wait_for(STARTUP_TIMEOUT, |line| message_of(line) == Some("Serving"))
            .await;
        let Some(serving) = serving else {
            let status = tokio::time::timeout(STARTUP_TIMEOUT, child.wait()).await;
            let stderr = match &self.stderr_file {
                // A followed file never ends: read what the exited server left in it.
                Some(path) => {
                    reader.abort();
                    std::fs::read_to_string(path).unwrap_or_default()
                }
                None => {
                    let _ = tokio::time::timeout(RPC_TIMEOUT, reader).await;
                    logs.snapshot().join("\n")
                }
            };
            return Err(StartFailure {
                status: status.ok().and_then(Result::ok),
                stderr,
            });
        };
        let fields = &serving["fields"];
        let addr = |key: &str| -> SocketAddr {
            fields[key]
                .as_str()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("Serving line without {key}: {serving}"))
        };
        Ok(Server {
            grpc_addr: addr("grpc_addr"),
            admin_addr: addr("admin_addr"),
            serving,
            rules: self.rules,
            child,
            logs,
            reader,
            log_reading,
        })
    }
}

/// Feeds `logs` with the lines appended to the file at `path`, looking again every `POLL_INTERVAL`
/// at its end; runs until aborted (when the `Server` is dropped).
async fn follow_file(path: PathBuf, logs: Logs) {
    let Ok(file) = tokio::fs::File::open(&path).await else {
        logs.close();
        return;
    };
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    loop {
        match reader.read_line(&mut line).await {
            Ok(0) => tokio::time::sleep(POLL_INTERVAL).await,
            // Only whole lines: the rest of a partly written one comes with the next read.
            Ok(_) if line.ends_with('\n') => {
                logs.push(line.trim_end().to_owned());
                line.clear();
            }
            Ok(_) => {}
            Err(_) => {
                logs.close();
                return;
            }
        }
    }
}

/// Why a server did not start.
#[derive(Debug)]
pub struct StartFailure {
    /// Its exit status, if it exited.
    pub status: Option<ExitStatus>,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {:?}; stderr:\n{}", self.status, self.stderr)
    }
}

/// The `fields.message` of a JSON log line.
pub fn message_of(line: &serde_json::Value) -> Option<&str> {
    line["fields"]["message"].as_str()
}

/// Stderr lines of a server, parsed as JSON where they are JSON.
#[derive(Clone, Debug, Default)]
pub struct Logs {
    inner: Arc<(Mutex<LogLines>, Notify)>,
}

#[derive(Debug, Default)]
struct LogLines {
    lines: Vec<String>,
    closed: bool,
}

impl Logs {
    fn push(&self, line: String) {
        self.inner.0.lock().expect("log lock").lines.push(line);
        self.inner.1.notify_waiters();
    }

    fn close(&self) {
        self.inner.0.lock().expect("log lock").closed = true;
        self.inner.1.notify_waiters();
    }

    /// Every line so far.
    pub fn snapshot(&self) -> Vec<String> {
        self.inner.0.lock().expect("log lock").lines.clone()
    }

    /// Every JSON line so far.
    pub fn json(&self) -> Vec<serde_json::Value> {
        self.snapshot()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// JSON lines whose message is `message`.
    pub fn with_message(&self, message: &str) -> Vec<serde_json::Value> {
        self.json()
            .into_iter()
            .filter(|line| message_of(line) == Some(message))
            .collect()
    }

    /// Waits until a JSON line satisfies `pred` (looking at earlier lines too); `None` after `timeout`
    /// or when stderr closed without one.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = 0;
        loop {
            let notified = self.inner.1.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (fresh, closed) = {
                let state = self.inner.0.lock().expect("log lock");
                (state.lines[seen..].to_vec(), state.closed)
            };
            seen += fresh.len();
            if let Some(hit) = fresh
                .iter()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .find(|line| pred(line))
            {
                return Some(hit);
            }
            if closed {
                return None;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

/// A running `egress-authz serve`; killed on drop.
#[derive(Debug)]
pub struct Server {
    /// The gRPC listener.
    pub grpc_addr: SocketAddr,
    /// The admin HTTP listener.
    pub admin_addr: SocketAddr,
    /// The "Serving" log line.
    pub serving: serde_json::Value,
    /// The rules path it was started with.
    pub rules: PathBuf,
    /// Its stderr.
    pub logs: Logs,
    child: Child,
    /// Reads stderr into `logs`.
    reader: tokio::task::JoinHandle<()>,
    /// Whether `reader` may read (see [`Server::pause_log_reading`]).
    log_reading: tokio::sync::watch::Sender<bool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // A file follower would otherwise poll until the runtime ends.
        self.reader.abort();
    }
}

impl Server {
    /// Stops reading the server's stderr pipe (after the line being read), so it fills up like
    /// behind a log collector that hangs; `resume_log_reading` reads on.
    pub fn pause_log_reading(&self) {
        self.log_reading.send_replace(false);
    }

    /// Reads the server's stderr again after [`Self::pause_log_reading`].
    pub fn resume_log_reading(&self) {
        self.log_reading.send_replace(true);
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("server still running")
    }

    /// A gRPC channel to the server.
    pub async fn channel(&self) -> Channel {
        let endpoint = Channel::from_shared(format!("http://{}", self.grpc_addr))
            .expect("valid URI")
            .connect_timeout(RPC_TIMEOUT)
            .timeout(RPC_TIMEOUT);
        endpoint.connect().await.expect("connect to the gRPC port")
    }

    /// An ext_authz client.
    pub async fn authz(&self) -> AuthorizationClient<Channel> {
        AuthorizationClient::new(self.channel().await)
    }

    /// A grpc.health.v1 client.
    pub async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel().await)
    }

    /// GETs `path` on the admin port; returns the status code and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin_addr, path)
            .await
            .expect("admin request")
    }

    /// Scrapes and parses `/metrics`.
    pub async fn metrics(&self) -> Metrics {
        let (status, body) = self.admin_get("/metrics").await;
        assert_eq!(status, 200, "/metrics: {body}");
        Metrics::parse(&body)
    }

    /// `/rules` as JSON.
    pub async fn rules_status(&self) -> serde_json::Value {
        let (status, body) = self.admin_get("/rules").await;
        assert_eq!(status, 200, "/rules: {body}");
        serde_json::from_str(&body).expect("/rules is JSON")
    }

    /// Sends a signal by name (`HUP`, `TERM`, `INT`).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()
            .map(|status| status.expect("wait for the server"))
    }

    /// Stops reading the server's stderr pipe and closes its read end, so the server's next log write
    /// fails with EPIPE (a log collector that went away). `logs` sees nothing more.
    pub async fn close_stderr(&mut self) {
        self.reader.abort();
        // Wait until the task is gone: only then is the pipe's read end dropped.
        let _ = (&mut self.reader).await;
    }

    /// Waits (bounded) until `/readyz` answers 200: the rules are live and the gRPC port serves.
    pub async fn wait_ready(&self) -> Result<(), String> {
        let admin = self.admin_addr;
        crate::wait::poll_for(Duration::from_secs(10), "egress-authz /readyz", || async move {
            matches!(http_get(admin, "/readyz").await, Ok((200, _))).then_some(())
        })
        .await
    }

    /// The sum of the `/metrics` samples named `name` whose labels include `labels`; 0 when there are
    /// none or the scrape fails (for polling a counter that a change is expected to move).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match http_get(self.admin_addr, "/metrics").await {
            Ok((200, body)) => Metrics::parse(&body).sum(name, labels),
            _ => 0.0,
        }
    }

    /// Every stderr line so far, one per line.
    pub fn log_text(&self) -> String {
        self.logs.snapshot().join("\n")
    }

    /// SIGKILL and reap.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(RPC_TIMEOUT, self.child.wait()).await;
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}
