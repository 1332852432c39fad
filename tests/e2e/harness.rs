//! Process side of the e2e harness: finding Envoy, starting egress-authz and Envoy as child processes that
//! die with their guard, reading their ports back, the authz "Service" relay, admin helpers, and `World`,
//! which ties one authz server, the stand-in hosts and one or more Envoy gateways together.
//!
//! Nothing here sleeps to wait for readiness: every wait is a bounded poll of a readiness signal (the
//! server's "Serving" log line and `/readyz`, Envoy's admin address file and `/ready`, an access-log line).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::net::{Upstream, http_get};
use crate::pki::Pki;

pub const GOOGLE: &str = "developers.google.com";
pub const YAHOO: &str = "developer.yahoo.com";

const POLL: Duration = Duration::from_millis(25);

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------------------
// Finding Envoy

/// `ENVOY_BIN`, else `envoy` on PATH, else the project-local venv made by scripts/install-envoy.sh.
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
    // scripts/install-envoy.sh: prefer the real binary over the venv's Python exec wrapper.
    let venv = manifest_dir().join(".venv-envoy");
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
    let msg = "Envoy not found (ENVOY_BIN, PATH, .venv-envoy/bin/envoy); install it with scripts/install-envoy.sh";
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

/// Tests of this binary share 2 cores with each other and with Envoy: run them one at a time so the
/// timing assertions (decision flips within 2 s) measure the system, not the scheduler.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Polls `f` every 25 ms until it returns `Some`, for at most `limit`.
pub async fn poll_until<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------------------
// egress-authz server

/// A running `egress-authz serve`; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct AuthzServer {
    child: Child,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl AuthzServer {
    pub async fn start(bin: &Path, rules: &Path, decision_log: &str) -> Result<Self, String> {
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--rules")
            .arg(rules)
            .args([
                "--grpc-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .args(["--decision-log", decision_log])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(SocketAddr, SocketAddr)>();
        let stderr = child.stderr.take().expect("stderr");
        let stdout = child.stdout.take().expect("stdout");
        for reader in [
            Box::new(stderr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(stdout),
        ] {
            let (log, tx) = (log.clone(), tx.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(reader).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(addrs) = parse_serving(&line) {
                        let _ = tx.send(addrs);
                    }
                    log.lock().expect("lock").push(line);
                }
            });
        }
        drop(tx);
        let Ok(Some(addrs)) = timeout(Duration::from_secs(30), rx.recv()).await else {
            let _ = child.start_kill();
            let status = child.try_wait().ok().flatten();
            return Err(format!(
                "egress-authz did not log its \"Serving\" line (exit: {status:?}); output:\n{}",
                log.lock().expect("lock").join("\n")
            ));
        };
        let server = Self {
            child,
            grpc: addrs.0,
            admin: addrs.1,
            log,
        };
        let admin = server.admin;
        poll_until(Duration::from_secs(10), "egress-authz /readyz", || async move {
            matches!(http_get(admin, "/readyz").await, Ok((200, _))).then_some(())
        })
        .await?;
        Ok(server)
    }

    /// SIGKILL and reap.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = timeout(Duration::from_secs(5), self.child.wait()).await;
    }

    pub fn log_text(&self) -> String {
        self.log.lock().expect("lock").join("\n")
    }

    /// Value of one Prometheus sample, e.g. `egress_authz_checks_total{decision="deny",...}`; labels are
    /// matched as a set, in any order. Missing → 0.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, body) = http_get(self.admin, "/metrics").await.unwrap_or_default();
        sum_metric(&body, name, labels)
    }
}

pub fn sum_metric(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, lab) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let ok = labels
                .iter()
                .all(|(k, v)| lab.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

fn parse_serving(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let v: Value = serde_json::from_str(line).ok()?;
    let f = v.get("fields")?;
    if f.get("message")?.as_str()? != "Serving" {
        return None;
    }
    let grpc = f.get("grpc_addr")?.as_str()?.parse().ok()?;
    let admin = f.get("admin_addr")?.as_str()?.parse().ok()?;
    Some((grpc, admin))
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
// Envoy

/// The bootstrap templates under tests/e2e/envoy/.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Gateway {
    /// (a) HTTPS/ISTIO_MUTUAL server, HTTP ext_authz exactly as istiod emits it.
    HttpIstio,
    /// (a') the same plus `include_tls_session: true`.
    HttpTlsSession,
    /// (b) TLS/ISTIO_MUTUAL server, tls_inspector + network ext_authz + tcp_proxy.
    TcpIstio,
}

impl Gateway {
    pub const ALL: [Self; 3] = [Self::HttpIstio, Self::HttpTlsSession, Self::TcpIstio];

    pub fn template(self) -> &'static str {
        match self {
            Self::HttpIstio => "http-istio",
            Self::HttpTlsSession => "http-tls-session",
            Self::TcpIstio => "tcp-istio",
        }
    }
}

/// Replaces `{{KEY}}` placeholders; panics if a placeholder outside a comment is left.
pub fn render_template(gw: Gateway, vars: &BTreeMap<&str, String>) -> String {
    let path = manifest_dir()
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

/// Test-only variations of the checked-in bootstraps, applied to the rendered text, so the templates keep
/// reproducing istiod's output for the deploy bundle. A variant is a setting a mesh operator can choose
/// instead; each edit is checked to land exactly on the lines that setting changes, and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// `failure_mode_allow: true` on every ext_authz filter (the provider's `failOpen: true`): a failed
    /// check then lets the traffic through, so only an answered check keeps a request out.
    pub fail_open: bool,
    /// Adds `*.google.com` to the server names of the filter chain that serves developers.google.com, as
    /// istiod renders a Gateway whose `hosts` include that wildcard. Without it a ClientHello whose SNI is
    /// not exactly a configured host matches no filter chain and Envoy closes the connection before any
    /// filter runs, so the SNI never reaches the authz server.
    pub google_wildcard: bool,
    /// `include_tls_session: true` on the network ext_authz filters of the TCP gateway, as the deploy
    /// bundle's EnvoyFilter merges it in (the HTTP side of that patch is [`Gateway::HttpTlsSession`]).
    /// Only the TCP gateway is changed.
    pub tcp_tls_session: bool,
    /// Puts Istio's shadow RBAC filter (`shadow_rules_stat_prefix: istio_ext_authz_`) in front of every
    /// ext_authz filter and gates ext_authz on it with `filter_enabled_metadata`, as istiod renders a
    /// CUSTOM AuthorizationPolicy: ext_authz then runs only for what the policy's rules match.
    pub custom_gate: Option<CustomGate>,
}

/// The rules of a CUSTOM AuthorizationPolicy as far as they decide *when* ext_authz runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomGate {
    /// One rule without conditions (`rules: [{}]`): istiod renders the permission `any: true`.
    EveryPort,
    /// One rule `to: [{operation: {ports: [a, b]}}]`: `destination_port` a or b.
    Ports(u16, u16),
}

impl CustomGate {
    /// The gate of the deploy bundle's CUSTOM policy (deploy/istio/gateway/authorizationpolicy.yaml),
    /// so the suite runs what the bundle would make istiod generate. Panics on a shape it does not model.
    pub fn from_bundle() -> (String, Self) {
        let path = manifest_dir().join("deploy/istio/gateway/authorizationpolicy.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let policy: yaml_serde::Value = yaml_serde::from_str(&text).unwrap();
        let spec = &policy["spec"];
        assert_eq!(
            spec["action"].as_str(),
            Some("CUSTOM"),
            "{}",
            path.display()
        );
        let name = policy["metadata"]["name"].as_str().unwrap().to_owned();
        let rules = spec["rules"].as_sequence().expect("rules");
        assert_eq!(rules.len(), 1, "one CUSTOM rule is modelled");
        let rule = rules[0].as_mapping().expect("a rule is a mapping");
        if rule.is_empty() {
            return (name, Self::EveryPort);
        }
        assert_eq!(rule.len(), 1, "only `to` is modelled: {rule:?}");
        let ports: Vec<u16> = rule["to"][0]["operation"]["ports"]
            .as_sequence()
            .expect("to.operation.ports")
            .iter()
            .map(|p| p.as_str().unwrap().parse().unwrap())
            .collect();
        let [a, b] = ports[..] else {
            panic!("two ports are modelled: {ports:?}")
        };
        (name, Self::Ports(a, b))
    }

    /// The shadow policy's permissions (flow-style YAML), as istiod renders the rule.
    fn permissions(self) -> String {
        match self {
            Self::EveryPort => "[{and_rules: {rules: [{any: true}]}}]".to_owned(),
            Self::Ports(a, b) => format!(
                "[{{and_rules: {{rules: [{{or_rules: {{rules: [{{destination_port: {a}}}, {{destination_port: {b}}}]}}}}]}}}}]"
            ),
        }
    }
}

/// The AuthorizationPolicy name istiod's shadow policy ids carry (Istio 1.24–1.29 naming).
const CUSTOM_POLICY_ID: &str = "istio-ext-authz-ns[istio-system]-policy[egress-authz]-rule[0]";

/// The SNI pattern [`Variant::google_wildcard`] adds.
pub const GOOGLE_WILDCARD: &str = "*.google.com";

const HTTP_EXT_AUTHZ_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
const NETWORK_EXT_AUTHZ_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz";

impl Variant {
    pub const ISTIO_DEFAULT: Self = Self {
        fail_open: false,
        google_wildcard: false,
        tcp_tls_session: false,
        custom_gate: None,
    };

    /// Applies the variant to a rendered bootstrap of `gw`; panics unless every edit changed exactly the
    /// lines it targets: one ext_authz filter in each HTTP template, one per filter chain (two) in the TCP
    /// one, one filter chain serving developers.google.com in each.
    pub fn apply(self, gw: Gateway, rendered: &str) -> String {
        let name = gw.template();
        let ext_authz_filters = match gw {
            Gateway::HttpIstio | Gateway::HttpTlsSession => 1,
            Gateway::TcpIstio => 2,
        };
        let mut lines: Vec<String> = rendered.lines().map(str::to_owned).collect();
        let code = |line: &str| line.split('#').next().unwrap_or_default().trim().to_owned();
        let indent = |line: &str| line[..line.len() - line.trim_start().len()].to_owned();
        if self.fail_open {
            let mut replaced = 0;
            for l in &mut lines {
                if code(l) == "failure_mode_allow: false" {
                    replaced += 1;
                    *l = format!(
                        "{}failure_mode_allow: true # provider `failOpen: true`",
                        indent(l)
                    );
                }
            }
            assert_eq!(
                replaced, ext_authz_filters,
                "{name}: one `failure_mode_allow: false` per ext_authz filter"
            );
        }
        if self.google_wildcard {
            let mut replaced = 0;
            for l in &mut lines {
                let c = code(l);
                if c.contains("server_names: [") && c.contains(GOOGLE) {
                    replaced += 1;
                    *l = l.replacen(
                        "server_names: [",
                        &format!("server_names: [\"{GOOGLE_WILDCARD}\", "),
                        1,
                    );
                }
            }
            assert_eq!(replaced, 1, "{name}: one filter chain serves {GOOGLE}");
        }
        if self.tcp_tls_session && gw == Gateway::TcpIstio {
            let at: Vec<usize> = (0..lines.len())
                .filter(|&i| code(&lines[i]) == format!("\"@type\": {NETWORK_EXT_AUTHZ_TYPE}"))
                .collect();
            assert_eq!(
                at.len(),
                ext_authz_filters,
                "{name}: network ext_authz filters"
            );
            for i in at.into_iter().rev() {
                let line = format!(
                    "{}include_tls_session: true # the EnvoyFilter's patch",
                    indent(&lines[i])
                );
                lines.insert(i + 1, line);
            }
        }
        if let Some(gate) = self.custom_gate {
            let kind = if gw == Gateway::TcpIstio {
                "network"
            } else {
                "http"
            };
            let at: Vec<usize> = (0..lines.len())
                .filter(|&i| code(&lines[i]) == format!("- name: envoy.filters.{kind}.ext_authz"))
                .collect();
            assert_eq!(at.len(), ext_authz_filters, "{name}: ext_authz filters");
            for i in at.into_iter().rev() {
                let ty = (i..lines.len())
                    .find(|&j| code(&lines[j]).starts_with("\"@type\""))
                    .unwrap();
                let inner = indent(&lines[ty]);
                lines.insert(
                    ty + 1,
                    format!(
                        "{inner}filter_enabled_metadata: {{filter: envoy.filters.{kind}.rbac, path: [{{key: istio_ext_authz_shadow_effective_policy_id}}], value: {{string_match: {{prefix: istio-ext-authz}}}}}} # istiod's gate"
                    ),
                );
                let outer = indent(&lines[i]);
                // The network RBAC filter requires a stat prefix; istiod uses "tcp.".
                let stat_prefix = if kind == "network" {
                    ", stat_prefix: tcp."
                } else {
                    ""
                };
                let rbac = [
                    format!(
                        "{outer}- name: envoy.filters.{kind}.rbac # istiod's shadow RBAC for the CUSTOM policy"
                    ),
                    format!(
                        "{outer}  typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.{kind}.rbac.v3.RBAC, shadow_rules_stat_prefix: istio_ext_authz_{stat_prefix}, shadow_rules: {{action: DENY, policies: {{\"{CUSTOM_POLICY_ID}\": {{permissions: {}, principals: [{{and_ids: {{ids: [{{any: true}}]}}}}]}}}}}}}}",
                        gate.permissions()
                    ),
                ];
                lines.splice(i..i, rbac);
            }
        }
        let text = lines.join("\n");
        self.assert_applied(gw, &text, ext_authz_filters);
        text
    }

    /// Checks the edited text as Envoy will read it (YAML, not lines): exactly the expected ext_authz
    /// configs exist, each with the variant's `failure_mode_allow` and `include_tls_session`, no such key
    /// elsewhere, and the wildcard in exactly the server names that list developers.google.com.
    fn assert_applied(self, gw: Gateway, text: &str, ext_authz_filters: usize) {
        fn walk(v: &yaml_serde::Value, f: &mut dyn FnMut(&yaml_serde::Mapping)) {
            match v {
                yaml_serde::Value::Mapping(m) => {
                    f(m);
                    for (_, child) in m {
                        walk(child, f);
                    }
                }
                yaml_serde::Value::Sequence(s) => s.iter().for_each(|c| walk(c, f)),
                _ => {}
            }
        }
        let name = gw.template();
        let doc: yaml_serde::Value = yaml_serde::from_str(text)
            .unwrap_or_else(|e| panic!("{name}: edited bootstrap is not YAML: {e}"));
        let mut configs = Vec::new();
        let (mut with_wildcard, mut google_chains) = (0, 0);
        let (mut rbac_filters, mut gated) = (0, 0);
        walk(&doc, &mut |m| {
            let ty = m.get("@type").and_then(yaml_serde::Value::as_str);
            let flag = |k: &str| m.get(k).map(|v| v.as_bool());
            if ty.is_some_and(|t| t.ends_with(".rbac.v3.RBAC")) {
                rbac_filters += 1;
            }
            if m.get("filter_enabled_metadata").is_some() {
                gated += 1;
            }
            if ty == Some(HTTP_EXT_AUTHZ_TYPE) || ty == Some(NETWORK_EXT_AUTHZ_TYPE) {
                let tls = flag("include_tls_session").unwrap_or(Some(false));
                configs.push((
                    ty == Some(NETWORK_EXT_AUTHZ_TYPE),
                    flag("failure_mode_allow"),
                    tls,
                ));
            } else {
                for k in ["failure_mode_allow", "include_tls_session"] {
                    assert!(
                        m.get(k).is_none(),
                        "{name}: {k} outside an ext_authz config"
                    );
                }
            }
            if let Some(names) = m
                .get("server_names")
                .and_then(yaml_serde::Value::as_sequence)
            {
                let names: Vec<&str> = names.iter().filter_map(yaml_serde::Value::as_str).collect();
                with_wildcard += usize::from(names.contains(&GOOGLE_WILDCARD));
                google_chains += usize::from(names.contains(&GOOGLE));
            }
        });
        let network = gw == Gateway::TcpIstio;
        let tls_session = if network {
            self.tcp_tls_session
        } else {
            gw == Gateway::HttpTlsSession
        };
        assert_eq!(
            configs,
            vec![(network, Some(Some(self.fail_open)), Some(tls_session)); ext_authz_filters],
            "{name}: (network filter, failure_mode_allow, include_tls_session) of each ext_authz config"
        );
        let gates = if self.custom_gate.is_some() {
            ext_authz_filters
        } else {
            0
        };
        assert_eq!(
            (rbac_filters, gated),
            (gates, gates),
            "{name}: shadow RBAC filters and gated ext_authz filters"
        );
        assert_eq!(google_chains, 1, "{name}: filter chains serving {GOOGLE}");
        assert_eq!(
            with_wildcard,
            usize::from(self.google_wildcard),
            "{name}: filter chains matching {GOOGLE_WILDCARD}"
        );
    }
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
        let name = gw.template();
        let access_log = dir.join(format!("{name}.access.log"));
        let mut vars = vars.clone();
        vars.insert("ACCESS_LOG", access_log.display().to_string());
        let config_path = dir.join(format!("{name}.yaml"));
        let config = variant.apply(gw, &render_template(gw, &vars));
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
                tokio::time::sleep(POLL).await;
            }
        };
        poll_until(Duration::from_secs(30), "envoy /ready", || async move {
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

    pub async fn stat(&self, name: &str) -> u64 {
        self.stats(name).await.get(name).copied().unwrap_or(0)
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
        poll_until(
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
        poll_until(
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
        manifest_dir().join(match self {
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
    pub google_http: Upstream,
    pub yahoo_http: Upstream,
    pub google_tcp: Upstream,
    pub yahoo_tcp: Upstream,
    pub relay: Relay,
    pub server: Option<AuthzServer>,
    pub envoys: BTreeMap<Gateway, Envoy>,
    pub decision_log: &'static str,
}

/// The egress-authz binary: Cargo's `CARGO_BIN_EXE_egress-authz` in integration tests; elsewhere (the
/// demo example) `EGRESS_AUTHZ_BIN`, else target/debug/egress-authz.
pub fn server_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_egress-authz") {
        return PathBuf::from(p);
    }
    std::env::var_os("EGRESS_AUTHZ_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("target/debug/egress-authz"))
}

impl World {
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
        let tmp = tempfile::Builder::new()
            .prefix("egress-authz-e2e-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let pki = Pki::generate(&tmp.path().join("certs"));
        let rules_dir = tmp.path().join("rules");
        std::fs::create_dir_all(&rules_dir).map_err(|e| e.to_string())?;
        let rules_file = rules_dir.join("egress.yaml");
        std::fs::write(&rules_file, rules).map_err(|e| e.to_string())?;
        let google_http = Upstream::http(GOOGLE).await;
        let yahoo_http = Upstream::http(YAHOO).await;
        let google_tcp = Upstream::tcp(GOOGLE).await;
        let yahoo_tcp = Upstream::tcp(YAHOO).await;
        let relay = Relay::start().await;
        let server = AuthzServer::start(&server_bin(), &rules_dir, "all").await?;
        relay.set_target(Some(server.grpc));
        let vars = BTreeMap::from([
            ("CERTS", pki.dir.display().to_string()),
            ("AUTHZ_PORT", relay.addr.port().to_string()),
            ("GOOGLE_HTTP_PORT", google_http.addr.port().to_string()),
            ("YAHOO_HTTP_PORT", yahoo_http.addr.port().to_string()),
            ("GOOGLE_TCP_PORT", google_tcp.addr.port().to_string()),
            ("YAHOO_TCP_PORT", yahoo_tcp.addr.port().to_string()),
        ]);
        let mut world = Self {
            tmp,
            pki,
            rules_dir,
            rules_file,
            google_http,
            yahoo_http,
            google_tcp,
            yahoo_tcp,
            relay,
            server: Some(server),
            envoys: BTreeMap::new(),
            decision_log: "all",
        };
        for gw in gateways {
            let envoy = Envoy::start(envoy_bin, *gw, world.tmp.path(), &vars, variant).await?;
            world.envoys.insert(*gw, envoy);
        }
        Ok(world)
    }

    pub fn envoy(&self, gw: Gateway) -> &Envoy {
        self.envoys
            .get(&gw)
            .unwrap_or_else(|| panic!("gateway {gw:?} not started"))
    }

    pub fn server(&self) -> &AuthzServer {
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
        let server = AuthzServer::start(&server_bin(), &self.rules_dir, self.decision_log).await?;
        self.relay.set_target(Some(server.grpc));
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
        poll_until(
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

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("=== e2e diagnostics ===\n{}", self.diagnostics());
        }
        // Children are SIGKILLed by their kill_on_drop guards when the fields drop.
    }
}
