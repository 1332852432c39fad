//! `World`: one egress-authz server (behind a relay standing in for the Kubernetes Service), the
//! stand-in external hosts and one or more Envoy gateways, all on 127.0.0.1, with a per-run PKI; plus
//! the rule stages of the Istio egress walkthrough it runs through.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::envoy::{
    Envoy, Gateway, Variant, envoy_or_skip, find_wasm_module, wasm_module_or_skip,
    wasm_rules_value,
};
use crate::fixtures::project_dir;
use crate::net::Upstream;
use crate::pki::Pki;
use crate::server::{Server, ServerBuilder};
use crate::wait::poll_for;

/// The placeholder of the proxy-wasm HTTP gateway's listener port.
pub const WASM_HTTP_LISTENER_PORT: &str = "WASM_HTTP_LISTENER_PORT";
/// The placeholder of the proxy-wasm TLS gateway's listener port.
pub const WASM_TCP_LISTENER_PORT: &str = "WASM_TCP_LISTENER_PORT";

/// The external host the walkthrough's HTTP and TLS requests go to first.
pub const GOOGLE: &str = "developers.google.com";
/// The other external host of the walkthrough.
pub const YAHOO: &str = "developer.yahoo.com";

/// Tests of this binary share 2 cores with each other and with Envoy: run them one at a time so the
/// timing assertions (decision flips within 2 s) measure the system, not the scheduler.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------------------
// Relay: the Kubernetes Service in front of the authz pods

/// A fixed loopback address for Envoy's authz cluster that forwards each connection to whichever
/// egress-authz instance is current, like a Service VIP in front of restarting pods. With no target it
/// accepts and immediately closes (a Service with no ready endpoints). It lets a test restart or kill the
/// server without re-rendering Envoy's static bootstrap.
#[derive(Debug)]
pub struct Relay {
    pub addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("addr");
        let target: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let t = target.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    return;
                };
                let to = *t.lock().expect("lock");
                tokio::spawn(async move {
                    let Some(to) = to else { return };
                    let Ok(Ok(mut up)) =
                        timeout(Duration::from_secs(2), TcpStream::connect(to)).await
                    else {
                        return;
                    };
                    let _ = down.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                });
            }
        });
        Self { addr, target, task }
    }

    pub fn set_target(&self, to: Option<SocketAddr>) {
        *self.target.lock().expect("lock") = to;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Rule stages (the Istio egress walkthrough)

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// examples/rules/namespace-level.yaml
    NamespaceLevel,
    /// examples/rules/service-account-level.yaml
    ServiceAccountLevel,
    /// examples/rules/allow-nothing.yaml
    AllowNothing,
    /// deploy/rules/egress.yaml (the walkthrough's final, combined stage)
    Final,
}

impl Stage {
    pub const ALL: [Self; 4] = [
        Self::NamespaceLevel,
        Self::ServiceAccountLevel,
        Self::AllowNothing,
        Self::Final,
    ];

    pub fn path(self) -> PathBuf {
        project_dir().join(match self {
            Self::NamespaceLevel => "examples/rules/namespace-level.yaml",
            Self::ServiceAccountLevel => "examples/rules/service-account-level.yaml",
            Self::AllowNothing => "examples/rules/allow-nothing.yaml",
            Self::Final => "deploy/rules/egress.yaml",
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::NamespaceLevel => "namespace-level",
            Self::ServiceAccountLevel => "service-account-level",
            Self::AllowNothing => "allow-nothing",
            Self::Final => "final",
        }
    }

    pub fn text(self) -> String {
        std::fs::read_to_string(self.path())
            .unwrap_or_else(|e| panic!("read {}: {e}", self.path().display()))
    }
}

// ---------------------------------------------------------------------------------------------------------
// World

/// One authz server (behind the relay), the four stand-in hosts and the requested Envoy gateways, all on
/// 127.0.0.1, plus the per-run PKI and a rules directory. Everything is stopped when it is dropped; on a
/// panic the tails of every log are printed first.
#[derive(Debug)]
pub struct World {
    pub tmp: tempfile::TempDir,
    pub pki: Pki,
    pub rules_dir: PathBuf,
    pub rules_file: PathBuf,
    /// The tenant directory (`--tenant-rules`), when the world was started with tenant files.
    pub tenants_dir: Option<PathBuf>,
    pub google_http: Upstream,
    pub yahoo_http: Upstream,
    pub google_tcp: Upstream,
    pub yahoo_tcp: Upstream,
    pub relay: Relay,
    pub server: Option<Server>,
    pub envoys: BTreeMap<Gateway, Envoy>,
    pub decision_log: &'static str,
    /// The Envoy binary the gateways run, to restart one.
    pub envoy_bin: PathBuf,
    /// The placeholders the gateways' bootstraps were rendered with.
    pub vars: BTreeMap<&'static str, String>,
    /// The variant the gateways' bootstraps were changed by.
    pub variant: Variant,
}

/// A [`World`] holding [`serial`] for as long as it lives: how every e2e test that runs traffic starts.
#[derive(Debug)]
pub struct SerialWorld {
    world: World,
    // After `world`: fields drop in order, so the lock is released only once every process is gone.
    _serial: MutexGuard<'static, ()>,
}

impl Deref for SerialWorld {
    type Target = World;

    fn deref(&self) -> &World {
        &self.world
    }
}

impl DerefMut for SerialWorld {
    fn deref_mut(&mut self) -> &mut World {
        &mut self.world
    }
}

impl World {
    /// The world of the test named `test`: finds Envoy (or returns `None` once [`envoy_or_skip`] said
    /// why the test is skipped), takes [`serial`], and starts `gateways`, changed by `variant`, in front
    /// of a server over `rules`. Panics if anything does not start.
    // A std Mutex on purpose: it serializes tests that each run their own runtime, so it is held while
    // this one awaits its processes.
    #[allow(clippy::await_holding_lock)]
    pub async fn for_test(
        test: &str,
        gateways: &[Gateway],
        rules: &str,
        variant: Variant,
    ) -> Option<SerialWorld> {
        Self::for_test_with_tenants(test, gateways, rules, None, variant).await
    }

    /// [`Self::for_test`] with a tenant directory holding `tenants` (file name, content), served with
    /// `--tenant-rules`.
    #[allow(clippy::await_holding_lock)]
    pub async fn for_test_with_tenants(
        test: &str,
        gateways: &[Gateway],
        rules: &str,
        tenants: Option<&[(&str, &str)]>,
        variant: Variant,
    ) -> Option<SerialWorld> {
        let envoy = envoy_or_skip(test)?;
        if gateways.iter().any(|gw| gw.is_wasm()) {
            wasm_module_or_skip(test)?;
        }
        let serial = serial();
        let world = Self::start_full(&envoy, gateways, rules, tenants, variant)
            .await
            .unwrap_or_else(|e| panic!("{test}: the e2e world did not start: {e}"));
        Some(SerialWorld {
            world,
            _serial: serial,
        })
    }

    /// Starts `gateways` as checked in (istiod's rendering) in front of a server over `rules`.
    pub async fn start(
        envoy_bin: &Path,
        gateways: &[Gateway],
        rules: &str,
    ) -> Result<Self, String> {
        Self::start_with(envoy_bin, gateways, rules, Variant::ISTIO_DEFAULT).await
    }

    /// [`Self::start`] with the gateways' bootstraps changed by `variant`.
    pub async fn start_with(
        envoy_bin: &Path,
        gateways: &[Gateway],
        rules: &str,
        variant: Variant,
    ) -> Result<Self, String> {
        Self::start_full(envoy_bin, gateways, rules, None, variant).await
    }

    async fn start_full(
        envoy_bin: &Path,
        gateways: &[Gateway],
        rules: &str,
        tenants: Option<&[(&str, &str)]>,
        variant: Variant,
    ) -> Result<Self, String> {
        let tmp = tempfile::Builder::new()
            .prefix("egress-authz-e2e-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let pki = Pki::generate(&tmp.path().join("certs"));
        let rules_dir = tmp.path().join("rules");
        std::fs::create_dir_all(&rules_dir).map_err(|e| e.to_string())?;
        let rules_file = rules_dir.join("egress.yaml");
        std::fs::write(&rules_file, rules).map_err(|e| e.to_string())?;
        let tenants_dir = match tenants {
            Some(files) => {
                let dir = tmp.path().join("tenants");
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                for (name, text) in files {
                    std::fs::write(dir.join(name), text).map_err(|e| e.to_string())?;
                }
                Some(dir)
            }
            None => None,
        };
        let google_http = Upstream::http(GOOGLE).await;
        let yahoo_http = Upstream::http(YAHOO).await;
        let google_tcp = Upstream::tcp(GOOGLE).await;
        let yahoo_tcp = Upstream::tcp(YAHOO).await;
        let relay = Relay::start().await;
        let server = start_server(&rules_dir, tenants_dir.as_deref(), "all").await?;
        relay.set_target(Some(server.grpc_addr));
        let mut vars = BTreeMap::from([
            ("CERTS", pki.dir.display().to_string()),
            ("AUTHZ_PORT", relay.addr.port().to_string()),
            ("GOOGLE_HTTP_PORT", google_http.addr.port().to_string()),
            ("YAHOO_HTTP_PORT", yahoo_http.addr.port().to_string()),
            ("GOOGLE_TCP_PORT", google_tcp.addr.port().to_string()),
            ("YAHOO_TCP_PORT", yahoo_tcp.addr.port().to_string()),
        ]);
        if gateways.iter().any(|gw| gw.is_wasm()) {
            let module = find_wasm_module().ok_or("the proxy-wasm module is not built")?;
            vars.insert("WASM_MODULE", module.display().to_string());
            vars.insert("WASM_RULES", wasm_rules_value(rules));
            // Any free port, read back from the admin API; a test that names the port in its rules
            // picks one and restarts the gateways.
            vars.insert(WASM_HTTP_LISTENER_PORT, "0".to_owned());
            vars.insert(WASM_TCP_LISTENER_PORT, "0".to_owned());
        }
        let mut world = Self {
            tmp,
            pki,
            rules_dir,
            rules_file,
            tenants_dir,
            google_http,
            yahoo_http,
            google_tcp,
            yahoo_tcp,
            relay,
            server: Some(server),
            envoys: BTreeMap::new(),
            decision_log: "all",
            envoy_bin: envoy_bin.to_owned(),
            vars,
            variant,
        };
        for gw in gateways {
            let envoy =
                Envoy::start(envoy_bin, *gw, world.tmp.path(), &world.vars, variant).await?;
            world.envoys.insert(*gw, envoy);
        }
        Ok(world)
    }

    /// Restarts the proxy-wasm gateways with `rules` as their configuration: how a static bootstrap
    /// takes new rules (a mesh pushes a new configuration instead).
    pub async fn restart_wasm_gateways_with(&mut self, rules: &str) -> Result<(), String> {
        self.vars.insert("WASM_RULES", wasm_rules_value(rules));
        let running: Vec<Gateway> = self.envoys.keys().copied().filter(|gw| gw.is_wasm()).collect();
        for gw in running {
            if let Some(old) = self.envoys.remove(&gw) {
                old.kill().await;
            }
            let envoy =
                Envoy::start(&self.envoy_bin, gw, self.tmp.path(), &self.vars, self.variant).await?;
            self.envoys.insert(gw, envoy);
        }
        Ok(())
    }

    pub fn envoy(&self, gw: Gateway) -> &Envoy {
        self.envoys
            .get(&gw)
            .unwrap_or_else(|| panic!("gateway {gw:?} not started"))
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    pub fn http_upstream(&self, host: &str) -> &Upstream {
        if host == GOOGLE {
            &self.google_http
        } else {
            &self.yahoo_http
        }
    }

    pub fn tcp_upstream(&self, host: &str) -> &Upstream {
        if host == GOOGLE {
            &self.google_tcp
        } else {
            &self.yahoo_tcp
        }
    }

    /// Switches rules by restarting the server on the new file (the relay keeps Envoy's view stable).
    /// Independent of hot reload, which has its own scenario.
    pub async fn restart_server_with(&mut self, rules: &str) -> Result<(), String> {
        self.relay.set_target(None);
        if let Some(old) = self.server.take() {
            old.kill().await;
        }
        std::fs::write(&self.rules_file, rules).map_err(|e| e.to_string())?;
        let server = start_server(&self.rules_dir, self.tenants_dir.as_deref(), self.decision_log).await?;
        self.relay.set_target(Some(server.grpc_addr));
        self.server = Some(server);
        Ok(())
    }

    /// Replaces the rule file atomically (write + rename in the same directory), as a ConfigMap update or
    /// an editor's save would; the running server is expected to hot-reload it.
    pub fn swap_rules_file(&self, rules: &str) -> Result<(), String> {
        let tmp = self.rules_dir.join(".egress.yaml.tmp");
        std::fs::write(&tmp, rules).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &self.rules_file).map_err(|e| e.to_string())
    }

    /// Replaces the rule file under the running server and waits (bounded) until the server reports a
    /// successful reload (`egress_authz_reloads_total{result="success"}` went up).
    pub async fn reload_rules(&self, rules: &str) -> Result<(), String> {
        let srv = self.server();
        let before = srv
            .metric("egress_authz_reloads_total", &[("result", "success")])
            .await;
        self.swap_rules_file(rules)?;
        poll_for(
            Duration::from_secs(5),
            "the server to reload the rule file",
            || async move {
                let now = srv
                    .metric("egress_authz_reloads_total", &[("result", "success")])
                    .await;
                (now > before).then_some(())
            },
        )
        .await
    }

    pub async fn kill_server(&mut self) {
        if let Some(s) = self.server.take() {
            s.kill().await;
        }
    }

    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for e in self.envoys.values() {
            out.push_str(&e.diagnostics());
            out.push('\n');
        }
        if let Some(s) = &self.server {
            let text = s.log_text();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str("--- egress-authz output (tail) ---\n");
            out.push_str(&lines[lines.len().saturating_sub(30)..].join("\n"));
        }
        out
    }
}

/// The server over `rules` with `--decision-log decision_log`, once it reports ready.
async fn start_server(
    rules: &Path,
    tenants: Option<&Path>,
    decision_log: &str,
) -> Result<Server, String> {
    let mut builder = ServerBuilder::new(rules).args(["--decision-log", decision_log]);
    if let Some(dir) = tenants {
        builder = builder.args(["--tenant-rules".to_owned(), dir.display().to_string()]);
    }
    let server = builder
        .try_spawn()
        .await
        .map_err(|failure| format!("egress-authz did not start: {failure}"))?;
    server.wait_ready().await?;
    Ok(server)
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("=== e2e diagnostics ===\n{}", self.diagnostics());
        }
        // Children are SIGKILLed by their kill_on_drop guards when the fields drop.
    }
}
