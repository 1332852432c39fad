//! Envoy as the suites run it: finding the binary (or skipping), the bootstrap templates under
//! tests/e2e/envoy/ rendered and varied the way a mesh operator may configure them, `--mode validate`,
//! and a running gateway with its admin API, stats and JSON access log.
//!
//! Nothing here sleeps to wait for readiness: Envoy's admin address file and `/ready` are polled.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::time::timeout;

use crate::fixtures::project_dir;
use crate::http::http_get;
use crate::wait::{POLL_INTERVAL, poll_for};

/// `ENVOY_BIN`, else `envoy` on PATH, else the project-local venv made by `scripts/install.sh envoy`.
pub fn find_envoy() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "ENVOY_BIN={} does not exist", p.display());
        return Some(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let c = dir.join("envoy");
            if c.is_file() {
                return Some(c);
            }
        }
    }
    // `scripts/install.sh envoy`: prefer the real binary over the venv's Python exec wrapper.
    let venv = project_dir().join(".venv-envoy");
    if let Ok(entries) = std::fs::read_dir(venv.join("lib")) {
        for e in entries.flatten() {
            let bin = e.path().join("site-packages/envoy/_bin/envoy");
            if bin.is_file() {
                return Some(bin);
            }
        }
    }
    let wrapper = venv.join("bin/envoy");
    wrapper.is_file().then_some(wrapper)
}

/// Envoy is required when `CI` is set (non-empty, not "false"/"0") or `EGRESS_AUTHZ_REQUIRE_ENVOY=1`.
pub fn envoy_required() -> bool {
    let ci = std::env::var("CI")
        .map(|v| !v.is_empty() && v != "false" && v != "0")
        .unwrap_or(false);
    let req = std::env::var("EGRESS_AUTHZ_REQUIRE_ENVOY")
        .map(|v| v == "1" || v == "true")
        .unwrap_or(false);
    ci || req
}

/// Returns the Envoy binary, or `None` after printing why the test is skipped. Panics instead of
/// skipping when Envoy is required (CI, or the README's test command).
pub fn envoy_or_skip(test: &str) -> Option<PathBuf> {
    if let Some(p) = find_envoy() {
        eprintln!("{test}: using Envoy {}", p.display());
        return Some(p);
    }
    let msg = "Envoy not found (ENVOY_BIN, PATH, .venv-envoy/bin/envoy); install it with scripts/install.sh envoy";
    if envoy_required() {
        panic!("{test}: {msg} (required because CI or EGRESS_AUTHZ_REQUIRE_ENVOY=1 is set)");
    }
    eprintln!("SKIPPED {test}: {msg}");
    None
}

/// The `openssl` CLI for the clients that send arbitrary SNI bytes, or `None` after printing why the test
/// is skipped; required (panics) exactly when Envoy is.
pub fn openssl_or_skip(test: &str) -> Option<PathBuf> {
    if let Some(p) = crate::net::find_openssl() {
        return Some(p);
    }
    let msg = "the openssl command line tool was not found (OPENSSL_BIN, PATH); scripts/test.sh installs it";
    if envoy_required() {
        panic!("{test}: {msg} (required because CI or EGRESS_AUTHZ_REQUIRE_ENVOY=1 is set)");
    }
    eprintln!("SKIPPED {test}: {msg}");
    None
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// `stat_prefix` of the HTTP connection manager in http-*.yaml (stats `http.<prefix>.ext_authz.*`).
pub const HTTP_STAT_PREFIX: &str = "outbound_0.0.0.0_8080";
/// `stat_prefix` of the network ext_authz filter in tcp-istio.yaml (stats `ext_authz.<prefix>.*`).
pub const TCP_STAT_PREFIX: &str = "egress_tcp";

mod variant;

pub use variant::{CustomGate, GOOGLE_WILDCARD, Variant};

/// The bootstrap templates under tests/e2e/envoy/.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Gateway {
    /// (a) HTTPS/ISTIO_MUTUAL server, HTTP ext_authz exactly as istiod emits it.
    HttpIstio,
    /// (a') the same plus `include_tls_session: true`.
    HttpTlsSession,
    /// (b) TLS/ISTIO_MUTUAL server, tls_inspector + network ext_authz + tcp_proxy.
    TcpIstio,
    /// (w) the HTTPS server of (a) with the proxy-wasm filter instead of ext_authz.
    HttpWasm,
    /// (w') the TLS server of (b) with the proxy-wasm filter instead of network ext_authz.
    TcpWasm,
}

impl Gateway {
    /// The gateways that call the server over ext_authz (istiod's rendering and its variants).
    pub const ALL: [Self; 3] = [Self::HttpIstio, Self::HttpTlsSession, Self::TcpIstio];
    /// The gateways that decide in the proxy-wasm filter, from rules in their own configuration.
    pub const WASM: [Self; 2] = [Self::HttpWasm, Self::TcpWasm];

    pub fn template(self) -> &'static str {
        match self {
            Self::HttpIstio => "http-istio",
            Self::HttpTlsSession => "http-tls-session",
            Self::TcpIstio => "tcp-istio",
            Self::HttpWasm => "http-wasm",
            Self::TcpWasm => "tcp-wasm",
        }
    }

    /// Whether the gateway runs the proxy-wasm filter (its rules are rendered into its bootstrap).
    pub fn is_wasm(self) -> bool {
        matches!(self, Self::HttpWasm | Self::TcpWasm)
    }

    /// Whether the gateway carries opaque TLS streams (the TLS server) rather than HTTP.
    pub fn is_tcp(self) -> bool {
        matches!(self, Self::TcpIstio | Self::TcpWasm)
    }
}

/// The environment variable that names the built proxy-wasm module (scripts/test.sh sets it).
pub const WASM_MODULE_ENV: &str = "EGRESS_AUTHZ_WASM_MODULE";
/// The module's file name as cargo builds it.
const WASM_MODULE_FILE: &str = "egress_authz_wasm.wasm";

/// The built filter: `EGRESS_AUTHZ_WASM_MODULE`, else where `cargo build --release --target
/// wasm32-wasip1 --manifest-path wasm-filter/Cargo.toml` puts it (under `CARGO_TARGET_DIR` when set,
/// else wasm-filter/target/).
pub fn find_wasm_module() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(WASM_MODULE_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{WASM_MODULE_ENV}={} does not exist", p.display());
        return Some(p);
    }
    let built = Path::new("wasm32-wasip1/release").join(WASM_MODULE_FILE);
    let target_dirs = [
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from),
        Some(project_dir().join("wasm-filter/target")),
    ];
    target_dirs
        .into_iter()
        .flatten()
        .map(|dir| dir.join(&built))
        .find(|p| p.is_file())
}

/// The proxy-wasm module, or `None` after printing why the test is skipped; required (panics) exactly
/// when Envoy is, so CI cannot skip the filter's tests.
pub fn wasm_module_or_skip(test: &str) -> Option<PathBuf> {
    if let Some(p) = find_wasm_module() {
        eprintln!("{test}: using the filter {}", p.display());
        return Some(p);
    }
    let msg = format!(
        "the proxy-wasm module was not found ({WASM_MODULE_ENV}, or build it with `cargo build --release --target wasm32-wasip1 --manifest-path wasm-filter/Cargo.toml`)"
    );
    if envoy_required() {
        panic!("{test}: {msg} (required because CI or EGRESS_AUTHZ_REQUIRE_ENVOY=1 is set)");
    }
    eprintln!("SKIPPED {test}: {msg}");
    None
}

/// A rule file as the `value` of the wasm gateways' `configuration` StringValue: one JSON string,
/// which YAML reads as a double-quoted scalar.
pub fn wasm_rules_value(rules: &str) -> String {
    serde_json::Value::String(rules.to_owned()).to_string()
}

/// Replaces `{{KEY}}` placeholders; panics if a placeholder outside a comment is left.
pub fn render_template(gw: Gateway, vars: &BTreeMap<&str, String>) -> String {
    let path = project_dir()
        .join("tests/e2e/envoy")
        .join(format!("{}.yaml", gw.template()));
    let mut s =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    for (k, v) in vars {
        s = s.replace(&format!("{{{{{k}}}}}"), v);
    }
    for line in s.lines() {
        let code = line.split('#').next().unwrap_or_default();
        assert!(
            !code.contains("{{"),
            "unrendered placeholder in {}: {line}",
            gw.template()
        );
    }
    s
}

/// `envoy --mode validate -c <file>`.
pub async fn envoy_validate(bin: &Path, config: &Path) -> Result<String, String> {
    let out = timeout(
        Duration::from_secs(60),
        Command::new(bin)
            .args([
                "--mode",
                "validate",
                "--disable-hot-restart",
                "-l",
                "error",
                "-c",
            ])
            .arg(config)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| "envoy --mode validate timed out".to_owned())?
    .map_err(|e| format!("spawn envoy: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// A running Envoy; killed when dropped.
#[derive(Debug)]
pub struct Envoy {
    pub gateway: Gateway,
    child: Child,
    pub admin: SocketAddr,
    /// The (single) listener's actual address.
    pub listener: SocketAddr,
    pub access_log: PathBuf,
    pub stderr_path: PathBuf,
    pub config_path: PathBuf,
}

impl Envoy {
    pub async fn start(
        bin: &Path,
        gw: Gateway,
        dir: &Path,
        vars: &BTreeMap<&str, String>,
        variant: Variant,
    ) -> Result<Self, String> {
        let mut vars = vars.clone();
        vars.insert("ACCESS_LOG", Self::access_log_path(gw, dir).display().to_string());
        let config = variant.apply(gw, &render_template(gw, &vars));
        Self::start_config(bin, gw, dir, &config).await
    }

    /// Where [`Self::start`] puts the access log of `gw` in `dir` (the `ACCESS_LOG` placeholder).
    pub fn access_log_path(gw: Gateway, dir: &Path) -> PathBuf {
        dir.join(format!("{}.access.log", gw.template()))
    }

    /// Starts Envoy on a bootstrap of `gw` already rendered (and changed) by the caller, with its access
    /// log at [`Self::access_log_path`].
    pub async fn start_config(
        bin: &Path,
        gw: Gateway,
        dir: &Path,
        config: &str,
    ) -> Result<Self, String> {
        let name = gw.template();
        let access_log = Self::access_log_path(gw, dir);
        let config_path = dir.join(format!("{name}.yaml"));
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let admin_path = dir.join(format!("{name}.admin"));
        let _ = std::fs::remove_file(&admin_path);
        let stderr_path = dir.join(format!("{name}.stderr"));
        let stderr = std::fs::File::create(&stderr_path).map_err(|e| e.to_string())?;
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            // no shared memory / base id at all, so parallel Envoys (other tests, the demo) never clash
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "warn"])
            // flush access logs every 20 ms instead of 10 s, so tests can read them
            .args(["--file-flush-interval-msec", "20"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let admin: SocketAddr = {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(a) = std::fs::read_to_string(&admin_path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                {
                    break a;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "envoy {name} exited ({status}):\n{}",
                        tail(&stderr_path, 30)
                    ));
                }
                if Instant::now() >= deadline {
                    let _ = child.start_kill();
                    return Err(format!(
                        "envoy {name} wrote no admin address:\n{}",
                        tail(&stderr_path, 30)
                    ));
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        };
        poll_for(Duration::from_secs(30), "envoy /ready", || async move {
            matches!(http_get(admin, "/ready").await, Ok((200, _))).then_some(())
        })
        .await?;
        let (_, body) = http_get(admin, "/listeners?format=json").await?;
        let listener =
            parse_listener_addr(&body).ok_or_else(|| format!("no listener address in {body}"))?;
        Ok(Self {
            gateway: gw,
            child,
            admin,
            listener,
            access_log,
            stderr_path,
            config_path,
        })
    }

    /// All counters/gauges whose name contains `filter` (Envoy `/stats?filter=` regex).
    pub async fn stats(&self, filter: &str) -> BTreeMap<String, u64> {
        let (_, body) = http_get(self.admin, &format!("/stats?filter={filter}"))
            .await
            .unwrap_or_default();
        body.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(": ")?;
                Some((k.to_owned(), v.trim().parse().ok()?))
            })
            .collect()
    }

    /// One counter or gauge by its full name; 0 if Envoy has none by that name.
    pub async fn stat(&self, name: &str) -> u64 {
        self.stats(name).await.get(name).copied().unwrap_or(0)
    }

    /// The ext_authz filter's counter `name` (`ok`, `denied`, `error`, ...), under the prefix this
    /// gateway's filter reports it with.
    pub async fn ext_authz_stat(&self, name: &str) -> u64 {
        let full = match self.gateway {
            Gateway::TcpIstio => format!("ext_authz.{TCP_STAT_PREFIX}.{name}"),
            Gateway::HttpIstio | Gateway::HttpTlsSession => {
                format!("http.{HTTP_STAT_PREFIX}.ext_authz.{name}")
            }
            Gateway::HttpWasm | Gateway::TcpWasm => {
                panic!("{}: has no ext_authz filter", self.gateway.template())
            }
        };
        self.stat(&full).await
    }

    pub fn access_log_entries(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Number of access-log entries written so far (take it before a request, pass it to
    /// [`Self::access_log_for`], so a reused client port cannot match an older entry).
    pub fn access_log_len(&self) -> usize {
        self.access_log_entries().len()
    }

    /// Waits (bounded) for the first access-log entry after the first `skip` ones for the downstream
    /// connection from `client`.
    pub async fn access_log_for(&self, client: SocketAddr, skip: usize) -> Result<Value, String> {
        let c = client.to_string();
        poll_for(
            Duration::from_secs(5),
            &format!("{} access log entry for {c}", self.gateway.template()),
            || {
                let found = self
                    .access_log_entries()
                    .into_iter()
                    .skip(skip)
                    .find(|e| e["client"].as_str() == Some(c.as_str()));
                async move { found }
            },
        )
        .await
    }

    /// Like [`Self::access_log_for`], for a client known only by its source IP (a client whose source
    /// port the test does not choose, bound to an address of the loopback range no other client uses).
    pub async fn access_log_for_ip(
        &self,
        client: std::net::IpAddr,
        skip: usize,
    ) -> Result<Value, String> {
        poll_for(
            Duration::from_secs(5),
            &format!("{} access log entry from {client}", self.gateway.template()),
            || {
                let found = self.access_log_entries().into_iter().skip(skip).find(|e| {
                    e["client"]
                        .as_str()
                        .and_then(|c| c.parse::<SocketAddr>().ok())
                        .is_some_and(|a| a.ip() == client)
                });
                async move { found }
            },
        )
        .await
    }

    pub fn diagnostics(&self) -> String {
        format!(
            "--- envoy {} stderr (tail) ---\n{}\n--- envoy {} access log (tail) ---\n{}",
            self.gateway.template(),
            tail(&self.stderr_path, 20),
            self.gateway.template(),
            tail(&self.access_log, 20)
        )
    }

    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

fn parse_listener_addr(body: &str) -> Option<SocketAddr> {
    let v: Value = serde_json::from_str(body).ok()?;
    let sa = &v["listener_statuses"][0]["local_address"]["socket_address"];
    format!("{}:{}", sa["address"].as_str()?, sa["port_value"].as_u64()?)
        .parse()
        .ok()
}
