//! End to end against a real Envoy 1.40 configured like an Istio egress gateway with a CUSTOM
//! AuthorizationPolicy (`envoyExtAuthzGrpc` provider), real mTLS with per-run SPIFFE certificates, the
//! egress-authz binary, and loopback stand-ins for developers.google.com and developer.yahoo.com.
//!
//! Envoy is found via `ENVOY_BIN`, PATH or `.venv-envoy/bin/envoy` (`scripts/install.sh envoy`). Without it
//! these tests print "SKIPPED" and pass, unless `CI` or `EGRESS_AUTHZ_REQUIRE_ENVOY=1` is set: then they fail.
//!
//! The tests that send TLS server names which are not host names drive `openssl s_client` (`OPENSSL_BIN`
//! or PATH), since rustls only sends DNS names; without it they skip or fail like the others.
//!
//! Run: `scripts/install.sh envoy && EGRESS_AUTHZ_REQUIRE_ENVOY=1 cargo test --test e2e_envoy`
// `serial()` holds a std Mutex across awaits on purpose: it serializes tests that each run their own
// runtime.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::await_holding_lock)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use testkit::envoy::{
    self, CustomGate, Gateway, Variant, envoy_or_skip, envoy_validate, render_template,
};
use testkit::http::{http_get, parse_response};
use testkit::net::{self, HttpsRequest, TcpOutcome, https_request, tls_stream};
use testkit::pki::{DEFAULT_SLEEP, OTHERNS_SLEEP, Pki, SLEEP_YAHOO};
use testkit::prom::Metrics;
use testkit::scenarios::{
    self, Expect, HTTP_STAT_PREFIX, TCP_STAT_PREFIX, Tally, check_http, check_http_and_tcp,
    check_tcp, expected, through_http, through_tcp,
};
use testkit::server::Server;
use testkit::wait::poll_for;
use testkit::world::{GOOGLE, SerialWorld, Stage, World, YAHOO, serial};

/// Every template renders and passes `envoy --mode validate`, as checked in and with the fail-open
/// variant; (a') differs from (a) only by `include_tls_session: true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_bootstraps_validate() {
    let Some(envoy) = envoy_or_skip("envoy_bootstraps_validate") else {
        return;
    };
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&tmp.path().join("certs"));
    for gw in Gateway::ALL {
        let vars = BTreeMap::from([
            ("CERTS", pki.dir.display().to_string()),
            (
                "ACCESS_LOG",
                tmp.path().join("access.log").display().to_string(),
            ),
            ("AUTHZ_PORT", "9000".to_owned()),
            ("GOOGLE_HTTP_PORT", "18001".to_owned()),
            ("YAHOO_HTTP_PORT", "18002".to_owned()),
            ("GOOGLE_TCP_PORT", "18003".to_owned()),
            ("YAHOO_TCP_PORT", "18004".to_owned()),
        ]);
        // The checked-in bootstrap as istiod emits it, and the variant the fail-open tests run.
        let variants = [
            ("", Variant::ISTIO_DEFAULT),
            (
                "-fail-open-wildcard",
                Variant {
                    fail_open: true,
                    google_wildcard: true,
                    tcp_tls_session: true,
                    custom_gate: None,
                },
            ),
            (
                "-custom-gate",
                Variant {
                    custom_gate: Some(CustomGate::from_bundle().1),
                    ..Variant::ISTIO_DEFAULT
                },
            ),
        ];
        for (suffix, variant) in variants {
            let path = tmp.path().join(format!("{}{suffix}.yaml", gw.template()));
            std::fs::write(&path, variant.apply(gw, &render_template(gw, &vars))).unwrap();
            match envoy_validate(&envoy, &path).await {
                Ok(out) => assert!(out.contains("OK"), "{}{suffix}: {out}", gw.template()),
                Err(out) => panic!(
                    "envoy --mode validate {}{suffix} failed:\n{out}",
                    gw.template()
                ),
            }
        }
    }
    let code = |gw: Gateway| -> Vec<String> {
        let p = testkit::fixtures::project_dir()
            .join("tests/e2e/envoy")
            .join(format!("{}.yaml", gw.template()));
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| l.split(" #").next().unwrap().trim_end().to_owned())
            .collect()
    };
    let (a, a2) = (code(Gateway::HttpIstio), code(Gateway::HttpTlsSession));
    let extra: Vec<&String> = a2.iter().filter(|l| !a.contains(l)).collect();
    assert_eq!(
        extra,
        vec!["              include_tls_session: true"],
        "(a') must be (a) + include_tls_session"
    );
    assert_eq!(a.len() + 1, a2.len());
    for line in code(Gateway::HttpIstio)
        .iter()
        .chain(code(Gateway::TcpIstio).iter())
    {
        assert!(
            !line.contains("include_tls_session"),
            "Istio-exact templates must not set include_tls_session"
        );
        assert!(
            !line.contains("include_peer_certificate"),
            "Istio does not set include_peer_certificate"
        );
    }
}

/// The Istio egress walkthrough, stage by stage, for every caller and both hosts, over the HTTP path (200 with
/// the upstream's name vs 403 with the reason header) and the TCP path (bytes flow vs closed before any
/// upstream byte), plus the identity edge cases (foreign trust domain, no URI SAN) in every stage. Asserts what the client sees, what the
/// stand-in hosts saw, Envoy's access log (ext_authz dynamic metadata), Envoy's stats and the server's
/// metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_egress_walkthrough_http_and_tcp() {
    let started = Instant::now();
    let Some(world) = http_and_tcp_world(
        "istio_egress_walkthrough_http_and_tcp",
        Stage::NamespaceLevel,
    )
    .await
    else {
        return;
    };
    let mut total = Tally::default();
    let counts = |srv: &'_ Server| {
        let srv = srv.admin_addr;
        async move {
            let (_, body) = http_get(srv, "/metrics").await.unwrap();
            let metrics = Metrics::parse(&body);
            let m = |d: &str, p: &str| {
                metrics.sum(
                    "egress_authz_checks_total",
                    &[("decision", d), ("protocol", p)],
                ) as usize
            };
            [
                m("allow", "http"),
                m("deny", "http"),
                m("allow", "tcp"),
                m("deny", "tcp"),
            ]
        }
    };
    for stage in Stage::ALL {
        // Stages switch like the walkthrough switches policies: the rule file is replaced under the running
        // server (hot reload); Envoy and the server stay up.
        if stage != Stage::NamespaceLevel {
            world.reload_rules(&stage.text()).await.unwrap();
        }
        let before = counts(world.server()).await;
        let mut tally = Tally::default();
        for caller in scenarios::CALLERS {
            for host in [GOOGLE, YAHOO] {
                let exp = expected(stage, caller, host);
                let ctx = format!("stage {}: {caller} -> {host}", stage.name());
                check_http_and_tcp(&world, Gateway::HttpIstio, caller, host, &exp, &ctx).await;
                tally.add(&exp);
            }
        }
        // The server counted exactly these decisions during the stage.
        let after = counts(world.server()).await;
        let delta: Vec<usize> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        assert_eq!(
            delta,
            vec![tally.allow, tally.deny, tally.allow, tally.deny],
            "stage {}: server metric egress_authz_checks_total deltas [allow/http, deny/http, allow/tcp, deny/tcp]",
            stage.name()
        );
        total.allow += tally.allow;
        total.deny += tally.deny;
    }
    // Envoy's own view over the whole walkthrough.
    for gw in [Gateway::HttpIstio, Gateway::TcpIstio] {
        let envoy = world.envoy(gw);
        assert_eq!(envoy.ext_authz_stat("ok").await as usize, total.allow);
        assert_eq!(envoy.ext_authz_stat("denied").await as usize, total.deny);
        assert_eq!(envoy.ext_authz_stat("error").await, 0);
    }
    eprintln!(
        "Istio egress walkthrough: {} allowed, {} denied (each over HTTP and TCP) in {:?}",
        total.allow,
        total.deny,
        started.elapsed()
    );
}

const DRY_RUN_RULE: &str = "dry-run-deny-otherns-sleep-to-yahoo";

fn final_with_dry_run() -> String {
    let text = Stage::Final.text();
    let marker = "rules:\n";
    let (head, tail) = text.split_once(marker).expect("rules: in egress.yaml");
    format!(
        "{head}{marker}- name: {DRY_RUN_RULE}\n  description: trial of a deny rule; must not block yet\n  action: DENY\n  dryRun: true\n  from:\n    serviceAccounts: [otherns/sleep]\n  to:\n    hosts: [developer.yahoo.com]\n{tail}"
    )
}

/// SNI/Host mismatch with `include_tls_session` (a') is denied; the Istio-exact filter (a) cannot see the
/// SNI, so the same request passes there. A dry-run DENY rule lets traffic through on HTTP and TCP but
/// shows up in Envoy's ext_authz dynamic metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_host_mismatch_and_dry_run() {
    let Some(world) = World::for_test(
        "sni_host_mismatch_and_dry_run",
        &Gateway::ALL,
        &final_with_dry_run(),
        Variant::ISTIO_DEFAULT,
    )
    .await
    else {
        return;
    };

    let allow = Expect::allow("allowed_by_rule", Some("default-ns-to-google"));
    let mismatch = Expect::deny("sni_host_mismatch", None);
    let dry_run = Expect::allow("allowed_by_rule", Some("otherns-sleep-to-both"))
        .with_dry_run(DRY_RUN_RULE, "deny");
    let plain = Expect::allow("allowed_by_rule", Some("otherns-sleep-yahoo-to-yahoo"));
    // (gateway, caller, TLS SNI, Host, path, expectation, what the row shows)
    #[rustfmt::skip]
    let requests = [
        // Control: matching SNI and Host on (a').
        (Gateway::HttpTlsSession, DEFAULT_SLEEP, GOOGLE, GOOGLE, "/", &allow, "a' control"),
        // Domain fronting: TLS SNI says yahoo, Host says google.
        (Gateway::HttpTlsSession, DEFAULT_SLEEP, YAHOO, GOOGLE, "/", &mismatch, "a' SNI!=Host"),
        // Istio-exact (a): no tls_session in the CheckRequest, the Host alone decides.
        (Gateway::HttpIstio, DEFAULT_SLEEP, YAHOO, GOOGLE, "/", &allow, "a SNI!=Host (no tls_session)"),
        // Dry-run DENY: traffic flows; the metadata names the rule that would have denied.
        (Gateway::HttpIstio, OTHERNS_SLEEP, YAHOO, YAHOO, "/headers", &dry_run, "HttpIstio dry-run"),
        (Gateway::HttpTlsSession, OTHERNS_SLEEP, YAHOO, YAHOO, "/headers", &dry_run, "HttpTlsSession dry-run"),
        // A caller the dry-run rule does not name has no dry-run keys.
        (Gateway::HttpIstio, SLEEP_YAHOO, YAHOO, YAHOO, "/", &plain, "no dry-run match"),
    ];
    let mut entries = Vec::new();
    for (gw, caller, sni, host, path, exp, ctx) in requests {
        entries.push(check_http(&world, gw, caller, sni, host, path, exp, ctx).await);
    }
    let fronted = &entries[1];
    assert_eq!(
        fronted["sni"].as_str(),
        Some(YAHOO),
        "Envoy saw SNI {YAHOO}: {fronted}"
    );
    check_tcp(&world, OTHERNS_SLEEP, YAHOO, &dry_run, "tcp dry-run").await;
}

/// The rule file is replaced (atomic rename) while two clients send traffic: the affected decision flips
/// within 2 s, in both directions, and no request ever gets a 5xx; an unaffected TCP flow keeps flowing.
/// A broken rule file is rejected and the last good rules keep deciding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_flips_decisions_without_5xx() {
    let Some(world) =
        http_and_tcp_world("hot_reload_flips_decisions_without_5xx", Stage::Final).await
    else {
        return;
    };
    let http_gw = world.envoy(Gateway::HttpIstio).listener;
    let tcp_gw = world.envoy(Gateway::TcpIstio).listener;
    let probe_cfg = world.pki.client_config(DEFAULT_SLEEP, &["http/1.1"]);
    let steady_cfg = world.pki.client_config(OTHERNS_SLEEP, &[]);

    // default/sleep -> google: allowed in the final stage, denied (no rule) in the service-account stage.
    // otherns/sleep -> yahoo over TCP: allowed in both.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let steady = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut results = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && results.len() < 400 {
                let r = tls_stream(tcp_gw, steady_cfg.clone(), YAHOO)
                    .await
                    .map(|r| r.outcome);
                results.push(r);
            }
            results
        })
    };
    let mut statuses = Vec::new();
    let probe = Probe {
        world: &world,
        gateway: http_gw,
        cfg: probe_cfg,
    };
    statuses.extend(
        probe
            .flip(
                200,
                403,
                &Stage::ServiceAccountLevel.text(),
                "final->service-account",
            )
            .await,
    );
    statuses.extend(
        probe
            .flip(403, 200, &Stage::Final.text(), "service-account->final")
            .await,
    );
    // The TCP path reads the same live rule set: after flipping back, default/sleep -> google flows.
    let allow = Expect::allow("allowed_by_rule", Some("default-ns-to-google"));
    check_tcp(&world, DEFAULT_SLEEP, GOOGLE, &allow, "after reload").await;

    // A broken rule file is rejected and the last good rules keep serving.
    let srv = world.server();
    assert!(
        srv.metric("egress_authz_reloads_total", &[("result", "success")])
            .await
            >= 2.0,
        "two reloads counted"
    );
    world
        .swap_rules_file("defaultAction: DENY\nrules: [ {name: broken\n")
        .unwrap();
    poll_for(
        Duration::from_secs(5),
        "the broken rule file to be rejected",
        || async {
            (srv.metric("egress_authz_reloads_total", &[("result", "failure")])
                .await
                >= 1.0)
                .then_some(())
        },
    )
    .await
    .unwrap();
    default_to_google(&world, &allow, "broken file ignored").await;

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let steady = steady.await.unwrap();
    assert!(!steady.is_empty());
    for r in &steady {
        assert_eq!(
            r.as_ref().ok(),
            Some(&TcpOutcome::Flowed(YAHOO.to_owned())),
            "steady TCP flow disrupted"
        );
    }
    let http = world.envoy(Gateway::HttpIstio);
    assert_eq!(http.ext_authz_stat("error").await, 0);
    let tcp = world.envoy(Gateway::TcpIstio);
    assert_eq!(tcp.ext_authz_stat("error").await, 0);
    assert_eq!(scenarios::logged_5xx(http), 0, "Envoy logged a 5xx");
    eprintln!(
        "hot reload: {} probe requests, {} steady TCP connections",
        statuses.len(),
        steady.len()
    );
}

/// With `failure_mode_allow: false`, a dead authz server means 403 on HTTP and a closed connection on
/// TCP, and nothing reaches the upstream; Envoy records ext_authz errors. Traffic recovers once the server
/// is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_fails_closed() {
    let Some(mut world) = http_and_tcp_world("server_killed_fails_closed", Stage::Final).await
    else {
        return;
    };
    let allow = Expect::allow("allowed_by_rule", Some("default-ns-to-google"));
    default_to_google(&world, &allow, "before kill").await;

    world.kill_server().await;
    let http = world.envoy(Gateway::HttpIstio);
    let tcp = world.envoy(Gateway::TcpIstio);
    let (http_err0, tcp_err0) = (
        http.ext_authz_stat("error").await,
        tcp.ext_authz_stat("error").await,
    );
    let (g_http0, g_tcp0) = (world.google_http.hits(), world.google_tcp.hits());
    for i in 0..3 {
        let id = format!("killed-{i}");
        let (r, e) = through_http(
            &world,
            Gateway::HttpIstio,
            DEFAULT_SLEEP,
            HttpsRequest::get(GOOGLE, &id),
        )
        .await
        .unwrap();
        // statusOnError "503", as the deploy bundle sets it: an error, told apart from a deny (403).
        assert_eq!(r.status, 503, "fail closed: {r:?}");
        assert!(
            r.header("x-egress-authz-reason").is_none(),
            "no server, no reason header: {r:?}"
        );
        let e = e.unwrap();
        assert_eq!(e["details"].as_str(), Some("ext_authz_error"), "{e}");
        assert_eq!(e["flags"].as_str(), Some("UAEX"), "{e}");
        assert!(world.google_http.seen_with_id(&id).is_empty());

        let (t, e) = through_tcp(&world, DEFAULT_SLEEP, GOOGLE).await.unwrap();
        assert!(
            matches!(t.outcome, TcpOutcome::Closed(_)),
            "fail closed on TCP: {t:?}"
        );
        let e = e.unwrap();
        assert_eq!(e["details"].as_str(), Some("ext_authz_error"), "{e}");
        assert_eq!(e["flags"].as_str(), Some("UAEX"), "{e}");
    }
    assert_eq!(
        world.google_http.hits(),
        g_http0,
        "a request reached the HTTP upstream without a decision"
    );
    assert_eq!(
        world.google_tcp.hits(),
        g_tcp0,
        "bytes reached the TCP upstream without a decision"
    );
    assert_eq!(http.ext_authz_stat("error").await, http_err0 + 3);
    assert_eq!(tcp.ext_authz_stat("error").await, tcp_err0 + 3);

    // Back up: decisions resume.
    world
        .restart_server_with(&Stage::Final.text())
        .await
        .unwrap();
    default_to_google(&world, &allow, "after restart").await;
}

/// The world most tests run in: the Istio-exact HTTP and TCP gateways, the server over `stage`'s rules.
async fn http_and_tcp_world(test: &str, stage: Stage) -> Option<SerialWorld> {
    World::for_test(
        test,
        &[Gateway::HttpIstio, Gateway::TcpIstio],
        &stage.text(),
        Variant::ISTIO_DEFAULT,
    )
    .await
}

/// default/sleep -> developers.google.com over the HTTP and the TCP gateway, both as `exp` says.
async fn default_to_google(world: &World, exp: &Expect, ctx: &str) {
    check_http_and_tcp(world, Gateway::HttpIstio, DEFAULT_SLEEP, GOOGLE, exp, ctx).await;
}

/// The hot-reload probe: default/sleep -> developers.google.com over the HTTP gateway.
struct Probe<'a> {
    world: &'a World,
    gateway: std::net::SocketAddr,
    cfg: std::sync::Arc<rustls::ClientConfig>,
}

impl Probe<'_> {
    /// Swaps the rule file and sends requests back to back until 20 have seen the new status; asserts the
    /// flip happened within 2 s, never flapped back, and no request got a 5xx. Returns all statuses.
    async fn flip(&self, from: u16, to: u16, rules: &str, label: &str) -> Vec<u16> {
        let r = https_request(
            self.gateway,
            self.cfg.clone(),
            HttpsRequest::get(GOOGLE, "reload-pre"),
        )
        .await
        .unwrap();
        assert_eq!(r.status, from, "{label}: before the swap");
        self.world.swap_rules_file(rules).unwrap();
        let swapped = Instant::now();
        let mut statuses = Vec::new();
        let mut flipped_after = None;
        let mut after_flip = 0;
        while after_flip < 20 {
            assert!(
                swapped.elapsed() < Duration::from_secs(10),
                "{label}: decision never flipped to {to} (is hot reload implemented?)"
            );
            let id = format!("reload-{label}-{}", statuses.len());
            let r = https_request(
                self.gateway,
                self.cfg.clone(),
                HttpsRequest::get(GOOGLE, &id),
            )
            .await
            .unwrap();
            statuses.push(r.status);
            assert!(r.status < 500, "{label}: 5xx during reload: {r:?}");
            if r.status == to {
                flipped_after.get_or_insert(swapped.elapsed());
                after_flip += 1;
            } else {
                assert_eq!(r.status, from, "{label}: unexpected status {r:?}");
                assert!(
                    flipped_after.is_none(),
                    "{label}: decision flapped back to {from} after flipping"
                );
            }
        }
        let took = flipped_after.unwrap();
        assert!(
            took <= Duration::from_secs(2),
            "{label}: decision flipped only after {took:?}"
        );
        eprintln!(
            "{label}: flipped {from} -> {to} {took:?} after the file swap ({} requests)",
            statuses.len()
        );
        statuses
    }
}

/// SNIs that are not UTF-8 (a bare `\xff\xfe` before the name; a UTF-8 lead byte cut short), each inside
/// `*.google.com` so that the wildcard filter chain takes it to ext_authz.
const NOT_UTF8_SNIS: [&[u8]; 2] = [
    b"\xff\xfedevelopers.google.com",
    b"developers\xc3.google.com",
];
/// Valid UTF-8 but not a host name (an internationalised name in Unicode form, which a resolver would
/// never be asked for): the decoder accepts it, the host check does not.
const UTF8_NOT_A_HOST_SNI: &str = "d\u{e9}velopers.google.com";
/// Each bad SNI is tried more than once: every attempt must be decided, not one cached answer.
const ATTEMPTS: usize = 2;

/// The counters a raw-SNI attempt may move: Envoy's ext_authz counters, the server's check counters, and
/// what the stand-in hosts received. Taken before and after each attempt (tests run one at a time).
#[derive(Debug, Clone, PartialEq)]
struct Counters {
    /// `[ok, denied, error, failure_mode_allowed]` of the gateway's ext_authz filter.
    envoy: [u64; 4],
    /// `egress_authz_checks_total` by (decision, reason), summed over protocols.
    server: BTreeMap<(String, String), u64>,
    /// HTTP requests or TCP connections with bytes, at both stand-in hosts of the gateway's kind.
    upstream_hits: usize,
}

impl Counters {
    async fn take(world: &World, gw: Gateway) -> Self {
        let envoy = world.envoy(gw);
        let prefix = match gw {
            Gateway::TcpIstio => format!("ext_authz.{TCP_STAT_PREFIX}"),
            _ => format!("http.{HTTP_STAT_PREFIX}.ext_authz"),
        };
        let stats = envoy.stats("ext_authz").await;
        let stat = |s: &str| stats.get(&format!("{prefix}.{s}")).copied().unwrap_or(0);
        let metrics = world.server().metrics().await;
        let mut server = BTreeMap::new();
        for (_, labels, value) in metrics.matching("egress_authz_checks_total", &[]) {
            let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
            *server
                .entry((label("decision"), label("reason")))
                .or_insert(0) += *value as u64;
        }
        let upstream_hits = match gw {
            Gateway::TcpIstio => world.google_tcp.hits() + world.yahoo_tcp.hits(),
            _ => world.google_http.hits() + world.yahoo_http.hits(),
        };
        Self {
            envoy: [
                stat("ok"),
                stat("denied"),
                stat("error"),
                stat("failure_mode_allowed"),
            ],
            server,
            upstream_hits,
        }
    }

    /// `self - before`, keeping only what changed.
    fn delta(&self, before: &Self) -> Delta {
        let mut server = BTreeMap::new();
        for (k, v) in &self.server {
            let d = v - before.server.get(k).copied().unwrap_or(0);
            if d != 0 {
                server.insert(format!("{}/{}", k.0, k.1), d);
            }
        }
        let mut envoy = [0; 4];
        for (i, d) in envoy.iter_mut().enumerate() {
            *d = self.envoy[i] - before.envoy[i];
        }
        Delta {
            envoy,
            server,
            upstream_hits: self.upstream_hits - before.upstream_hits,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Delta {
    /// `[ok, denied, error, failure_mode_allowed]`
    envoy: [u64; 4],
    /// "decision/reason" -> count
    server: BTreeMap<String, u64>,
    upstream_hits: usize,
}

impl Delta {
    fn expected(allow: bool, reason: &str) -> Self {
        let decision = if allow { "allow" } else { "deny" };
        Self {
            envoy: if allow { [1, 0, 0, 0] } else { [0, 1, 0, 0] },
            server: BTreeMap::from([(format!("{decision}/{reason}"), 1)]),
            upstream_hits: usize::from(allow),
        }
    }
}

/// The `openssl s_client` clients of these tests, as default/sleep (allowed to developers.google.com in
/// the final rules).
fn raw_sni_client(world: &World, openssl: std::path::PathBuf) -> net::RawSniClient {
    let (cert, key) = world.pki.files(DEFAULT_SLEEP);
    net::RawSniClient {
        openssl,
        cert,
        key,
        ca: world.pki.ca_file(),
    }
}

fn show(sni: &[u8]) -> String {
    sni.escape_ascii().to_string()
}

/// Through the TLS gateway (tls_inspector + network ext_authz + tcp_proxy) with `failure_mode_allow:
/// true`, as with Istio's `failOpen: true`, and the deploy bundle's EnvoyFilter (`include_tls_session`):
/// a ClientHello whose SNI is not UTF-8 reaches the server byte for byte in `tls_session.sni` (Envoy
/// replaces the bytes that are not UTF-8 by `!` only in `destination.service`). It must be denied as
/// `invalid_host`: if the server failed the check instead, fail-open would pass the stream to the
/// upstream. Likewise an SNI that is UTF-8 but not a DNS name. Proven per attempt by what the client and
/// the stand-in host got, Envoy's ext_authz counters (denied, never error or failure_mode_allowed) and the
/// server's check counter. The same client with a configured SNI flows, so the denials are not a broken
/// client or gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sni_denied_with_fail_open_tcp() {
    bad_sni_over_tcp("bad_sni_denied_with_fail_open_tcp", true).await;
}

/// The same over the TCP gateway exactly as istiod emits it (no `include_tls_session`): the server sees
/// only `destination.service`, whatever Envoy makes of the SNI bytes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sni_denied_with_fail_open_tcp_without_tls_session() {
    bad_sni_over_tcp(
        "bad_sni_denied_with_fail_open_tcp_without_tls_session",
        false,
    )
    .await;
}

async fn bad_sni_over_tcp(test: &str, tcp_tls_session: bool) {
    let Some(openssl) = envoy::openssl_or_skip(test) else {
        return;
    };
    let variant = Variant {
        fail_open: true,
        google_wildcard: true,
        tcp_tls_session,
        custom_gate: None,
    };
    let Some(world) =
        World::for_test(test, &[Gateway::TcpIstio], &Stage::Final.text(), variant).await
    else {
        return;
    };
    let client = raw_sni_client(&world, openssl);
    let gw = world.envoy(Gateway::TcpIstio);

    let attempt = |sni: &'static [u8]| {
        let (world, client) = (&world, &client);
        async move {
            let before = Counters::take(world, Gateway::TcpIstio).await;
            let skip = gw.access_log_len();
            let out = client
                .exchange(gw.listener, sni, b"opaque-inner-clienthello\n", |b| {
                    b.ends_with(b"\n")
                })
                .await
                .unwrap_or_else(|e| panic!("SNI {}: {e}", show(sni)));
            let entry = gw.access_log_for_ip(out.source_ip, skip).await;
            let delta = Counters::take(world, Gateway::TcpIstio)
                .await
                .delta(&before);
            (out, entry, delta)
        }
    };

    // Control: the configured name, through the same client, flows to the stand-in host.
    let (out, entry, delta) = attempt(GOOGLE.as_bytes()).await;
    let ctx = format!(
        "control SNI {GOOGLE}: client got {:?} (closed by gateway: {}), counters {delta:?}, log {entry:?}\n{}",
        out.text(),
        out.closed_by_gateway,
        out.diagnostics
    );
    assert_eq!(out.text(), format!("{GOOGLE}\n"), "{ctx}");
    assert_eq!(delta, Delta::expected(true, "allowed_by_rule"), "{ctx}");

    let bad: Vec<&'static [u8]> = NOT_UTF8_SNIS
        .into_iter()
        .chain([UTF8_NOT_A_HOST_SNI.as_bytes()])
        .collect();
    for sni in bad {
        for i in 0..ATTEMPTS {
            let (out, entry, delta) = attempt(sni).await;
            let ctx = format!(
                "SNI {} attempt {i}: client got {:?} (closed by gateway: {}), counters {delta:?} \
                 (envoy [ok, denied, error, failure_mode_allowed]), log {entry:?}\n{}",
                show(sni),
                out.text(),
                out.closed_by_gateway,
                out.diagnostics
            );
            assert_eq!(delta.upstream_hits, 0, "{ctx}: bytes reached the upstream");
            assert!(
                out.received.is_empty() && out.closed_by_gateway,
                "{ctx}: the gateway must close the connection without upstream bytes"
            );
            assert_eq!(delta, Delta::expected(false, "invalid_host"), "{ctx}");
            let entry = entry.unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert_eq!(entry["details"].as_str(), Some("ext_authz_denied"), "{ctx}");
            assert_eq!(entry["flags"].as_str(), Some("UAEX"), "{ctx}");
            scenarios::assert_metadata(&entry["authz"], &Expect::deny("invalid_host", None), &ctx);
        }
    }
}

/// Through the HTTPS gateway with `include_tls_session: true` (the deploy bundle's EnvoyFilter) and
/// `failure_mode_allow: true`: a ClientHello whose SNI is not UTF-8 reaches the server in
/// `tls_session.sni`, byte for byte. The request must get a 403 `invalid_host` answer; a server that fails
/// the check instead lets it through to the upstream under fail-open. An SNI that is UTF-8 but not a host
/// name is `invalid_host` too. Same views as the TCP test, plus the
/// control: the same client with SNI = Host gets the upstream's 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sni_denied_with_fail_open_https() {
    let test = "bad_sni_denied_with_fail_open_https";
    let Some(openssl) = envoy::openssl_or_skip(test) else {
        return;
    };
    let variant = Variant {
        fail_open: true,
        google_wildcard: true,
        tcp_tls_session: false,
        custom_gate: None,
    };
    let Some(world) = World::for_test(
        test,
        &[Gateway::HttpTlsSession],
        &Stage::Final.text(),
        variant,
    )
    .await
    else {
        return;
    };
    let client = raw_sni_client(&world, openssl);
    let gw = world.envoy(Gateway::HttpTlsSession);

    let attempt = |sni: &'static [u8], id: String| {
        let (world, client) = (&world, &client);
        async move {
            let before = Counters::take(world, Gateway::HttpTlsSession).await;
            let skip = gw.access_log_len();
            let req = format!(
                "GET / HTTP/1.1\r\nhost: {GOOGLE}\r\nuser-agent: curl/8.5.0\r\nx-e2e-id: {id}\r\nconnection: close\r\n\r\n"
            );
            // `connection: close`: the gateway ends the session after its response.
            let out = client
                .exchange(gw.listener, sni, req.as_bytes(), |_| false)
                .await
                .unwrap_or_else(|e| panic!("SNI {}: {e}", show(sni)));
            let entry = gw.access_log_for_ip(out.source_ip, skip).await;
            let delta = Counters::take(world, Gateway::HttpTlsSession)
                .await
                .delta(&before);
            let response =
                parse_response(&out.received, std::net::SocketAddr::new(out.source_ip, 0));
            let seen = world.google_http.seen_with_id(&id).len();
            (out, response, entry, delta, seen)
        }
    };

    let (out, response, entry, delta, seen) =
        attempt(GOOGLE.as_bytes(), "raw-sni-control".to_owned()).await;
    let ctx = format!(
        "control SNI {GOOGLE}: response {response:?}, counters {delta:?}, log {entry:?}\n{}",
        out.diagnostics
    );
    let response = response.unwrap_or_else(|e| panic!("{ctx}: {e}"));
    assert_eq!(response.status, 200, "{ctx}");
    assert_eq!(response.body.trim(), GOOGLE, "{ctx}");
    assert_eq!(seen, 1, "{ctx}: the upstream saw the request");
    assert_eq!(delta, Delta::expected(true, "allowed_by_rule"), "{ctx}");

    let bad: Vec<&'static [u8]> = NOT_UTF8_SNIS
        .into_iter()
        .chain([UTF8_NOT_A_HOST_SNI.as_bytes()])
        .collect();
    for (n, (sni, reason)) in bad.into_iter().map(|s| (s, "invalid_host")).enumerate() {
        for i in 0..ATTEMPTS {
            let id = format!("raw-sni-{n}-{i}");
            let (out, response, entry, delta, seen) = attempt(sni, id).await;
            let ctx = format!(
                "SNI {} attempt {i}: response {response:?}, counters {delta:?} \
                 (envoy [ok, denied, error, failure_mode_allowed]), log {entry:?}\n{}",
                show(sni),
                out.diagnostics
            );
            assert_eq!(seen, 0, "{ctx}: the request reached the upstream");
            assert_eq!(
                delta.upstream_hits, 0,
                "{ctx}: a request reached the upstream"
            );
            let response = response.unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert_eq!(response.status, 403, "{ctx}");
            let hdr = response.header("x-egress-authz-reason").unwrap_or_default();
            assert_eq!(
                hdr.split(';').next().unwrap_or_default().trim(),
                reason,
                "{ctx}"
            );
            assert_eq!(delta, Delta::expected(false, reason), "{ctx}");
            let entry = entry.unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert_eq!(entry["details"].as_str(), Some("ext_authz_denied"), "{ctx}");
            assert_eq!(entry["flags"].as_str(), Some("UAEX"), "{ctx}");
            scenarios::assert_metadata(&entry["authz"], &Expect::deny(reason, None), &ctx);
        }
    }
}

/// JSON pointers of every object in `v` for which `pred` holds.
fn pointers(v: &serde_json::Value, pred: &dyn Fn(&serde_json::Value) -> bool) -> Vec<String> {
    fn walk(
        v: &serde_json::Value,
        at: &str,
        pred: &dyn Fn(&serde_json::Value) -> bool,
        out: &mut Vec<String>,
    ) {
        match v {
            serde_json::Value::Object(m) => {
                if pred(v) {
                    out.push(at.to_owned());
                }
                for (k, child) in m {
                    let k = k.replace('~', "~0").replace('/', "~1");
                    walk(child, &format!("{at}/{k}"), pred, out);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, &format!("{at}/{i}"), pred, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, "", pred, &mut out);
    out
}

/// The pointer of the dump's config of type `envoy.admin.v3.<kind>` (the bootstrap dump repeats the
/// static resources: edits must land in the listener and cluster dumps Envoy serves from).
fn section(dump: &serde_json::Value, kind: &str) -> String {
    let ty = format!("type.googleapis.com/envoy.admin.v3.{kind}");
    let i = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .position(|c| c["@type"] == ty.as_str())
        .unwrap_or_else(|| panic!("no {kind}"));
    format!("/configs/{i}/")
}

fn is_ext_authz(v: &serde_json::Value) -> bool {
    v["@type"]
        .as_str()
        .is_some_and(|t| t.ends_with(".ext_authz.v3.ExtAuthz"))
}

fn object<'a>(
    dump: &'a mut serde_json::Value,
    pointer: &str,
) -> &'a mut serde_json::Map<String, serde_json::Value> {
    dump.pointer_mut(pointer)
        .and_then(serde_json::Value::as_object_mut)
        .unwrap_or_else(|| panic!("no object at {pointer}"))
}

/// Gates every ext_authz filter of the dump behind Istio's shadow RBAC, as istiod renders a CUSTOM
/// policy whose rule has the given permissions, and moves the listener to `port`.
fn gate_like_istiod(dump: &mut serde_json::Value, permissions: &serde_json::Value, port: u16) {
    let listeners = section(dump, "ListenersConfigDump");
    let checks = pointers(dump, &is_ext_authz);
    for at in checks
        .into_iter()
        .rev()
        .filter(|at| at.starts_with(&listeners))
    {
        let http = dump.pointer(&at).unwrap()["@type"]
            .as_str()
            .unwrap()
            .contains(".http.");
        let kind = if http { "http" } else { "network" };
        object(dump, &at).insert(
            "filter_enabled_metadata".into(),
            serde_json::json!({
                "filter": format!("envoy.filters.{kind}.rbac"),
                "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
                "value": {"string_match": {"prefix": "istio-ext-authz"}},
            }),
        );
        let rbac = serde_json::json!({
            "name": format!("envoy.filters.{kind}.rbac"),
            "typed_config": {
                "@type": format!("type.googleapis.com/envoy.extensions.filters.{kind}.rbac.v3.RBAC"),
                "shadow_rules": {"action": "DENY", "policies": {
                    "istio-ext-authz-ns[istio-system]-policy[egress-ext-authz]-rule[0]": {
                        "permissions": permissions,
                        "principals": [{"and_ids": {"ids": [{"any": true}]}}],
                    },
                }},
                "shadow_rules_stat_prefix": "istio_ext_authz_",
            },
        });
        // `at` is .../<filters>/<i>/typed_config: insert the RBAC filter at <i>, ahead of ext_authz.
        let filter = at.strip_suffix("/typed_config").unwrap();
        let (list, index) = filter.rsplit_once('/').unwrap();
        dump.pointer_mut(list)
            .and_then(serde_json::Value::as_array_mut)
            .unwrap()
            .insert(index.parse().unwrap(), rbac);
    }
    for at in pointers(dump, &|v| v.get("port_value").is_some()) {
        if at.starts_with(&listeners) && at.contains("/address/") {
            object(dump, &at).insert("port_value".into(), port.into());
        }
    }
}

/// `audit-gateway` on the config dumps of the suite's real Envoys: each bootstrap comes out clean (the
/// Istio-exact HTTP one with only the `no_tls_session` warning its missing EnvoyFilter deserves), and
/// copies of those dumps changed one setting at a time come out with exactly the finding that setting
/// causes. The fail-open variant is audited from a running Envoy too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_gateway_on_the_suites_envoys() {
    use egress_authz::audit::{Code, audit};
    // Two worlds one after the other, both under the lock.
    let Some(envoy) = envoy_or_skip("audit_gateway_on_the_suites_envoys") else {
        return;
    };
    let _serial = serial();
    let dump_of = async |world: &World, gw: Gateway| -> serde_json::Value {
        let (status, body) = http_get(world.envoy(gw).admin, "/config_dump")
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let world = World::start(&envoy, &Gateway::ALL, &Stage::Final.text())
        .await
        .unwrap();
    for gw in Gateway::ALL {
        let name = gw.template();
        let dump = dump_of(&world, gw).await;
        let report = audit(&dump).unwrap();
        let baseline = match gw {
            Gateway::HttpIstio => vec![Code::NoTlsSession],
            Gateway::HttpTlsSession | Gateway::TcpIstio => vec![],
            Gateway::HttpWasm | Gateway::TcpWasm => unreachable!("Gateway::ALL runs ext_authz"),
        };
        let chains = if gw == Gateway::TcpIstio { 2 } else { 1 };
        assert_eq!(
            (report.listeners, report.filter_chains, report.codes()),
            (1, chains, baseline.clone()),
            "{name}: {report:#?}"
        );
        assert_eq!(report.errors(), 0, "{name}");
        let listeners = section(&dump, "ListenersConfigDump");
        let checks: Vec<String> = pointers(&dump, &is_ext_authz)
            .into_iter()
            .filter(|at| at.starts_with(&listeners))
            .collect();
        assert_eq!(checks.len(), chains, "{name}: one ext_authz per chain");

        // (what changes, expected code) on a fresh copy of the real dump each.
        type Edit = Box<dyn Fn(&mut serde_json::Value)>;
        let each_check = |f: fn(&mut serde_json::Map<String, serde_json::Value>)| -> Edit {
            let checks = checks.clone();
            Box::new(move |d: &mut serde_json::Value| {
                checks.iter().for_each(|at| f(object(d, at)));
            })
        };
        let authz_cluster = |d: &serde_json::Value| {
            let clusters = section(d, "ClustersConfigDump");
            pointers(d, &|v| {
                v["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("outbound|9000||"))
                    && v.get("connect_timeout").is_some()
            })
            .into_iter()
            .find(|at| at.starts_with(&clusters))
            .unwrap()
        };
        let mut edits: Vec<(&str, Edit, Code)> = vec![
            (
                "fail open",
                each_check(|c| {
                    c.insert("failure_mode_allow".into(), true.into());
                }),
                Code::FailOpen,
            ),
            (
                "no timeout",
                each_check(|c| {
                    c["grpc_service"].as_object_mut().unwrap().remove("timeout");
                }),
                Code::NoTimeout,
            ),
            (
                "5s timeout",
                each_check(|c| c["grpc_service"]["timeout"] = "5s".into()),
                Code::LongTimeout,
            ),
            (
                "no authority",
                each_check(|c| {
                    c["grpc_service"]["envoy_grpc"]
                        .as_object_mut()
                        .unwrap()
                        .remove("authority");
                }),
                Code::BadGrpcAuthority,
            ),
            (
                "no grpc_service",
                each_check(|c| {
                    c.remove("grpc_service");
                }),
                Code::NoGrpcService,
            ),
            (
                "authz cluster renamed",
                Box::new(move |d: &mut serde_json::Value| {
                    let at = authz_cluster(d);
                    object(d, &at).insert("name".into(), "egress-authz".into());
                }),
                Code::MissingAuthzCluster,
            ),
            (
                "authz cluster on HTTP/1.1",
                Box::new(move |d: &mut serde_json::Value| {
                    let at = authz_cluster(d);
                    object(d, &at).remove("typed_extension_protocol_options");
                }),
                Code::AuthzClusterNotHttp2,
            ),
            (
                "ext_authz filter removed",
                {
                    let checks = checks.clone();
                    Box::new(move |d: &mut serde_json::Value| {
                        for at in checks.iter().rev() {
                            let filter = at.strip_suffix("/typed_config").unwrap();
                            let (list, index) = filter.rsplit_once('/').unwrap();
                            d.pointer_mut(list)
                                .and_then(serde_json::Value::as_array_mut)
                                .unwrap()
                                .remove(index.parse().unwrap());
                        }
                    })
                },
                if gw == Gateway::TcpIstio {
                    Code::UncheckedTcpChain
                } else {
                    Code::UncheckedHttpChain
                },
            ),
            (
                "gated by a CUSTOM policy for 8080/8443, on a gateway port 80",
                Box::new(|d: &mut serde_json::Value| {
                    let ports = serde_json::json!([{"and_rules": {"rules": [{"or_rules": {"rules": [
                        {"destination_port": 8080}, {"destination_port": 8443}]}}]}}]);
                    gate_like_istiod(d, &ports, 80);
                }),
                Code::CheckNotTriggeredOnPort,
            ),
        ];
        if gw == Gateway::HttpTlsSession {
            edits.push((
                "no include_tls_session",
                each_check(|c| {
                    c.remove("include_tls_session");
                }),
                Code::NoTlsSession,
            ));
        }
        for (what, edit, code) in &edits {
            let mut copy = dump.clone();
            edit(&mut copy);
            let report = audit(&copy).unwrap();
            let new: Vec<Code> = report
                .findings
                .iter()
                .map(|f| f.code)
                .filter(|c| !baseline.contains(c))
                .collect();
            assert_eq!(new, vec![*code; chains], "{name}, {what}: {report:#?}");
        }
        // The bundle's own CUSTOM policy (one empty rule: shadow permission `any`) on any port: clean.
        let mut copy = dump.clone();
        gate_like_istiod(
            &mut copy,
            &serde_json::json!([{"and_rules": {"rules": [{"any": true}]}}]),
            80,
        );
        assert_eq!(
            audit(&copy).unwrap().codes(),
            baseline,
            "{name}, gated by any"
        );
    }
    drop(world);

    let world = World::start_with(
        &envoy,
        &Gateway::ALL,
        &Stage::Final.text(),
        Variant {
            fail_open: true,
            ..Variant::ISTIO_DEFAULT
        },
    )
    .await
    .unwrap();
    for gw in Gateway::ALL {
        let report = audit(&dump_of(&world, gw).await).unwrap();
        let fail_open = report
            .findings
            .iter()
            .filter(|f| f.code == Code::FailOpen)
            .count();
        assert_eq!(
            fail_open,
            report.filter_chains,
            "{}: {report:#?}",
            gw.template()
        );
        assert!(report.errors() > 0);
    }
}

/// The gateway as istiod renders the deploy bundle's CUSTOM policy (shadow RBAC + `filter_enabled_metadata`
/// in front of every ext_authz filter, permissions generated from the bundle's policy file) checks every
/// request and connection. Its listeners bind ephemeral ports, neither istioctl's 8080/8443 nor the
/// `istio/gateway` chart's 80/443: a rule without ports must match any. A policy scoped to 8080/8443
/// instead lets traffic on another port through unchecked, and `audit-gateway` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_custom_policy_checks_every_gateway_port() {
    use CustomGate;
    use egress_authz::audit::{Code, audit};
    let Some(envoy) = envoy_or_skip("bundle_custom_policy_checks_every_gateway_port") else {
        return;
    };
    let _serial = serial();
    let gateways = [Gateway::HttpTlsSession, Gateway::TcpIstio];
    let (policy, gate) = CustomGate::from_bundle();
    assert_eq!(
        gate,
        CustomGate::EveryPort,
        "the bundle's CUSTOM policy {policy} must not be scoped to ports"
    );
    let gated = |gate| Variant {
        custom_gate: Some(gate),
        ..Variant::ISTIO_DEFAULT
    };
    let audited = async |world: &World, gw: Gateway| {
        let (_, body) = http_get(world.envoy(gw).admin, "/config_dump")
            .await
            .unwrap();
        audit(&serde_json::from_str(&body).unwrap()).unwrap()
    };

    let world = World::start_with(&envoy, &gateways, &Stage::Final.text(), gated(gate))
        .await
        .unwrap();
    let mut denied = 0;
    for caller in [DEFAULT_SLEEP, OTHERNS_SLEEP] {
        for host in [GOOGLE, YAHOO] {
            let exp = expected(Stage::Final, caller, host);
            denied += usize::from(!exp.allow);
            let ctx = format!("bundle's CUSTOM gate, {caller} -> {host}");
            // Both assert the ext_authz decision in Envoy's access log: the check ran.
            check_http_and_tcp(&world, Gateway::HttpTlsSession, caller, host, &exp, &ctx).await;
        }
    }
    assert!(denied > 0, "a deny shows the check decides, not just runs");
    for gw in gateways {
        let report = audited(&world, gw).await;
        assert_eq!(report.findings, [], "{}", gw.template());
    }
    drop(world);

    let world = World::start_with(
        &envoy,
        &gateways,
        &Stage::Final.text(),
        gated(CustomGate::Ports(8080, 8443)),
    )
    .await
    .unwrap();
    let exp = expected(Stage::Final, DEFAULT_SLEEP, YAHOO);
    assert!(!exp.allow, "the walkthrough denies default -> {YAHOO}");
    let (r, entry) = through_http(
        &world,
        Gateway::HttpTlsSession,
        DEFAULT_SLEEP,
        HttpsRequest::get(YAHOO, "scoped-gate"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "never checked, so never denied: {r:?}");
    assert_eq!(world.yahoo_http.seen_with_id("scoped-gate").len(), 1);
    let entry = entry.unwrap();
    assert!(
        entry["authz"]["decision"].is_null(),
        "no check ran: {entry}"
    );
    let tcp = world.envoy(Gateway::TcpIstio);
    let t = tls_stream(
        tcp.listener,
        world.pki.client_config(DEFAULT_SLEEP, &[]),
        YAHOO,
    )
    .await
    .unwrap();
    assert_eq!(t.outcome, TcpOutcome::Flowed(YAHOO.to_owned()));
    for gw in gateways {
        let report = audited(&world, gw).await;
        assert_eq!(
            report.codes(),
            [Code::CheckNotTriggeredOnPort],
            "{}",
            gw.template()
        );
        assert_eq!(report.errors(), report.filter_chains, "{report:#?}");
    }
}
