//! Shared harness for integration tests that run the real `egress-authz` binary over 127.0.0.1.
//!
//! `ServerBuilder::new(rules).spawn()` starts `egress-authz serve` with `--log-format json` on ephemeral
//! ports and returns once the server has logged its "Serving" line (the readiness signal: it is logged
//! after both listeners are bound and the rules are loaded), so no test sleeps for readiness. The
//! child is killed when the `Server` is dropped. Every stderr line is kept, so tests can wait for a
//! log event with a deadline. It also holds the Check builders (`mk_http_check`, `mk_tcp_check`), a
//! tiny HTTP/1.1 client for the admin port and a Prometheus text parser.
//!
//! Test crates use different subsets of this module.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request, TlsSession,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

/// How long a server may take to log "Serving" (a cold debug binary on a busy 2-core machine).
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for one RPC or admin request.
pub(crate) const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `poll_until` looks again.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Bound for a whole test.
pub(crate) const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs a test body with a bound, so a hang fails the test instead of stalling the suite.
pub(crate) async fn bounded<T>(body: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .expect("test took longer than TEST_TIMEOUT")
}

/// The SPIFFE principal of a workload in `namespace` running as `service_account`.
pub(crate) fn spiffe(namespace: &str, service_account: &str) -> String {
    format!("spiffe://cluster.local/ns/{namespace}/sa/{service_account}")
}

// === Check requests ===

fn peer_with_port(principal: &str, port: u16) -> Peer {
    Peer {
        principal: principal.to_owned(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "127.0.0.1".to_owned(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
                ..Default::default()
            })),
        }),
        ..Default::default()
    }
}

/// A check as Envoy's HTTP ext_authz filter sends it from an Istio egress gateway.
pub(crate) fn mk_http_check(
    principal: &str,
    host: &str,
    port: u16,
    method: &str,
    path: &str,
) -> CheckRequest {
    let headers = HashMap::from([
        (":authority".to_owned(), host.to_owned()),
        (":method".to_owned(), method.to_owned()),
        (":path".to_owned(), path.to_owned()),
    ]);
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: principal.to_owned(),
                ..Default::default()
            }),
            destination: Some(peer_with_port("", port)),
            request: Some(Request {
                http: Some(HttpRequest {
                    host: host.to_owned(),
                    method: method.to_owned(),
                    path: path.to_owned(),
                    headers,
                    protocol: "HTTP/1.1".to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// `mk_http_check` plus an `x-request-id` header.
pub(crate) fn mk_http_check_with_request_id(
    principal: &str,
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    request_id: &str,
) -> CheckRequest {
    let mut check = mk_http_check(principal, host, port, method, path);
    if let Some(http) = check
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        http.headers
            .insert("x-request-id".to_owned(), request_id.to_owned());
    }
    check
}

/// A check as Envoy's network (TCP) ext_authz filter sends it, with the TLS SNI.
pub(crate) fn mk_tcp_check(principal: &str, sni: &str, port: u16) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: principal.to_owned(),
                ..Default::default()
            }),
            destination: Some(peer_with_port("", port)),
            tls_session: Some(TlsSession {
                sni: sni.to_owned(),
            }),
            ..Default::default()
        }),
    }
}

/// True if the response lets the request through (`status.code == OK`).
pub(crate) fn is_allowed(response: &CheckResponse) -> bool {
    response.status.as_ref().map_or(0, |s| s.code) == 0
}

/// The reason code the server put in the response's dynamic metadata.
pub(crate) fn reason_of(response: &CheckResponse) -> Option<String> {
    use envoy_types::pb::google::protobuf::value::Kind;
    match response
        .dynamic_metadata
        .as_ref()?
        .fields
        .get("reason")?
        .kind
        .as_ref()?
    {
        Kind::StringValue(reason) => Some(reason.clone()),
        _ => None,
    }
}

// === Rule files ===

/// A rule set (default DENY) with one ALLOW rule named `rule` letting namespace `default` reach `host`.
pub(crate) fn rules_allowing(rule: &str, host: &str) -> String {
    format!(
        "defaultAction: DENY\nrules:\n- name: {rule}\n  from:\n    namespaces: [default]\n  to:\n    hosts: [{host}]\n"
    )
}

/// Rewrites a file in place: same inode, truncated then written (what `echo > file` and many editors do).
pub(crate) fn write_in_place(path: &Path, contents: &str) {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .open(path)
        .expect("open rule file for writing");
    file.write_all(contents.as_bytes())
        .expect("write rule file");
    file.sync_all().expect("sync rule file");
}

/// Writes a temporary file in the same directory and renames it over `path` (atomic replace).
pub(crate) fn write_by_rename(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, contents).expect("write temporary rule file");
    std::fs::rename(&tmp, path).expect("rename over rule file");
}

/// A directory laid out the way the kubelet projects a ConfigMap volume: the files live in a
/// timestamped `..<ts>` directory, `..data` is a symlink to it, and each key is a symlink
/// `<key> -> ..data/<key>`. `update` swaps the content the way the kubelet's AtomicWriter does.
#[derive(Debug)]
pub(crate) struct ConfigMapDir {
    dir: PathBuf,
    generation: u32,
}

impl ConfigMapDir {
    /// Projects `files` (key, content) into `dir`, which must exist.
    pub(crate) fn create(dir: &Path, files: &[(&str, &str)]) -> Self {
        let mut this = Self {
            dir: dir.to_path_buf(),
            generation: 0,
        };
        let ts = this.write_generation(files);
        std::os::unix::fs::symlink(&ts, dir.join("..data")).expect("symlink ..data");
        for (key, _) in files {
            std::os::unix::fs::symlink(Path::new("..data").join(key), dir.join(key))
                .expect("symlink key");
        }
        this
    }

    /// The mount directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replaces the content of the keys (the same key set) atomically: new timestamped directory, new
    /// symlink `..data_tmp`, rename it over `..data`, remove the old directory.
    pub(crate) fn update(&mut self, files: &[(&str, &str)]) {
        let old = std::fs::read_link(self.dir.join("..data")).expect("read ..data");
        let ts = self.write_generation(files);
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&ts, &tmp).expect("symlink ..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("rename ..data_tmp over ..data");
        std::fs::remove_dir_all(self.dir.join(old)).expect("remove the old generation");
    }

    fn write_generation(&mut self, files: &[(&str, &str)]) -> PathBuf {
        self.generation += 1;
        let ts = PathBuf::from(format!(
            "..2026_01_01_00_00_{:02}.{}",
            self.generation,
            std::process::id()
        ));
        let full = self.dir.join(&ts);
        std::fs::create_dir(&full).expect("create generation directory");
        for (key, contents) in files {
            std::fs::write(full.join(key), contents).expect("write ConfigMap key");
        }
        ts
    }
}

// === The server process ===

/// Options for one `egress-authz serve` process.
#[derive(Debug)]
pub(crate) struct ServerBuilder {
    rules: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    uid: Option<u32>,
    stderr_file: Option<PathBuf>,
}

impl ServerBuilder {
    /// A server reading `rules` (a file or a directory).
    pub(crate) fn new(rules: impl Into<PathBuf>) -> Self {
        Self {
            rules: rules.into(),
            args: Vec::new(),
            env: Vec::new(),
            uid: None,
            stderr_file: None,
        }
    }

    /// Adds command-line arguments after `serve`.
    pub(crate) fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable (e.g. `RUST_LOG`).
    pub(crate) fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Runs the server as another user (for permission tests when the test runs as root).
    pub(crate) fn uid(mut self, uid: u32) -> Self {
        self.uid = Some(uid);
        self
    }

    /// Sends stderr to the file `path` (created or appended to) instead of a pipe, so a test can put
    /// the server's log on a filesystem of its choosing. `Server::logs` then follows the file.
    pub(crate) fn stderr_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.stderr_file = Some(path.into());
        self
    }

    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_egress-authz"));
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
    pub(crate) async fn spawn(self) -> Server {
        match self.try_spawn().await {
            Ok(server) => server,
            Err(failure) => panic!("server did not start: {failure}"),
        }
    }

    /// Starts the server; `Err` carries the exit status and stderr if it exited before serving.
    pub(crate) async fn try_spawn(self) -> Result<Server, StartFailure> {
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
pub(crate) struct StartFailure {
    /// Its exit status, if it exited.
    pub(crate) status: Option<ExitStatus>,
    /// Everything it wrote to stderr.
    pub(crate) stderr: String,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {:?}; stderr:\n{}", self.status, self.stderr)
    }
}

/// The `fields.message` of a JSON log line.
pub(crate) fn message_of(line: &serde_json::Value) -> Option<&str> {
    line["fields"]["message"].as_str()
}

/// Stderr lines of a server, parsed as JSON where they are JSON.
#[derive(Clone, Debug, Default)]
pub(crate) struct Logs {
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
    pub(crate) fn snapshot(&self) -> Vec<String> {
        self.inner.0.lock().expect("log lock").lines.clone()
    }

    /// Every JSON line so far.
    pub(crate) fn json(&self) -> Vec<serde_json::Value> {
        self.snapshot()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// JSON lines whose message is `message`.
    pub(crate) fn with_message(&self, message: &str) -> Vec<serde_json::Value> {
        self.json()
            .into_iter()
            .filter(|line| message_of(line) == Some(message))
            .collect()
    }

    /// Waits until a JSON line satisfies `pred` (looking at earlier lines too); `None` after `timeout`
    /// or when stderr closed without one.
    pub(crate) async fn wait_for(
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
pub(crate) struct Server {
    /// The gRPC listener.
    pub(crate) grpc_addr: SocketAddr,
    /// The admin HTTP listener.
    pub(crate) admin_addr: SocketAddr,
    /// The "Serving" log line.
    pub(crate) serving: serde_json::Value,
    /// The rules path it was started with.
    pub(crate) rules: PathBuf,
    /// Its stderr.
    pub(crate) logs: Logs,
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
    pub(crate) fn pause_log_reading(&self) {
        self.log_reading.send_replace(false);
    }

    /// Reads the server's stderr again after [`Self::pause_log_reading`].
    pub(crate) fn resume_log_reading(&self) {
        self.log_reading.send_replace(true);
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id().expect("server still running")
    }

    /// A gRPC channel to the server.
    pub(crate) async fn channel(&self) -> Channel {
        let endpoint = Channel::from_shared(format!("http://{}", self.grpc_addr))
            .expect("valid URI")
            .connect_timeout(RPC_TIMEOUT)
            .timeout(RPC_TIMEOUT);
        endpoint.connect().await.expect("connect to the gRPC port")
    }

    /// An ext_authz client.
    pub(crate) async fn authz(&self) -> AuthorizationClient<Channel> {
        AuthorizationClient::new(self.channel().await)
    }

    /// A grpc.health.v1 client.
    pub(crate) async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel().await)
    }

    /// GETs `path` on the admin port; returns the status code and body.
    pub(crate) async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin_addr, path)
            .await
            .expect("admin request")
    }

    /// Scrapes and parses `/metrics`.
    pub(crate) async fn metrics(&self) -> Metrics {
        let (status, body) = self.admin_get("/metrics").await;
        assert_eq!(status, 200, "/metrics: {body}");
        Metrics::parse(&body)
    }

    /// `/rules` as JSON.
    pub(crate) async fn rules_status(&self) -> serde_json::Value {
        let (status, body) = self.admin_get("/rules").await;
        assert_eq!(status, 200, "/rules: {body}");
        serde_json::from_str(&body).expect("/rules is JSON")
    }

    /// Sends a signal by name (`HUP`, `TERM`, `INT`).
    pub(crate) fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Waits for the process to exit.
    pub(crate) async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()
            .map(|status| status.expect("wait for the server"))
    }

    /// Stops reading the server's stderr pipe and closes its read end, so the server's next log write
    /// fails with EPIPE (a log collector that went away). `logs` sees nothing more.
    pub(crate) async fn close_stderr(&mut self) {
        self.reader.abort();
        // Wait until the task is gone: only then is the pipe's read end dropped.
        let _ = (&mut self.reader).await;
    }

    /// True while the process has not exited.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// One Check with a bound; panics on an RPC error (the server must never return one).
pub(crate) async fn check(
    client: &mut AuthorizationClient<Channel>,
    request: CheckRequest,
) -> CheckResponse {
    tokio::time::timeout(RPC_TIMEOUT, client.check(request))
        .await
        .expect("Check timed out")
        .expect("Check RPC failed")
        .into_inner()
}

/// Calls `f` every `POLL_INTERVAL` until it returns `Some`, or `None` once `timeout` has passed.
pub(crate) async fn poll_until<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
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

/// Checks `request` every `POLL_INTERVAL` until its verdict is `allowed`; returns the time from `since`
/// to the first response with that verdict, or `None` after `timeout`.
pub(crate) async fn time_until_verdict(
    client: &mut AuthorizationClient<Channel>,
    request: &CheckRequest,
    allowed: bool,
    since: Instant,
    timeout: Duration,
) -> Option<Duration> {
    poll_until(timeout, || {
        let mut client = client.clone();
        let request = request.clone();
        async move {
            let response = check(&mut client, request).await;
            (is_allowed(&response) == allowed).then(|| since.elapsed())
        }
    })
    .await
}

// === Admin HTTP ===

/// A minimal HTTP/1.1 GET (`Connection: close`), enough for the admin endpoints.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    tokio::time::timeout(RPC_TIMEOUT, async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad HTTP response: {head:?}")))?;
        Ok((status, body.to_owned()))
    })
    .await
    .map_err(|_| std::io::Error::other(format!("GET {path} timed out")))?
}

// === Prometheus text ===

/// One scrape: every sample with its labels.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// (name, labels, value).
    pub(crate) samples: Vec<(String, BTreeMap<String, String>, f64)>,
    /// `# TYPE` per metric family.
    pub(crate) types: BTreeMap<String, String>,
}

impl Metrics {
    /// Parses the Prometheus text exposition format (the subset the exporter writes).
    pub(crate) fn parse(text: &str) -> Self {
        let mut metrics = Self::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                if let Some((name, kind)) = rest.split_once(' ') {
                    metrics.types.insert(name.to_owned(), kind.to_owned());
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let value: f64 = value.parse().expect("sample value is a number");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (
                    name,
                    parse_labels(rest.strip_suffix('}').expect("closing brace")),
                ),
                None => (series, BTreeMap::new()),
            };
            metrics.samples.push((name.to_owned(), labels, value));
        }
        metrics
    }

    /// Sum of the samples named `name` whose labels include every pair in `labels`.
    pub(crate) fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|(_, _, v)| v).sum()
    }

    /// The value of the one sample named `name` whose labels include `labels`; `None` if there is none.
    pub(crate) fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<_> = self.matching(name, labels).collect();
        assert!(
            found.len() <= 1,
            "{name} {labels:?} matches several series: {found:?}"
        );
        found.first().map(|(_, _, v)| *v)
    }

    /// Every sample named `name` whose labels include `labels`.
    pub(crate) fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a (String, BTreeMap<String, String>, f64)> + 'a {
        self.samples.iter().filter(move |(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// True if any sample has this name.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|(n, _, _)| n == name)
    }
}

fn parse_labels(raw: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = raw;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    labels
}
