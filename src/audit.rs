//! `audit-gateway`: reads an Envoy admin `/config_dump` and reports every way traffic could leave the
//! gateway without an ext_authz check, or with a check that cannot work. Pure: JSON in, findings out.
//!
//! Field names are looked up in both spellings, because the admin API prints proto field names
//! (`failure_mode_allow`) while `istioctl proxy-config ... -o json` prints JSON names (`failureModeAllow`).
//!
//! "Checked" is decided conservatively: whatever the audit cannot prove to trigger a check (a shadow RBAC
//! rule on headers, routes from RDS it cannot see, an unknown terminal filter) is reported, since a wrong
//! finding costs a look while a missed one is an open egress path.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// A finding's kind. The names are a stable interface (`--json`, alerts, scripts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// An HTTP connection manager without `envoy.filters.http.ext_authz` (or with it disabled).
    UncheckedHttpChain,
    /// A TCP chain whose terminal filter (`tcp_proxy`) is not preceded by `envoy.filters.network.ext_authz`.
    UncheckedTcpChain,
    /// ext_authz is gated by `filter_enabled_metadata` on Istio's shadow RBAC, and the shadow rules are not
    /// proven to match every request on the listener's port: the unmatched ones are never checked.
    CheckNotTriggeredOnPort,
    /// `failure_mode_allow: true`: a failed or timed-out check lets the traffic through.
    FailOpen,
    /// No `grpc_service.timeout`: Envoy then waits as long as Istio's default of 600 s.
    NoTimeout,
    /// A check timeout above one second: a stalled server holds every request that long.
    LongTimeout,
    /// HTTP ext_authz without `include_tls_session`: the server never sees the SNI, so it cannot deny an
    /// SNI that differs from the Host.
    NoTlsSession,
    /// The ext_authz gRPC cluster is not in the dump: every check fails.
    MissingAuthzCluster,
    /// The ext_authz cluster does not speak HTTP/2: gRPC over HTTP/1.1 fails every check.
    AuthzClusterNotHttp2,
    /// No `authority` on `envoy_grpc`, and the cluster name (Envoy's default `:authority`) holds characters
    /// an HTTP/2 server rejects, such as Istio's `|`: every check fails.
    BadGrpcAuthority,
    /// The ext_authz filter has no `grpc_service` (an HTTP service, or none): egress-authz is not asked.
    NoGrpcService,
}

impl Code {
    /// Every code, in the order the documentation lists them.
    pub const ALL: [Self; 11] = [
        Self::UncheckedHttpChain,
        Self::UncheckedTcpChain,
        Self::CheckNotTriggeredOnPort,
        Self::FailOpen,
        Self::NoTimeout,
        Self::LongTimeout,
        Self::NoTlsSession,
        Self::MissingAuthzCluster,
        Self::AuthzClusterNotHttp2,
        Self::BadGrpcAuthority,
        Self::NoGrpcService,
    ];

    /// The code as printed and serialized.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UncheckedHttpChain => "unchecked_http_chain",
            Self::UncheckedTcpChain => "unchecked_tcp_chain",
            Self::CheckNotTriggeredOnPort => "check_not_triggered_on_port",
            Self::FailOpen => "fail_open",
            Self::NoTimeout => "no_timeout",
            Self::LongTimeout => "long_timeout",
            Self::NoTlsSession => "no_tls_session",
            Self::MissingAuthzCluster => "missing_authz_cluster",
            Self::AuthzClusterNotHttp2 => "authz_cluster_not_http2",
            Self::BadGrpcAuthority => "bad_grpc_authority",
            Self::NoGrpcService => "no_grpc_service",
        }
    }

    /// Errors are ways traffic leaves unchecked, or checks that cannot succeed or hang. `no_tls_session`
    /// is only a warning: every request is still checked, only the SNI/Host comparison is off, and Istio
    /// does not generate the field (the deploy bundle adds it with an EnvoyFilter).
    pub const fn severity(self) -> Severity {
        match self {
            Self::NoTlsSession => Severity::Warning,
            _ => Severity::Error,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How bad a finding is; any error makes `audit-gateway` exit 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warning => "warning",
        }
    }
}

/// One problem, located at a listener's filter chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub code: Code,
    pub severity: Severity,
    pub listener: String,
    /// The chain's name, or `#<index>` when it has none, or `default` for the default filter chain.
    pub filter_chain: String,
    /// The listener's port; `None` when it has no socket address or binds port 0 (any free port).
    pub port: Option<u32>,
    pub detail: String,
}

/// What was audited and what was found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub listeners: usize,
    pub filter_chains: usize,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    fn count(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == severity)
            .count()
    }

    /// The codes found, sorted and deduplicated (for tests and summaries).
    pub fn codes(&self) -> Vec<Code> {
        let mut codes: Vec<Code> = self.findings.iter().map(|f| f.code).collect();
        codes.sort_unstable();
        codes.dedup();
        codes
    }
}

/// The input is not something the audit can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DumpError {
    #[error(
        "not an Envoy config dump: the top level is not a JSON object (a listener list alone, as from `istioctl proxy-config listener`, lacks the clusters: use `proxy-config all`)"
    )]
    NotAnObject,
    #[error(
        "not an Envoy config dump: no `configs` with a ListenersConfigDump or BootstrapConfigDump, and no bootstrap `static_resources`"
    )]
    NoListeners,
}

const LISTENERS_DUMP: &str = "type.googleapis.com/envoy.admin.v3.ListenersConfigDump";
const CLUSTERS_DUMP: &str = "type.googleapis.com/envoy.admin.v3.ClustersConfigDump";
const BOOTSTRAP_DUMP: &str = "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump";

const HCM: &str = "envoy.filters.network.http_connection_manager";
const HCM_TYPE: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const HTTP_EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";
const HTTP_EXT_AUTHZ_TYPE: &str = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
const NETWORK_EXT_AUTHZ: &str = "envoy.filters.network.ext_authz";
const NETWORK_EXT_AUTHZ_TYPE: &str = "envoy.extensions.filters.network.ext_authz.v3.ExtAuthz";
const HTTP_RBAC_TYPE: &str = "envoy.extensions.filters.http.rbac.v3.RBAC";
const NETWORK_RBAC_TYPE: &str = "envoy.extensions.filters.network.rbac.v3.RBAC";
const HTTP_RBAC: &str = "envoy.filters.http.rbac";
const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
/// The RBAC filter writes the matched shadow policy under `<shadow_rules_stat_prefix>` + this key.
const SHADOW_POLICY_KEY: &str = "shadow_effective_policy_id";
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// Above this a stalled authz server holds every request noticeably; the deploy bundle uses 0.5 s.
const MAX_TIMEOUT_SECS: f64 = 1.0;

/// Audits a config dump (admin `/config_dump`, `istioctl proxy-config all -o json`) or a bare bootstrap.
pub fn audit(dump: &Value) -> Result<Report, DumpError> {
    let root = dump.as_object().ok_or(DumpError::NotAnObject)?;
    let (listeners, clusters) = if let Some(configs) = root.get("configs").and_then(Value::as_array)
    {
        from_configs(configs).ok_or(DumpError::NoListeners)?
    } else if let Some(resources) = field(dump, "static_resources") {
        from_bootstrap(resources)
    } else {
        return Err(DumpError::NoListeners);
    };
    let mut report = Report::default();
    for listener in &listeners {
        audit_listener(listener, &clusters, &mut report);
    }
    Ok(report)
}

fn from_configs(configs: &[Value]) -> Option<(Vec<&Value>, Vec<&Value>)> {
    let of_type = |ty: &'static str| configs.iter().filter(move |c| c["@type"] == ty);
    let mut listeners = Vec::new();
    let mut clusters = Vec::new();
    let mut found = false;
    for dump in of_type(LISTENERS_DUMP) {
        found = true;
        listeners.extend(list(dump, "static_listeners").filter_map(|l| field(l, "listener")));
        // Only the active state serves traffic; warming and draining copies would repeat it.
        listeners.extend(
            list(dump, "dynamic_listeners")
                .filter_map(|l| field(l, "active_state").and_then(|s| field(s, "listener"))),
        );
    }
    for dump in of_type(CLUSTERS_DUMP) {
        for key in [
            "static_clusters",
            "dynamic_active_clusters",
            "dynamic_warming_clusters",
        ] {
            clusters.extend(list(dump, key).filter_map(|c| field(c, "cluster")));
        }
    }
    if !found {
        // A dump filtered to the bootstrap (`/config_dump?resource=bootstrap`, or an old Envoy) still
        // carries the static listeners and clusters.
        let resources = of_type(BOOTSTRAP_DUMP)
            .find_map(|b| field(b, "bootstrap").and_then(|b| field(b, "static_resources")))?;
        let (l, c) = from_bootstrap(resources);
        return Some((l, c));
    }
    if clusters.is_empty() {
        // Without a ClustersConfigDump the bootstrap's static clusters are the best evidence there is.
        if let Some(resources) = of_type(BOOTSTRAP_DUMP)
            .find_map(|b| field(b, "bootstrap").and_then(|b| field(b, "static_resources")))
        {
            clusters.extend(list(resources, "clusters"));
        }
    }
    Some((listeners, clusters))
}

fn from_bootstrap(resources: &Value) -> (Vec<&Value>, Vec<&Value>) {
    (
        list(resources, "listeners").collect(),
        list(resources, "clusters").collect(),
    )
}

/// `value[name]` under the proto name or its lowerCamelCase JSON name.
fn field<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    let object = value.as_object()?;
    if let Some(v) = object.get(name) {
        return Some(v);
    }
    if !name.contains('_') {
        return None;
    }
    let mut camel = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            camel.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            camel.push(c);
        }
    }
    object.get(&camel)
}

fn list<'a>(value: &'a Value, name: &str) -> impl Iterator<Item = &'a Value> {
    field(value, name)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn str_field<'a>(value: &'a Value, name: &str) -> Option<&'a str> {
    field(value, name).and_then(Value::as_str)
}

fn bool_field(value: &Value, name: &str) -> bool {
    field(value, name).and_then(Value::as_bool).unwrap_or(false)
}

/// Numbers may arrive as JSON numbers or, for 64-bit fields, strings.
fn u64_field(value: &Value, name: &str) -> Option<u64> {
    let v = field(value, name)?;
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// The filter's typed config type without the `type.googleapis.com/` prefix.
fn filter_type(filter: &Value) -> Option<&str> {
    let ty = field(filter, "typed_config").and_then(|c| c["@type"].as_str())?;
    Some(ty.rsplit('/').next().unwrap_or(ty))
}

/// A filter is identified by its typed config's type, or by its well-known name when the config comes
/// from elsewhere (ECDS) and only the name is in the dump.
fn is_filter(filter: &Value, name: &str, ty: &str) -> bool {
    match filter_type(filter) {
        Some(t) => t == ty,
        None => str_field(filter, "name") == Some(name),
    }
}

struct Chain<'a> {
    listener: &'a str,
    name: String,
    port: Option<u32>,
}

impl Chain<'_> {
    fn finding(&self, code: Code, detail: impl Into<String>) -> Finding {
        Finding {
            code,
            severity: code.severity(),
            listener: self.listener.to_owned(),
            filter_chain: self.name.clone(),
            port: self.port,
            detail: detail.into(),
        }
    }
}

fn audit_listener(listener: &Value, clusters: &[&Value], report: &mut Report) {
    report.listeners += 1;
    let name = str_field(listener, "name").unwrap_or("<unnamed>");
    let port = field(listener, "address")
        .and_then(|a| field(a, "socket_address"))
        .and_then(|s| u64_field(s, "port_value"))
        .and_then(|p| u32::try_from(p).ok())
        .filter(|&p| p != 0);
    let chains = list(listener, "filter_chains")
        .enumerate()
        .map(|(i, c)| {
            let chain_name = str_field(c, "name")
                .filter(|n| !n.is_empty())
                .map_or_else(|| format!("#{i}"), str::to_owned);
            (chain_name, c)
        })
        .chain(field(listener, "default_filter_chain").map(|c| ("default".to_owned(), c)));
    for (chain_name, chain) in chains {
        report.filter_chains += 1;
        let at = Chain {
            listener: name,
            name: chain_name,
            port,
        };
        audit_chain(&at, chain, clusters, &mut report.findings);
    }
}

fn audit_chain(at: &Chain<'_>, chain: &Value, clusters: &[&Value], out: &mut Vec<Finding>) {
    let filters: Vec<&Value> = list(chain, "filters").collect();
    if let Some(hcm_at) = filters.iter().position(|f| is_filter(f, HCM, HCM_TYPE)) {
        let hcm = field(filters[hcm_at], "typed_config").unwrap_or(&Value::Null);
        audit_http(at, hcm, clusters, out);
        return;
    }
    let Some(terminal) = filters.last() else {
        // No filters: Envoy rejects such a chain, so it cannot pass traffic.
        return;
    };
    let terminal_name = str_field(terminal, "name").unwrap_or("<unnamed>");
    let before = &filters[..filters.len() - 1];
    let checks: Vec<(usize, &Value)> = before
        .iter()
        .enumerate()
        .filter(|(_, f)| is_filter(f, NETWORK_EXT_AUTHZ, NETWORK_EXT_AUTHZ_TYPE))
        .map(|(i, f)| (i, *f))
        .collect();
    if checks.is_empty() {
        out.push(at.finding(
            Code::UncheckedTcpChain,
            format!("{terminal_name} is not preceded by {NETWORK_EXT_AUTHZ}: connections are never checked"),
        ));
        return;
    }
    for (index, check) in checks {
        let config = field(check, "typed_config").unwrap_or(&Value::Null);
        audit_ext_authz(at, config, &before[..index], false, clusters, out);
    }
}

fn audit_http(at: &Chain<'_>, hcm: &Value, clusters: &[&Value], out: &mut Vec<Finding>) {
    if let Some(routes) = field(hcm, "route_config") {
        // Istio's own listeners (15090 stats, 15021 health) route only to the proxy itself and carry no
        // egress traffic. Routes from RDS are not in the listener dump, so they get the full audit.
        let mut targets = Vec::new();
        for route in list(routes, "virtual_hosts").flat_map(|vh| list(vh, "routes")) {
            if field(route, "direct_response").is_some() || field(route, "redirect").is_some() {
                continue;
            }
            // Weighted or header-chosen clusters stay `None`: not proven to stay on loopback.
            targets.push(field(route, "route").and_then(|r| str_field(r, "cluster")));
        }
        if reaches_only_proxy_itself(targets, clusters) {
            return;
        }
    }
    let filters: Vec<&Value> = list(hcm, "http_filters").collect();
    let checks: Vec<(usize, &Value)> = filters
        .iter()
        .enumerate()
        .filter(|(_, f)| is_filter(f, HTTP_EXT_AUTHZ, HTTP_EXT_AUTHZ_TYPE))
        .map(|(i, f)| (i, *f))
        .collect();
    let enabled: Vec<_> = checks
        .iter()
        .filter(|(_, f)| !bool_field(f, "disabled"))
        .collect();
    if enabled.is_empty() {
        let detail = if checks.is_empty() {
            format!("no {HTTP_EXT_AUTHZ} in the HTTP filters: requests are never checked")
        } else {
            format!(
                "{HTTP_EXT_AUTHZ} is `disabled: true` (enabled only by per-route config the audit cannot see)"
            )
        };
        out.push(at.finding(Code::UncheckedHttpChain, detail));
        return;
    }
    for (index, check) in enabled {
        let config = field(check, "typed_config").unwrap_or(&Value::Null);
        audit_ext_authz(at, config, &filters[..*index], true, clusters, out);
    }
}

/// Istio's bootstrap clusters for the proxy's own stats (admin port) and for pilot-agent's health and
/// stats endpoints.
const PROXY_LOCAL_CLUSTERS: [&str; 2] = ["prometheus_stats", "agent"];

/// True when every target is one of [`PROXY_LOCAL_CLUSTERS`] and its endpoints are all loopback
/// addresses. The name alone is not enough (anyone can name a cluster `agent`), and loopback alone is not
/// either (a sidecar-style gateway or a test reaches real hosts through loopback).
fn reaches_only_proxy_itself<'a>(
    targets: impl IntoIterator<Item = Option<&'a str>>,
    clusters: &[&Value],
) -> bool {
    let mut any = false;
    for target in targets {
        any = true;
        let Some(name) = target.filter(|n| PROXY_LOCAL_CLUSTERS.contains(n)) else {
            return false;
        };
        let Some(cluster) = find_cluster(clusters, name) else {
            return false;
        };
        let Some(assignment) = field(cluster, "load_assignment") else {
            return false;
        };
        let mut endpoints = list(assignment, "endpoints")
            .flat_map(|e| list(e, "lb_endpoints"))
            .peekable();
        if endpoints.peek().is_none() {
            return false;
        }
        let all_loopback = endpoints.all(|e| {
            field(e, "endpoint")
                .and_then(|e| field(e, "address"))
                .and_then(|a| field(a, "socket_address"))
                .and_then(|s| str_field(s, "address"))
                .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                .is_some_and(|ip| ip.is_loopback())
        });
        if !all_loopback {
            return false;
        }
    }
    any
}

fn find_cluster<'a>(clusters: &[&'a Value], name: &str) -> Option<&'a Value> {
    clusters
        .iter()
        .copied()
        .find(|c| str_field(c, "name") == Some(name))
}

/// One ext_authz filter's settings; `before` are the filters that run ahead of it in the same chain.
fn audit_ext_authz(
    at: &Chain<'_>,
    config: &Value,
    before: &[&Value],
    http: bool,
    clusters: &[&Value],
    out: &mut Vec<Finding>,
) {
    if let Some(gate) = field(config, "filter_enabled_metadata")
        && let Err(why) = gate_covers_port(gate, before, http, at.port)
    {
        out.push(at.finding(Code::CheckNotTriggeredOnPort, why));
    }
    if bool_field(config, "failure_mode_allow") {
        out.push(at.finding(
            Code::FailOpen,
            "failure_mode_allow: true: a failed or timed-out check lets the traffic through",
        ));
    }
    if http && !bool_field(config, "include_tls_session") {
        out.push(at.finding(
            Code::NoTlsSession,
            "no include_tls_session: the server cannot compare the SNI with the Host",
        ));
    }
    let Some(grpc) = field(config, "grpc_service") else {
        out.push(at.finding(
            Code::NoGrpcService,
            "ext_authz has no grpc_service: egress-authz (gRPC) is not the service asked",
        ));
        return;
    };
    match field(grpc, "timeout").map(duration_secs) {
        None => out.push(at.finding(
            Code::NoTimeout,
            "no grpc_service.timeout: a stalled check holds the request for Istio's default of 600s",
        )),
        Some(None) => out.push(at.finding(
            Code::LongTimeout,
            "grpc_service.timeout is not a duration the audit can read",
        )),
        Some(Some(secs)) if secs > MAX_TIMEOUT_SECS => out.push(at.finding(
            Code::LongTimeout,
            format!("grpc_service.timeout is {secs}s, above {MAX_TIMEOUT_SECS}s"),
        )),
        Some(Some(_)) => {}
    }
    // A Google gRPC client names its target itself and needs no Envoy cluster.
    let Some(envoy_grpc) = field(grpc, "envoy_grpc") else {
        return;
    };
    let cluster_name = str_field(envoy_grpc, "cluster_name").unwrap_or("");
    let authority = str_field(envoy_grpc, "authority").unwrap_or("");
    if authority.is_empty()
        && let Some(bad) = cluster_name.chars().find(|&c| !authority_char(c))
    {
        out.push(at.finding(
            Code::BadGrpcAuthority,
            format!(
                "no envoy_grpc.authority: :authority is the cluster name {cluster_name:?}, whose {bad:?} an HTTP/2 server rejects"
            ),
        ));
    }
    match find_cluster(clusters, cluster_name) {
        None => out.push(at.finding(
            Code::MissingAuthzCluster,
            format!("ext_authz cluster {cluster_name:?} is not in the dump: every check fails"),
        )),
        Some(cluster) if !speaks_http2(cluster) => out.push(at.finding(
            Code::AuthzClusterNotHttp2,
            format!(
                "cluster {cluster_name:?} has no explicit HTTP/2 (http2_protocol_options): gRPC checks fail"
            ),
        )),
        Some(_) => {}
    }
}

/// Characters RFC 3986 allows in an authority (reg-name, IP literal, port, userinfo).
fn authority_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@[]%".contains(c)
}

fn speaks_http2(cluster: &Value) -> bool {
    if field(cluster, "http2_protocol_options").is_some() {
        return true;
    }
    // Only an explicit HTTP/2 config counts: `auto_config` falls back to HTTP/1.1 without TLS ALPN, and
    // `use_downstream_protocol_config` follows whatever the client spoke.
    field(cluster, "typed_extension_protocol_options")
        .and_then(|o| o.get(HTTP_PROTOCOL_OPTIONS))
        .and_then(|o| field(o, "explicit_http_config"))
        .and_then(|e| field(e, "http2_protocol_options"))
        .is_some()
}

/// Seconds of a protobuf Duration in its JSON form (`"0.500s"`) or as `{seconds, nanos}`.
fn duration_secs(value: &Value) -> Option<f64> {
    if let Some(s) = value.as_str() {
        return s.strip_suffix('s')?.parse().ok();
    }
    let seconds = u64_field(value, "seconds").unwrap_or(0);
    let nanos = u64_field(value, "nanos").unwrap_or(0);
    #[allow(clippy::cast_precision_loss)] // durations are far below 2^52 s
    Some(seconds as f64 + nanos as f64 / 1e9)
}

/// Whether ext_authz's `filter_enabled_metadata` is proven to be set for every connection or request on
/// `port`. Err says why not.
fn gate_covers_port(
    gate: &Value,
    before: &[&Value],
    http: bool,
    port: Option<u32>,
) -> Result<(), String> {
    let (rbac_name, rbac_type) = if http {
        (HTTP_RBAC, HTTP_RBAC_TYPE)
    } else {
        (NETWORK_RBAC, NETWORK_RBAC_TYPE)
    };
    let namespace = str_field(gate, "filter").unwrap_or("");
    if namespace != rbac_name {
        return Err(format!(
            "ext_authz is gated on metadata of {namespace:?}, not of {rbac_name}; the audit cannot prove it is set"
        ));
    }
    if bool_field(gate, "invert") {
        return Err("ext_authz's filter_enabled_metadata is inverted".to_owned());
    }
    let keys: Vec<&str> = list(gate, "path")
        .filter_map(|p| str_field(p, "key"))
        .collect();
    let [key] = keys[..] else {
        return Err(format!(
            "filter_enabled_metadata path {keys:?} is not a single key"
        ));
    };
    let matcher = field(gate, "value")
        .and_then(|v| field(v, "string_match"))
        .ok_or("filter_enabled_metadata matches no string value")?;
    let id_matches = |id: &str| -> bool {
        if let Some(prefix) = str_field(matcher, "prefix") {
            id.starts_with(prefix)
        } else if let Some(exact) = str_field(matcher, "exact") {
            id == exact
        } else {
            false
        }
    };
    // The RBAC filter that writes `key`: several may run (an ALLOW policy's dry run writes
    // `istio_dry_run_...`), told apart by their shadow stat prefix.
    let rbac = before.iter().rev().find_map(|f| {
        if !is_filter(f, rbac_name, rbac_type) {
            return None;
        }
        let config = field(f, "typed_config")?;
        let prefix = str_field(config, "shadow_rules_stat_prefix").unwrap_or("");
        (format!("{prefix}{SHADOW_POLICY_KEY}") == key).then_some(config)
    });
    let Some(rbac) = rbac else {
        return Err(format!(
            "ext_authz runs only when {rbac_name} sets {key}, and no such RBAC filter runs before it: never checked"
        ));
    };
    let Some(rules) = field(rbac, "shadow_rules") else {
        return Err(format!(
            "the {rbac_name} filter that sets {key} has no shadow_rules the audit can read"
        ));
    };
    let Some(policies) = field(rules, "policies").and_then(Value::as_object) else {
        return Err(format!(
            "the shadow rules have no policies: {key} is never set, so nothing is checked"
        ));
    };
    let covering = policies.iter().any(|(id, policy)| {
        id_matches(id)
            && any_of(list(policy, "permissions"), &|p| permission(p, port)) == Tri::Always
            && any_of(list(policy, "principals"), &principal) == Tri::Always
    });
    if covering {
        return Ok(());
    }
    let port_text = port.map_or_else(|| "an unknown port".to_owned(), |p| format!("port {p}"));
    Err(format!(
        "no shadow policy matching the gate ({}) is proven to match every caller on {port_text}: requests it misses are never checked",
        policies
            .keys()
            .filter(|id| id_matches(id))
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Whether a matcher matches: for every request on the port, for none, or it depends on more than the
/// port (headers, paths, callers) or on something the audit does not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tri {
    Always,
    Never,
    Unknown,
}

impl Tri {
    const fn not(self) -> Self {
        match self {
            Self::Always => Self::Never,
            Self::Never => Self::Always,
            Self::Unknown => Self::Unknown,
        }
    }
}

fn any_of<'a>(items: impl Iterator<Item = &'a Value>, f: &dyn Fn(&Value) -> Tri) -> Tri {
    let mut result = Tri::Never;
    for item in items {
        match f(item) {
            Tri::Always => return Tri::Always,
            Tri::Unknown => result = Tri::Unknown,
            Tri::Never => {}
        }
    }
    result
}

fn all_of<'a>(items: impl Iterator<Item = &'a Value>, f: &dyn Fn(&Value) -> Tri) -> Tri {
    let mut result = Tri::Always;
    for item in items {
        match f(item) {
            Tri::Never => return Tri::Never,
            Tri::Unknown => result = Tri::Unknown,
            Tri::Always => {}
        }
    }
    result
}

/// An RBAC `Permission` evaluated for requests on `port` (unknown port: only `any` is decidable).
fn permission(p: &Value, port: Option<u32>) -> Tri {
    let recurse = |v: &Value| permission(v, port);
    if bool_field(p, "any") {
        return Tri::Always;
    }
    if let Some(wanted) = u64_field(p, "destination_port") {
        return match port {
            Some(port) if u64::from(port) == wanted => Tri::Always,
            Some(_) => Tri::Never,
            None => Tri::Unknown,
        };
    }
    if let Some(range) = field(p, "destination_port_range") {
        let start = u64_field(range, "start").unwrap_or(0);
        let end = u64_field(range, "end").unwrap_or(0);
        return match port {
            // Envoy's Int32Range: start inclusive, end exclusive.
            Some(port) if (start..end).contains(&u64::from(port)) => Tri::Always,
            Some(_) => Tri::Never,
            None => Tri::Unknown,
        };
    }
    if let Some(rules) = field(p, "and_rules") {
        return all_of(list(rules, "rules"), &recurse);
    }
    if let Some(rules) = field(p, "or_rules") {
        return any_of(list(rules, "rules"), &recurse);
    }
    if let Some(inner) = field(p, "not_rule") {
        return permission(inner, port).not();
    }
    Tri::Unknown
}

/// An RBAC `Principal`: only `any` (possibly inside and/or/not) is decidable without the caller.
fn principal(p: &Value) -> Tri {
    if bool_field(p, "any") {
        return Tri::Always;
    }
    if let Some(ids) = field(p, "and_ids") {
        return all_of(list(ids, "ids"), &principal);
    }
    if let Some(ids) = field(p, "or_ids") {
        return any_of(list(ids, "ids"), &principal);
    }
    if let Some(inner) = field(p, "not_id") {
        return principal(inner).not();
    }
    Tri::Unknown
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const HTTP_FILTERS: &str = "/configs/2/dynamic_listeners/0/active_state/listener/filter_chains/0/filters/0/typed_config/http_filters";
    const HTTP_AUTHZ: &str = "/configs/2/dynamic_listeners/0/active_state/listener/filter_chains/0/filters/0/typed_config/http_filters/0/typed_config";
    const TCP_FILTERS: &str =
        "/configs/2/dynamic_listeners/1/active_state/listener/filter_chains/0/filters";
    const TCP_AUTHZ: &str = "/configs/2/dynamic_listeners/1/active_state/listener/filter_chains/0/filters/0/typed_config";
    const AUTHZ_CLUSTER: &str = "/configs/1/dynamic_active_clusters/0/cluster";

    fn fixture(name: &str) -> Value {
        let text = match name {
            "clean" => include_str!("../tests/fixtures/audit/clean.json"),
            "any" => include_str!("../tests/fixtures/audit/istiod-custom-any-80-443.json"),
            "ports" => include_str!("../tests/fixtures/audit/istiod-custom-ports-8080-8443.json"),
            "ports-on-80" => {
                include_str!("../tests/fixtures/audit/istiod-custom-ports-on-80-443.json")
            }
            _ => panic!("no fixture {name}"),
        };
        serde_json::from_str(text).unwrap()
    }

    fn at<'a>(dump: &'a mut Value, pointer: &str) -> &'a mut Value {
        dump.pointer_mut(pointer)
            .unwrap_or_else(|| panic!("{pointer}"))
    }

    fn set(dump: &mut Value, pointer: &str, key: &str, value: Value) {
        at(dump, pointer)
            .as_object_mut()
            .unwrap()
            .insert(key.to_owned(), value);
    }

    fn remove(dump: &mut Value, pointer: &str, key: &str) {
        at(dump, pointer)
            .as_object_mut()
            .unwrap()
            .remove(key)
            .unwrap();
    }

    /// The findings as (code, listener, chain, port).
    fn found(dump: &Value) -> Vec<(Code, String, String, Option<u32>)> {
        let report = audit(dump).unwrap();
        report
            .findings
            .into_iter()
            .map(|f| {
                assert_eq!(f.severity, f.code.severity());
                (f.code, f.listener, f.filter_chain, f.port)
            })
            .collect()
    }

    fn http(code: Code) -> (Code, String, String, Option<u32>) {
        (code, "0.0.0.0_8080".into(), "#0".into(), Some(8080))
    }

    fn tcp(code: Code) -> (Code, String, String, Option<u32>) {
        (
            code,
            "0.0.0.0_8443".into(),
            "developers.google.com".into(),
            Some(8443),
        )
    }

    #[test]
    fn the_fixtures_the_bundle_produces_are_clean() {
        for name in ["clean", "any", "ports"] {
            let report = audit(&fixture(name)).unwrap();
            assert_eq!(report.findings, [], "{name}");
            // Istio's stats listener plus one HTTP and one TCP gateway listener were all looked at.
            assert_eq!((report.listeners, report.filter_chains), (3, 3), "{name}");
        }
    }

    #[test]
    fn an_http_chain_without_ext_authz_is_unchecked() {
        let mut dump = fixture("clean");
        at(&mut dump, HTTP_FILTERS)
            .as_array_mut()
            .unwrap()
            .remove(0);
        assert_eq!(found(&dump), [http(Code::UncheckedHttpChain)]);

        let mut dump = fixture("clean");
        set(
            &mut dump,
            &format!("{HTTP_FILTERS}/0"),
            "disabled",
            json!(true),
        );
        assert_eq!(found(&dump), [http(Code::UncheckedHttpChain)]);
    }

    #[test]
    fn a_tcp_proxy_not_preceded_by_ext_authz_is_unchecked() {
        let mut dump = fixture("clean");
        at(&mut dump, TCP_FILTERS).as_array_mut().unwrap().remove(0);
        assert_eq!(found(&dump), [tcp(Code::UncheckedTcpChain)]);

        // After tcp_proxy, ext_authz never sees the connection.
        let mut dump = fixture("clean");
        at(&mut dump, TCP_FILTERS)
            .as_array_mut()
            .unwrap()
            .swap(0, 1);
        assert_eq!(found(&dump), [tcp(Code::UncheckedTcpChain)]);
    }

    #[test]
    fn istios_stats_listener_is_exempt_only_while_it_stays_on_loopback() {
        let mut dump = fixture("clean");
        let endpoint = "/configs/1/static_clusters/0/cluster/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address";
        set(&mut dump, endpoint, "address", json!("203.0.113.7"));
        assert_eq!(
            found(&dump),
            [(
                Code::UncheckedHttpChain,
                "0.0.0.0_15090".into(),
                "#0".into(),
                Some(15090)
            )]
        );
    }

    #[test]
    fn a_shadow_policy_for_other_ports_never_triggers_the_check() {
        assert_eq!(
            found(&fixture("ports-on-80")),
            [
                (
                    Code::CheckNotTriggeredOnPort,
                    "0.0.0.0_80".into(),
                    "#0".into(),
                    Some(80)
                ),
                (
                    Code::CheckNotTriggeredOnPort,
                    "0.0.0.0_443".into(),
                    "developers.google.com".into(),
                    Some(443)
                ),
            ]
        );
    }

    /// Replaces the permissions of every shadow policy (HTTP and TCP) in the `any` fixture.
    fn with_permissions(permissions: &Value) -> Value {
        let mut dump = fixture("any");
        for listener in 0..2 {
            let filter = if listener == 0 {
                "filters/0/typed_config/http_filters/0"
            } else {
                "filters/0"
            };
            let policy = format!(
                "/configs/2/dynamic_listeners/{listener}/active_state/listener/filter_chains/0/{filter}/typed_config/shadow_rules/policies/istio-ext-authz-ns[istio-system]-policy[egress-ext-authz]-rule[0]"
            );
            set(&mut dump, &policy, "permissions", permissions.clone());
        }
        dump
    }

    #[test]
    fn shadow_permissions_are_read_conservatively() {
        let flagged = |permissions: Value| {
            found(&with_permissions(&permissions))
                .iter()
                .map(|f| (f.0, f.3))
                .collect::<Vec<_>>()
        };
        let both = vec![
            (Code::CheckNotTriggeredOnPort, Some(80)),
            (Code::CheckNotTriggeredOnPort, Some(443)),
        ];
        let on_443 = vec![(Code::CheckNotTriggeredOnPort, Some(443))];
        assert_eq!(flagged(json!([{"any": true}])), []);
        assert_eq!(
            flagged(
                json!([{"or_rules": {"rules": [{"destination_port": 80}, {"destination_port": 443}]}}])
            ),
            []
        );
        assert_eq!(flagged(json!([{"destination_port": 80}])), on_443);
        // Two permissions: either one matching is enough.
        assert_eq!(
            flagged(json!([{"destination_port": 443}, {"destination_port": 80}])),
            []
        );
        // Int32Range: end is exclusive.
        assert_eq!(
            flagged(json!([{"destination_port_range": {"start": 80, "end": 443}}])),
            on_443
        );
        assert_eq!(
            flagged(json!([{"not_rule": {"destination_port": 9000}}])),
            []
        );
        assert_eq!(
            flagged(json!([{"not_rule": {"destination_port": 80}}])),
            vec![(Code::CheckNotTriggeredOnPort, Some(80))]
        );
        // Matches only some requests on the port: the others pass unchecked.
        assert_eq!(
            flagged(
                json!([{"and_rules": {"rules": [{"any": true}, {"url_path": {"path": {"prefix": "/"}}}]}}])
            ),
            both
        );
        assert_eq!(
            flagged(json!([{"requested_server_name": {"exact": "a"}}])),
            both
        );
        assert_eq!(flagged(json!([])), both);
    }

    #[test]
    fn shadow_principals_restricting_callers_leave_the_others_unchecked() {
        let mut dump = fixture("any");
        let policy = "/configs/2/dynamic_listeners/1/active_state/listener/filter_chains/0/filters/0/typed_config/shadow_rules/policies/istio-ext-authz-ns[istio-system]-policy[egress-ext-authz]-rule[0]";
        set(
            &mut dump,
            policy,
            "principals",
            json!([{"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/a/sa/b"}}}]),
        );
        assert_eq!(
            found(&dump).iter().map(|f| f.0).collect::<Vec<_>>(),
            [Code::CheckNotTriggeredOnPort]
        );
    }

    #[test]
    fn a_gate_no_shadow_rbac_can_open_never_triggers_the_check() {
        // The shadow RBAC filter is gone.
        let mut dump = fixture("any");
        at(&mut dump, TCP_FILTERS).as_array_mut().unwrap().remove(0);
        assert_eq!(
            found(&dump),
            [(
                Code::CheckNotTriggeredOnPort,
                "0.0.0.0_443".into(),
                "developers.google.com".into(),
                Some(443)
            )]
        );
        // Its policy ids do not match the gate's prefix (another provider's filter).
        let mut dump = fixture("any");
        let gate = "/configs/2/dynamic_listeners/0/active_state/listener/filter_chains/0/filters/0/typed_config/http_filters/1/typed_config/filter_enabled_metadata/value/string_match";
        set(&mut dump, gate, "prefix", json!("istio-ext-authz-other"));
        // The stat prefix decides the key: the dry-run RBAC of an ALLOW policy does not open the gate.
        let rbac = "/configs/2/dynamic_listeners/1/active_state/listener/filter_chains/0/filters/0/typed_config";
        set(
            &mut dump,
            rbac,
            "shadow_rules_stat_prefix",
            json!("istio_dry_run_"),
        );
        assert_eq!(
            found(&dump).iter().map(|f| f.3).collect::<Vec<_>>(),
            [Some(80), Some(443)]
        );
    }

    #[test]
    fn an_unknown_port_is_covered_only_by_any() {
        for (name, findings) in [("any", 0), ("ports", 2)] {
            let mut dump = fixture(name);
            for listener in 0..2 {
                let address = format!(
                    "/configs/2/dynamic_listeners/{listener}/active_state/listener/address/socket_address"
                );
                set(&mut dump, &address, "port_value", json!(0));
            }
            let report = audit(&dump).unwrap();
            assert_eq!(report.findings.len(), findings, "{name}");
            assert!(report.findings.iter().all(|f| f.port.is_none()));
        }
    }

    #[test]
    fn each_ext_authz_setting_is_checked() {
        let cases: [(String, &str, Option<Value>, Code); 8] = [
            (
                HTTP_AUTHZ.into(),
                "failure_mode_allow",
                Some(json!(true)),
                Code::FailOpen,
            ),
            (
                TCP_AUTHZ.into(),
                "failure_mode_allow",
                Some(json!(true)),
                Code::FailOpen,
            ),
            (
                HTTP_AUTHZ.into(),
                "include_tls_session",
                None,
                Code::NoTlsSession,
            ),
            (HTTP_AUTHZ.into(), "grpc_service", None, Code::NoGrpcService),
            (
                format!("{TCP_AUTHZ}/grpc_service"),
                "timeout",
                None,
                Code::NoTimeout,
            ),
            (
                format!("{HTTP_AUTHZ}/grpc_service"),
                "timeout",
                Some(json!("1.500s")),
                Code::LongTimeout,
            ),
            (
                format!("{TCP_AUTHZ}/grpc_service"),
                "timeout",
                Some(json!({"seconds": 2})),
                Code::LongTimeout,
            ),
            (
                AUTHZ_CLUSTER.into(),
                "typed_extension_protocol_options",
                None,
                Code::AuthzClusterNotHttp2,
            ),
        ];
        for (pointer, key, value, code) in cases {
            let pointer = pointer.as_str();
            let mut dump = fixture("clean");
            match &value {
                Some(v) => set(&mut dump, pointer, key, v.clone()),
                None => remove(&mut dump, pointer, key),
            }
            let findings = found(&dump);
            let codes: Vec<Code> = findings.iter().map(|f| f.0).collect();
            let expected = if code == Code::AuthzClusterNotHttp2 {
                2
            } else {
                1
            };
            assert_eq!(codes, vec![code; expected], "{pointer} {key} = {value:?}");
        }
        assert_eq!(Code::NoTlsSession.severity(), Severity::Warning);
        let mut dump = fixture("clean");
        set(
            &mut dump,
            &format!("{HTTP_AUTHZ}/grpc_service"),
            "timeout",
            json!("1s"),
        );
        assert_eq!(found(&dump), [], "exactly one second is fine");
    }

    #[test]
    fn the_authz_cluster_must_exist_and_be_named_reachably() {
        let mut dump = fixture("clean");
        set(&mut dump, AUTHZ_CLUSTER, "name", json!("egress-authz"));
        assert_eq!(
            found(&dump),
            [
                http(Code::MissingAuthzCluster),
                tcp(Code::MissingAuthzCluster)
            ]
        );

        let mut dump = fixture("clean");
        remove(
            &mut dump,
            &format!("{TCP_AUTHZ}/grpc_service/envoy_grpc"),
            "authority",
        );
        assert_eq!(found(&dump), [tcp(Code::BadGrpcAuthority)]);

        // A cluster name that is a valid authority is sent as one.
        let mut dump = fixture("clean");
        remove(
            &mut dump,
            &format!("{TCP_AUTHZ}/grpc_service/envoy_grpc"),
            "authority",
        );
        set(
            &mut dump,
            &format!("{TCP_AUTHZ}/grpc_service/envoy_grpc"),
            "cluster_name",
            json!("egress-authz.svc:9000"),
        );
        set(
            &mut dump,
            AUTHZ_CLUSTER,
            "name",
            json!("egress-authz.svc:9000"),
        );
        assert_eq!(found(&dump), [http(Code::MissingAuthzCluster)]);

        // The deprecated cluster-level field still makes it HTTP/2.
        let mut dump = fixture("clean");
        remove(&mut dump, AUTHZ_CLUSTER, "typed_extension_protocol_options");
        set(
            &mut dump,
            AUTHZ_CLUSTER,
            "http2_protocol_options",
            json!({}),
        );
        assert_eq!(found(&dump), []);
    }

    /// `istioctl proxy-config all -o json` prints lowerCamelCase JSON names; map keys (policy ids,
    /// extension names, `@type`) stay as they are.
    fn camel_case(value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| {
                        let keep = k.contains(['.', '[', '@']);
                        let key = if keep {
                            k.clone()
                        } else {
                            let mut out = String::new();
                            let mut upper = false;
                            for c in k.chars() {
                                if c == '_' {
                                    upper = true;
                                } else {
                                    out.push(if upper { c.to_ascii_uppercase() } else { c });
                                    upper = false;
                                }
                            }
                            out
                        };
                        (key, camel_case(v))
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(camel_case).collect()),
            other => other.clone(),
        }
    }

    #[test]
    fn istioctl_json_names_read_the_same() {
        for name in ["clean", "any", "ports", "ports-on-80"] {
            let dump = fixture(name);
            let camel = camel_case(&dump);
            assert_ne!(camel, dump);
            assert_eq!(audit(&camel), audit(&dump), "{name}");
        }
        let mut dump = fixture("clean");
        set(&mut dump, HTTP_AUTHZ, "failure_mode_allow", json!(true));
        assert_eq!(found(&camel_case(&dump)), [http(Code::FailOpen)]);
    }

    #[test]
    fn a_bare_bootstrap_and_a_bootstrap_dump_are_read() {
        let dump = fixture("clean");
        let listeners: Vec<Value> = dump["configs"][2]["dynamic_listeners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["active_state"]["listener"].clone())
            .collect();
        let clusters: Vec<Value> = dump["configs"][1]["dynamic_active_clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["cluster"].clone())
            .collect();
        let mut resources = json!({"listeners": listeners, "clusters": clusters});
        let bootstrap = json!({"static_resources": resources});
        assert_eq!(audit(&bootstrap).unwrap().filter_chains, 2);
        assert_eq!(found(&bootstrap), []);
        resources["clusters"] = json!([]);
        let filtered = json!({"configs": [{
            "@type": BOOTSTRAP_DUMP, "bootstrap": {"static_resources": resources}
        }]});
        assert_eq!(
            found(&filtered),
            [
                http(Code::MissingAuthzCluster),
                tcp(Code::MissingAuthzCluster)
            ]
        );
    }

    #[test]
    fn input_that_is_not_a_config_dump_is_rejected() {
        assert_eq!(audit(&json!([1])), Err(DumpError::NotAnObject));
        assert_eq!(audit(&json!({"configs": []})), Err(DumpError::NoListeners));
        assert_eq!(audit(&json!({"rules": []})), Err(DumpError::NoListeners));
    }

    #[test]
    fn codes_serialize_as_they_print() {
        let names: Vec<String> = Code::ALL
            .iter()
            .map(|c| {
                serde_json::to_value(c)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        let shown: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names, shown);
    }
}
