//! Expectations for the Istio egress walkthrough and the request/assert helpers shared by the e2e tests and
//! the demo. A check asserts three views of the same request: what the client saw, what the stand-in
//! host saw, and Envoy's access-log entry with the ext_authz dynamic metadata.

use serde_json::Value;

use crate::envoy::{Envoy, Gateway};
use crate::http::HttpOutcome;
use crate::net::{HttpsRequest, TcpOutcome, TcpResult, https_request, tls_stream};
use crate::pki::{DEFAULT_SLEEP, FOREIGN_TD, NO_URI_SAN, OTHERNS_SLEEP, SLEEP_GOOGLE, SLEEP_YAHOO};
use crate::world::{GOOGLE, Stage, World, YAHOO};

pub use crate::envoy::{HTTP_STAT_PREFIX, TCP_STAT_PREFIX};

/// Expected decision. `reasons` lists acceptable reason codes (identity edge cases may legitimately be
/// reported as `no_matching_rule` or `invalid_principal`).
#[derive(Debug, Clone)]
pub struct Expect {
    pub allow: bool,
    pub reasons: Vec<&'static str>,
    pub rule: Option<&'static str>,
    pub dry_run: Option<(&'static str, &'static str)>,
}

impl Expect {
    pub fn allow(reason: &'static str, rule: Option<&'static str>) -> Self {
        Self {
            allow: true,
            reasons: vec![reason],
            rule,
            dry_run: None,
        }
    }

    pub fn deny(reason: &'static str, rule: Option<&'static str>) -> Self {
        Self {
            allow: false,
            reasons: vec![reason],
            rule,
            dry_run: None,
        }
    }

    pub fn deny_any(reasons: &[&'static str]) -> Self {
        Self {
            allow: false,
            reasons: reasons.to_vec(),
            rule: None,
            dry_run: None,
        }
    }

    pub fn with_dry_run(mut self, rule: &'static str, decision: &'static str) -> Self {
        self.dry_run = Some((rule, decision));
        self
    }

    pub fn describe(&self) -> String {
        let verdict = if self.allow { "allow" } else { "deny" };
        match self.rule {
            Some(r) => format!("{verdict} ({} {r})", self.reasons.join("|")),
            None => format!("{verdict} ({})", self.reasons.join("|")),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub allow: usize,
    pub deny: usize,
}

impl Tally {
    pub fn add(&mut self, e: &Expect) {
        if e.allow {
            self.allow += 1
        } else {
            self.deny += 1
        }
    }
}

/// Callers of the walkthrough: the walkthrough's four workloads, then the identity edge cases.
pub const CALLERS: [&str; 6] = crate::pki::WORKLOADS;

/// The Istio egress walkthrough as a table: what each caller may reach in each stage, and which rule decides.
pub fn expected(stage: Stage, caller: &str, host: &str) -> Expect {
    let google = host == GOOGLE;
    debug_assert!(google || host == YAHOO);
    // With a DENY default, a caller without a trusted identity is refused as such.
    if (caller == FOREIGN_TD || caller == NO_URI_SAN) && stage != Stage::NamespaceLevel {
        return Expect::deny("invalid_principal", None);
    }
    match stage {
        // Deny-list: default must not reach yahoo, otherns must not reach google; the rest is allowed --
        // including callers without a trusted identity (foreign trust domain, no URI SAN): a rule whose
        // `from` names namespaces never matches them, so the DENY rules cannot stop them and the
        // default ALLOW applies.
        Stage::NamespaceLevel => match (caller, google) {
            (DEFAULT_SLEEP, false) => Expect::deny("denied_by_rule", Some("deny-default-to-yahoo")),
            (OTHERNS_SLEEP | SLEEP_GOOGLE | SLEEP_YAHOO, true) => {
                Expect::deny("denied_by_rule", Some("deny-otherns-to-google"))
            }
            _ => Expect::allow("default_allow", None),
        },
        // Allow-list per service account in otherns; default has no rule any more.
        Stage::ServiceAccountLevel => match (caller, google) {
            (OTHERNS_SLEEP, _) => Expect::allow("allowed_by_rule", Some("otherns-sleep-to-both")),
            (SLEEP_GOOGLE, true) => {
                Expect::allow("allowed_by_rule", Some("sleep-google-to-google"))
            }
            (SLEEP_YAHOO, false) => Expect::allow("allowed_by_rule", Some("sleep-yahoo-to-yahoo")),
            _ => Expect::deny("no_matching_rule", None),
        },
        Stage::AllowNothing => Expect::deny("no_matching_rule", None),
        Stage::Final => match (caller, google) {
            (DEFAULT_SLEEP, true) => Expect::allow("allowed_by_rule", Some("default-ns-to-google")),
            (OTHERNS_SLEEP, _) => Expect::allow("allowed_by_rule", Some("otherns-sleep-to-both")),
            (SLEEP_GOOGLE, true) => {
                Expect::allow("allowed_by_rule", Some("otherns-sleep-google-to-google"))
            }
            (SLEEP_YAHOO, false) => {
                Expect::allow("allowed_by_rule", Some("otherns-sleep-yahoo-to-yahoo"))
            }
            _ => Expect::deny("no_matching_rule", None),
        },
    }
}

/// Asserts the ext_authz dynamic metadata Envoy logged against the expectation.
pub fn assert_metadata(authz: &Value, exp: &Expect, ctx: &str) {
    let decision = if exp.allow { "allow" } else { "deny" };
    assert_eq!(
        authz["decision"].as_str(),
        Some(decision),
        "{ctx}: metadata.decision in {authz}"
    );
    let reason = authz["reason"].as_str().unwrap_or_default();
    assert!(
        exp.reasons.contains(&reason),
        "{ctx}: metadata.reason {reason:?}, expected {:?}: {authz}",
        exp.reasons
    );
    assert_eq!(
        authz["rule"].as_str(),
        exp.rule,
        "{ctx}: metadata.rule in {authz}"
    );
    match exp.dry_run {
        Some((rule, d)) => {
            assert_eq!(
                authz["dry_run_rule"].as_str(),
                Some(rule),
                "{ctx}: metadata.dry_run_rule in {authz}"
            );
            assert_eq!(
                authz["dry_run_decision"].as_str(),
                Some(d),
                "{ctx}: metadata.dry_run_decision in {authz}"
            );
        }
        None => assert!(
            authz.get("dry_run_rule").is_none_or(Value::is_null),
            "{ctx}: unexpected dry_run_rule: {authz}"
        ),
    }
}

/// One HTTPS request through gateway `gw` as `caller`, with TLS SNI `sni` and `Host: host`; asserts the
/// client's view, the upstream's view and Envoy's access log. Returns the access-log entry.
#[allow(clippy::too_many_arguments)]
pub async fn check_http(
    world: &World,
    gw: Gateway,
    caller: &str,
    sni: &str,
    host: &str,
    path: &str,
    exp: &Expect,
    ctx: &str,
) -> Value {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let id = format!(
        "req-{}",
        SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let request = HttpsRequest {
        sni,
        host,
        method: "GET",
        path,
        test_id: &id,
    };
    let (r, entry) = through_http(world, gw, caller, request)
        .await
        .unwrap_or_else(|e| panic!("{ctx} [{gw:?}]: request failed: {e}"));
    let entry = entry.unwrap_or_else(|e| panic!("{ctx} [{gw:?}]: {e}"));
    assert_eq!(
        entry["test_id"].as_str(),
        Some(id.as_str()),
        "{ctx} [{gw:?}]: access-log entry of this request"
    );
    let upstream_saw = world.http_upstream(host).seen_with_id(&id);
    let ctx = format!(
        "{ctx} [HTTP {gw:?}] got {} {:?}; log {entry}",
        r.status,
        r.body.trim()
    );
    if exp.allow {
        assert_eq!(r.status, 200, "{ctx}");
        assert_eq!(r.body.trim(), host, "{ctx}: body names the upstream");
        assert_eq!(
            upstream_saw.len(),
            1,
            "{ctx}: upstream saw the request once"
        );
        let xfcc = upstream_saw[0].xfcc.as_deref().unwrap_or_default();
        if let Some(uri) = crate::pki::spiffe_of(caller) {
            assert!(
                xfcc.contains(&format!("URI={uri}")),
                "{ctx}: XFCC names the caller: {xfcc}"
            );
        }
        assert_eq!(entry["details"].as_str(), Some("via_upstream"), "{ctx}");
    } else {
        assert_eq!(r.status, 403, "{ctx}");
        assert!(
            upstream_saw.is_empty(),
            "{ctx}: denied request reached the upstream"
        );
        let hdr = r
            .header("x-egress-authz-reason")
            .unwrap_or_else(|| panic!("{ctx}: no x-egress-authz-reason"));
        let code = hdr.split(';').next().unwrap_or_default().trim();
        assert!(
            exp.reasons.contains(&code),
            "{ctx}: reason header {hdr:?}, expected {:?}",
            exp.reasons
        );
        if let Some(rule) = exp.rule {
            assert!(
                hdr.contains(&format!("rule={rule}")),
                "{ctx}: reason header {hdr:?} names {rule}"
            );
            assert!(r.body.contains(rule), "{ctx}: body names the rule");
        }
        assert!(r.body.contains(code), "{ctx}: body names the reason");
        assert_eq!(entry["details"].as_str(), Some("ext_authz_denied"), "{ctx}");
        assert_eq!(entry["flags"].as_str(), Some("UAEX"), "{ctx}");
    }
    assert_eq!(
        entry["code"].as_u64(),
        Some(u64::from(r.status)),
        "{ctx}: logged status"
    );
    assert_eq!(entry["authority"].as_str(), Some(host), "{ctx}");
    assert_peer(&entry, caller, &ctx);
    assert_metadata(&entry["authz"], exp, &ctx);
    entry
}

/// %DOWNSTREAM_PEER_URI_SAN% is the caller's SPIFFE ID, or empty for the cert without URI SAN.
fn assert_peer(entry: &Value, caller: &str, ctx: &str) {
    match crate::pki::spiffe_of(caller) {
        Some(uri) => assert_eq!(entry["peer"].as_str(), Some(uri.as_str()), "{ctx}: peer"),
        None => assert!(
            entry["peer"].is_null() || entry["peer"] == "-",
            "{ctx}: peer"
        ),
    }
}

/// One opaque stream through the TLS gateway as `caller` with SNI `host`; asserts bytes flow (the
/// upstream answers with its name) or the connection is closed before any upstream byte, plus Envoy's log.
pub async fn check_tcp(world: &World, caller: &str, host: &str, exp: &Expect, ctx: &str) -> Value {
    let upstream = world.tcp_upstream(host);
    let before = upstream.hits();
    let (r, entry) = through_tcp(world, caller, host)
        .await
        .unwrap_or_else(|e| panic!("{ctx} [TCP]: {e}"));
    let entry = entry.unwrap_or_else(|e| panic!("{ctx} [TCP]: {e}"));
    let after = upstream.hits();
    let ctx = format!("{ctx} [TCP] got {:?}; log {entry}", r.outcome);
    if exp.allow {
        assert_eq!(r.outcome, TcpOutcome::Flowed(host.to_owned()), "{ctx}");
        assert_eq!(after, before + 1, "{ctx}: upstream got the bytes");
    } else {
        assert!(matches!(r.outcome, TcpOutcome::Closed(_)), "{ctx}");
        assert_eq!(
            after, before,
            "{ctx}: bytes reached the upstream of a denied connection"
        );
        assert_eq!(entry["details"].as_str(), Some("ext_authz_denied"), "{ctx}");
        assert_eq!(entry["flags"].as_str(), Some("UAEX"), "{ctx}");
    }
    assert_eq!(entry["sni"].as_str(), Some(host), "{ctx}");
    assert_peer(&entry, caller, &ctx);
    assert_metadata(&entry["authz"], exp, &ctx);
    entry
}

/// [`check_http`] through `http_gateway` with SNI and Host `host`, then [`check_tcp`] to `host`: the
/// same caller, destination and expectation over both paths.
pub async fn check_http_and_tcp(
    world: &World,
    http_gateway: Gateway,
    caller: &str,
    host: &str,
    exp: &Expect,
    ctx: &str,
) {
    check_http(world, http_gateway, caller, host, host, "/", exp, ctx).await;
    check_tcp(world, caller, host, exp, ctx).await;
}

/// Number of 5xx responses in an HTTP gateway's access log.
pub fn logged_5xx(envoy: &Envoy) -> usize {
    envoy
        .access_log_entries()
        .iter()
        .filter(|e| e["code"].as_u64().is_some_and(|c| c >= 500))
        .count()
}

/// What one request/stream did, without asserting (for the demo's table).
#[derive(Debug, Clone)]
pub struct Observation {
    /// "200", "403", "flowed", "closed", or "error: ..." for a client-side failure.
    pub outcome: String,
    pub allowed: bool,
    /// From Envoy's access log: ext_authz metadata `decision`, `reason`, `rule`.
    pub decision: String,
    pub reason: String,
    pub rule: String,
}

impl Observation {
    fn from_entry(outcome: String, allowed: bool, entry: Option<Value>) -> Self {
        let authz = entry.map(|e| e["authz"].clone()).unwrap_or(Value::Null);
        let s = |k: &str| authz[k].as_str().unwrap_or("-").to_owned();
        Self {
            outcome,
            allowed,
            decision: s("decision"),
            reason: s("reason"),
            rule: s("rule"),
        }
    }

    fn failed(e: String) -> Self {
        Self::from_entry(format!("error: {e}"), false, None)
    }
}

/// Like `curl -I https://<host><path>` from `caller`'s sidecar through HTTP gateway `gw`.
pub async fn observe_http(
    world: &World,
    gw: Gateway,
    caller: &str,
    sni: &str,
    host: &str,
    path: &str,
) -> Observation {
    let request = HttpsRequest {
        sni,
        host,
        method: "HEAD",
        path,
        test_id: "demo",
    };
    match through_http(world, gw, caller, request).await {
        Ok((r, entry)) => {
            Observation::from_entry(r.status.to_string(), r.status == 200, entry.ok())
        }
        Err(e) => Observation::failed(e),
    }
}

/// One HTTPS request through gateway `gw` as `caller` (see [`https_request`]), and Envoy's access-log
/// entry for it (`Err` if none turned up in time).
pub async fn through_http(
    world: &World,
    gw: Gateway,
    caller: &str,
    request: HttpsRequest<'_>,
) -> Result<(HttpOutcome, Result<Value, String>), String> {
    let envoy = world.envoy(gw);
    let cfg = world.pki.client_config(caller, &["http/1.1"]);
    let skip = envoy.access_log_len();
    let r = https_request(envoy.listener, cfg, request).await?;
    let entry = envoy.access_log_for(r.local_addr, skip).await;
    Ok((r, entry))
}

/// An opaque TLS-in-mTLS stream from `caller` to `host` through the TCP gateway.
pub async fn observe_tcp(world: &World, caller: &str, host: &str) -> Observation {
    match through_tcp(world, caller, host).await {
        Ok((r, entry)) => {
            let entry = entry.ok();
            let (outcome, allowed) = match &r.outcome {
                TcpOutcome::Flowed(who) if who == host => ("flowed".to_owned(), true),
                TcpOutcome::Flowed(who) => (format!("flowed to {who}!"), false),
                TcpOutcome::Closed(_) => ("closed".to_owned(), false),
            };
            Observation::from_entry(outcome, allowed, entry)
        }
        Err(e) => Observation::failed(e),
    }
}

/// One opaque stream through the TCP gateway as `caller` with SNI `host` (see [`tls_stream`]), and
/// Envoy's access-log entry for it (`Err` if none turned up in time).
pub async fn through_tcp(
    world: &World,
    caller: &str,
    host: &str,
) -> Result<(TcpResult, Result<Value, String>), String> {
    through_tcp_via(world, Gateway::TcpIstio, caller, host).await
}

/// [`through_tcp`] through TLS gateway `gw`.
pub async fn through_tcp_via(
    world: &World,
    gw: Gateway,
    caller: &str,
    host: &str,
) -> Result<(TcpResult, Result<Value, String>), String> {
    let envoy = world.envoy(gw);
    let skip = envoy.access_log_len();
    let r = tls_stream(envoy.listener, world.pki.client_config(caller, &[]), host).await?;
    let entry = envoy.access_log_for(r.local_addr, skip).await;
    Ok((r, entry))
}
