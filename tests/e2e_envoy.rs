//! End to end against a real Envoy 1.40 configured like an Istio egress gateway with a CUSTOM
//! AuthorizationPolicy (`envoyExtAuthzGrpc` provider), real mTLS with per-run SPIFFE certificates, the
//! egress-authz binary, and loopback stand-ins for developers.google.com and developer.yahoo.com.
//!
//! Envoy is found via `ENVOY_BIN`, PATH or `.venv-envoy/bin/envoy` (scripts/install-envoy.sh). Without it
//! these tests print "SKIPPED" and pass, unless `CI` or `EGRESS_AUTHZ_REQUIRE_ENVOY=1` is set: then they fail.
//!
//! Run: `scripts/install-envoy.sh && EGRESS_AUTHZ_REQUIRE_ENVOY=1 cargo test --test e2e_envoy`
// Harness modules are shared with examples/demo.rs (not every item is used by both); `serial()` holds a
// std Mutex across awaits on purpose: it serializes tests that each run their own runtime.
#![allow(
    unreachable_pub,
    dead_code,
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::await_holding_lock
)]

#[path = "e2e/harness.rs"]
mod harness;
#[path = "e2e/net.rs"]
mod net;
#[path = "e2e/pki.rs"]
mod pki;
#[path = "e2e/scenarios.rs"]
mod scenarios;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harness::{
    GOOGLE, Gateway, Stage, World, YAHOO, envoy_or_skip, envoy_validate, render_template, serial,
};
use net::{TcpOutcome, https_request, tls_stream};
use pki::{DEFAULT_SLEEP, OTHERNS_SLEEP, Pki, SLEEP_YAHOO};
use scenarios::{
    Expect, HTTP_STAT_PREFIX, TCP_STAT_PREFIX, Tally, check_http, check_tcp, expected,
};

/// Every template renders and passes `envoy --mode validate`; (a') differs from (a) only by
/// `include_tls_session: true`.
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
        let path = tmp.path().join(format!("{}.yaml", gw.template()));
        std::fs::write(&path, render_template(gw, &vars)).unwrap();
        match envoy_validate(&envoy, &path).await {
            Ok(out) => assert!(out.contains("OK"), "{}: {out}", gw.template()),
            Err(out) => panic!("envoy --mode validate {} failed:\n{out}", gw.template()),
        }
    }
    let code = |gw: Gateway| -> Vec<String> {
        let p = harness::manifest_dir()
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

/// The seeds' walkthrough, stage by stage, for every caller and both hosts, over the HTTP path (200 with
/// the upstream's name vs 403 with the reason header) and the TCP path (bytes flow vs closed before any
/// upstream byte), plus the identity edge cases (foreign trust domain, no URI SAN) in every stage. Asserts what the client sees, what the
/// stand-in hosts saw, Envoy's access log (ext_authz dynamic metadata), Envoy's stats and the server's
/// metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_walkthrough_http_and_tcp() {
    let Some(envoy) = envoy_or_skip("seeds_walkthrough_http_and_tcp") else {
        return;
    };
    let _serial = serial();
    let started = Instant::now();
    let world = World::start(
        &envoy,
        &[Gateway::HttpIstio, Gateway::TcpIstio],
        &Stage::NamespaceLevel.text(),
    )
    .await
    .unwrap();
    let mut total = Tally::default();
    let counts = |srv: &'_ harness::AuthzServer| {
        let srv = srv.admin;
        async move {
            let (_, body) = net::http_get(srv, "/metrics").await.unwrap();
            let m = |d: &str, p: &str| {
                harness::sum_metric(
                    &body,
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
        // Stages switch like the seeds switch policies: the rule file is replaced under the running
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
                check_http(
                    &world,
                    Gateway::HttpIstio,
                    caller,
                    host,
                    host,
                    "/",
                    &exp,
                    &ctx,
                )
                .await;
                check_tcp(&world, caller, host, &exp, &ctx).await;
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
    let http = world.envoy(Gateway::HttpIstio);
    assert_eq!(
        http.stat(&format!("http.{HTTP_STAT_PREFIX}.ext_authz.ok"))
            .await as usize,
        total.allow
    );
    assert_eq!(
        http.stat(&format!("http.{HTTP_STAT_PREFIX}.ext_authz.denied"))
            .await as usize,
        total.deny
    );
    assert_eq!(
        http.stat(&format!("http.{HTTP_STAT_PREFIX}.ext_authz.error"))
            .await,
        0
    );
    let tcp = world.envoy(Gateway::TcpIstio);
    assert_eq!(
        tcp.stat(&format!("ext_authz.{TCP_STAT_PREFIX}.ok")).await as usize,
        total.allow
    );
    assert_eq!(
        tcp.stat(&format!("ext_authz.{TCP_STAT_PREFIX}.denied"))
            .await as usize,
        total.deny
    );
    assert_eq!(
        tcp.stat(&format!("ext_authz.{TCP_STAT_PREFIX}.error"))
            .await,
        0
    );
    eprintln!(
        "seeds walkthrough: {} allowed, {} denied (each over HTTP and TCP) in {:?}",
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
    let Some(envoy) = envoy_or_skip("sni_host_mismatch_and_dry_run") else {
        return;
    };
    let _serial = serial();
    let world = World::start(&envoy, &Gateway::ALL, &final_with_dry_run())
        .await
        .unwrap();

    // Control: matching SNI and Host on (a').
    let allow = Expect::allow("allowed_by_rule", Some("default-ns-to-google"));
    check_http(
        &world,
        Gateway::HttpTlsSession,
        DEFAULT_SLEEP,
        GOOGLE,
        GOOGLE,
        "/",
        &allow,
        "a' control",
    )
    .await;
    // Domain fronting: TLS SNI says yahoo, Host says google.
    let mismatch = Expect::deny("sni_host_mismatch", None);
    let entry = check_http(
        &world,
        Gateway::HttpTlsSession,
        DEFAULT_SLEEP,
        YAHOO,
        GOOGLE,
        "/",
        &mismatch,
        "a' SNI!=Host",
    )
    .await;
    assert_eq!(
        entry["sni"].as_str(),
        Some(YAHOO),
        "Envoy saw SNI {YAHOO}: {entry}"
    );
    // Istio-exact (a): no tls_session in the CheckRequest, the Host alone decides.
    check_http(
        &world,
        Gateway::HttpIstio,
        DEFAULT_SLEEP,
        YAHOO,
        GOOGLE,
        "/",
        &allow,
        "a SNI!=Host (no tls_session)",
    )
    .await;

    // Dry-run DENY: traffic flows; the metadata names the rule that would have denied.
    let exp = Expect::allow("allowed_by_rule", Some("otherns-sleep-to-both"))
        .with_dry_run(DRY_RUN_RULE, "deny");
    for gw in [Gateway::HttpIstio, Gateway::HttpTlsSession] {
        check_http(
            &world,
            gw,
            OTHERNS_SLEEP,
            YAHOO,
            YAHOO,
            "/headers",
            &exp,
            &format!("{gw:?} dry-run"),
        )
        .await;
    }
    check_tcp(&world, OTHERNS_SLEEP, YAHOO, &exp, "tcp dry-run").await;
    // A caller the dry-run rule does not name has no dry-run keys.
    let plain = Expect::allow("allowed_by_rule", Some("otherns-sleep-yahoo-to-yahoo"));
    check_http(
        &world,
        Gateway::HttpIstio,
        SLEEP_YAHOO,
        YAHOO,
        YAHOO,
        "/",
        &plain,
        "no dry-run match",
    )
    .await;
}

/// The rule file is replaced (atomic rename) while two clients send traffic: the affected decision flips
/// within 2 s, in both directions, and no request ever gets a 5xx; an unaffected TCP flow keeps flowing.
/// A broken rule file is rejected and the last good rules keep deciding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_flips_decisions_without_5xx() {
    let Some(envoy) = envoy_or_skip("hot_reload_flips_decisions_without_5xx") else {
        return;
    };
    let _serial = serial();
    let world = World::start(
        &envoy,
        &[Gateway::HttpIstio, Gateway::TcpIstio],
        &Stage::Final.text(),
    )
    .await
    .unwrap();
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
    harness::poll_until(
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
    check_http(
        &world,
        Gateway::HttpIstio,
        DEFAULT_SLEEP,
        GOOGLE,
        GOOGLE,
        "/",
        &allow,
        "broken file ignored",
    )
    .await;
    check_tcp(&world, DEFAULT_SLEEP, GOOGLE, &allow, "broken file ignored").await;

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
    assert_eq!(
        http.stat(&format!("http.{HTTP_STAT_PREFIX}.ext_authz.error"))
            .await,
        0
    );
    let tcp = world.envoy(Gateway::TcpIstio);
    assert_eq!(
        tcp.stat(&format!("ext_authz.{TCP_STAT_PREFIX}.error"))
            .await,
        0
    );
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
    let Some(envoy) = envoy_or_skip("server_killed_fails_closed") else {
        return;
    };
    let _serial = serial();
    let mut world = World::start(
        &envoy,
        &[Gateway::HttpIstio, Gateway::TcpIstio],
        &Stage::Final.text(),
    )
    .await
    .unwrap();
    let allow = Expect::allow("allowed_by_rule", Some("default-ns-to-google"));
    check_http(
        &world,
        Gateway::HttpIstio,
        DEFAULT_SLEEP,
        GOOGLE,
        GOOGLE,
        "/",
        &allow,
        "before kill",
    )
    .await;
    check_tcp(&world, DEFAULT_SLEEP, GOOGLE, &allow, "before kill").await;

    world.kill_server().await;
    let http = world.envoy(Gateway::HttpIstio);
    let tcp = world.envoy(Gateway::TcpIstio);
    let http_err = format!("http.{HTTP_STAT_PREFIX}.ext_authz.error");
    let tcp_err = format!("ext_authz.{TCP_STAT_PREFIX}.error");
    let (http_err0, tcp_err0) = (http.stat(&http_err).await, tcp.stat(&tcp_err).await);
    let (g_http0, g_tcp0) = (world.google_http.hits(), world.google_tcp.hits());
    for i in 0..3 {
        let skip = http.access_log_len();
        let r = https_request(
            http.listener,
            world.pki.client_config(DEFAULT_SLEEP, &["http/1.1"]),
            GOOGLE,
            GOOGLE,
            "GET",
            "/",
            &format!("killed-{i}"),
        )
        .await
        .unwrap();
        // statusOnError "503", as the deploy bundle sets it: an error, told apart from a deny (403).
        assert_eq!(r.status, 503, "fail closed: {r:?}");
        assert!(
            r.header("x-egress-authz-reason").is_none(),
            "no server, no reason header: {r:?}"
        );
        let e = http.access_log_for(r.local_addr, skip).await.unwrap();
        assert_eq!(e["details"].as_str(), Some("ext_authz_error"), "{e}");
        assert_eq!(e["flags"].as_str(), Some("UAEX"), "{e}");
        assert!(
            world
                .google_http
                .seen_with_id(&format!("killed-{i}"))
                .is_empty()
        );

        let skip = tcp.access_log_len();
        let t = tls_stream(
            tcp.listener,
            world.pki.client_config(DEFAULT_SLEEP, &[]),
            GOOGLE,
        )
        .await
        .unwrap();
        assert!(
            matches!(t.outcome, TcpOutcome::Closed(_)),
            "fail closed on TCP: {t:?}"
        );
        let e = tcp.access_log_for(t.local_addr, skip).await.unwrap();
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
    assert_eq!(http.stat(&http_err).await, http_err0 + 3);
    assert_eq!(tcp.stat(&tcp_err).await, tcp_err0 + 3);

    // Back up: decisions resume.
    world
        .restart_server_with(&Stage::Final.text())
        .await
        .unwrap();
    check_http(
        &world,
        Gateway::HttpIstio,
        DEFAULT_SLEEP,
        GOOGLE,
        GOOGLE,
        "/",
        &allow,
        "after restart",
    )
    .await;
    check_tcp(&world, DEFAULT_SLEEP, GOOGLE, &allow, "after restart").await;
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
            GOOGLE,
            GOOGLE,
            "GET",
            "/",
            "reload-pre",
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
                GOOGLE,
                GOOGLE,
                "GET",
                "/",
                &id,
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
