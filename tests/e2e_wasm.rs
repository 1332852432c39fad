//! The proxy-wasm filter (wasm-filter/) in a real Envoy 1.40 with real mTLS, against the two references
//! it must agree with: the ext_authz server on every scenario of the Istio egress walkthrough, and
//! `Policy::decide` on requests over generated rule sets. Also: an invalid configuration fails closed.
//!
//! Needs Envoy (as tests/e2e_envoy.rs) and the built module (`EGRESS_AUTHZ_WASM_MODULE`, or
//! `cargo build --release --target wasm32-wasip1 --manifest-path wasm-filter/Cargo.toml`); without
//! them these tests print "SKIPPED" and pass, unless `CI` or `EGRESS_AUTHZ_REQUIRE_ENVOY=1` is set.
//!
//! Run: `scripts/test.sh`, or after building the module `cargo test --test e2e_wasm`.
// `serial()` holds a std Mutex across awaits on purpose: it serializes tests that each run their own
// runtime.
#![allow(clippy::unwrap_used, clippy::await_holding_lock)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use egress_authz::policy::{EgressRequest, HttpRequest, SourceFile, compile};
use serde_json::Value;
use testkit::envoy::{
    Envoy, Gateway, Variant, envoy_or_skip, envoy_validate, render_template, wasm_module_or_skip,
    wasm_rules_value,
};
use testkit::http::{HttpOutcome, http_get};
use testkit::net::{HttpsRequest, TcpOutcome};
use testkit::pki::{DEFAULT_SLEEP, Pki, WORKLOADS, spiffe_of};
use testkit::prom::Metrics;
use testkit::scenarios::{self, Expect, assert_metadata, expected, through_http, through_tcp_via};
use testkit::wait::poll_for;
use testkit::world::{
    GOOGLE, SerialWorld, Stage, WASM_HTTP_LISTENER_PORT, WASM_TCP_LISTENER_PORT, World, YAHOO,
    serial,
};

/// The decision keys both paths log: the server's dynamic metadata, the filter's filter state.
const DECISION_KEYS: [&str; 5] = [
    "decision",
    "reason",
    "rule",
    "dry_run_rule",
    "dry_run_decision",
];

/// An access-log entry's decision, key by key; an absent value (missing, null, or Envoy's `-`) is
/// `None`, so the two ways of logging compare equal when they carry the same decision.
fn decision_of(entry: &Value) -> BTreeMap<&'static str, Option<String>> {
    DECISION_KEYS
        .iter()
        .map(|key| {
            let value = entry["authz"][key]
                .as_str()
                .filter(|v| !v.is_empty() && *v != "-")
                .map(str::to_owned);
            (*key, value)
        })
        .collect()
}

/// Numbers the differential's requests, so each is found again in the access log and upstream.
static REQUEST_IDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The rule-file name a corpus request's `decide` reference compiles.
const CORPUS_FILE: &str = "corpus.yaml";

/// Both wasm templates render with a module and a rule file and pass `envoy --mode validate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_bootstraps_validate() {
    let test = "wasm_bootstraps_validate";
    let Some(envoy) = envoy_or_skip(test) else {
        return;
    };
    let Some(module) = wasm_module_or_skip(test) else {
        return;
    };
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&tmp.path().join("certs"));
    for gw in Gateway::WASM {
        let vars = BTreeMap::from([
            ("CERTS", pki.dir.display().to_string()),
            (
                "ACCESS_LOG",
                tmp.path().join("access.log").display().to_string(),
            ),
            ("WASM_MODULE", module.display().to_string()),
            ("WASM_RULES", wasm_rules_value(&Stage::Final.text())),
            (WASM_HTTP_LISTENER_PORT, "0".to_owned()),
            (WASM_TCP_LISTENER_PORT, "0".to_owned()),
            ("GOOGLE_HTTP_PORT", "18001".to_owned()),
            ("YAHOO_HTTP_PORT", "18002".to_owned()),
            ("GOOGLE_TCP_PORT", "18003".to_owned()),
            ("YAHOO_TCP_PORT", "18004".to_owned()),
        ]);
        let path = tmp.path().join(format!("{}.yaml", gw.template()));
        let rendered = Variant::ISTIO_DEFAULT.apply(gw, &render_template(gw, &vars));
        std::fs::write(&path, rendered).unwrap();
        match envoy_validate(&envoy, &path).await {
            Ok(out) => assert!(out.contains("OK"), "{}: {out}", gw.template()),
            Err(out) => panic!("envoy --mode validate {} failed:\n{out}", gw.template()),
        }
    }
}

/// The gateways of the differential: ext_authz to the server (HTTP with the TLS session, since the
/// filter always sees the SNI) and the filter, over HTTP and TCP.
const BOTH_PATHS: [Gateway; 4] = [
    Gateway::HttpTlsSession,
    Gateway::TcpIstio,
    Gateway::HttpWasm,
    Gateway::TcpWasm,
];

async fn both_paths_world(test: &str, rules: &str) -> Option<SerialWorld> {
    World::for_test(test, &BOTH_PATHS, rules, Variant::ISTIO_DEFAULT).await
}

/// One HTTPS request through `gw`: what the client got and the access-log entry.
async fn http_via(
    world: &World,
    gw: Gateway,
    caller: &str,
    sni: &str,
    request: (&str, &str, &str),
    id: &str,
) -> (HttpOutcome, Value) {
    let (host, method, path) = request;
    let request = HttpsRequest {
        sni,
        host,
        method,
        path,
        test_id: id,
    };
    let (outcome, entry) = through_http(world, gw, caller, request)
        .await
        .unwrap_or_else(|e| panic!("{id} [{gw:?}]: request failed: {e}"));
    let entry = entry.unwrap_or_else(|e| panic!("{id} [{gw:?}]: {e}"));
    (outcome, entry)
}

/// Every scenario of the walkthrough (every stage, caller and host, over HTTP and TCP) through the
/// server's ext_authz and through the filter: the same decision, reason, rule and dry-run report in the
/// access log, the same answer to the client (status, reason header, body; bytes flow or the connection
/// closes), the expected one, and no byte of a denied request or connection upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_filter_agrees_with_ext_authz() {
    let test = "walkthrough_filter_agrees_with_ext_authz";
    let Some(mut world) = both_paths_world(test, &Stage::NamespaceLevel.text()).await else {
        return;
    };
    let mut compared = 0;
    for stage in Stage::ALL {
        if stage != Stage::NamespaceLevel {
            world.reload_rules(&stage.text()).await.unwrap();
            world
                .restart_wasm_gateways_with(&stage.text())
                .await
                .unwrap();
        }
        for caller in scenarios::CALLERS {
            for host in [GOOGLE, YAHOO] {
                let exp = expected(stage, caller, host);
                let ctx = format!("stage {}: {caller} -> {host}", stage.name());
                compare_http(&world, caller, host, &exp, &ctx).await;
                compare_tcp(&world, caller, host, &exp, &ctx).await;
                compared += 2;
            }
        }
    }
    eprintln!("{test}: {compared} scenarios decided alike by ext_authz and the filter");
}

async fn compare_http(world: &World, caller: &str, host: &str, exp: &Expect, ctx: &str) {
    let mut seen = Vec::new();
    for gw in [Gateway::HttpTlsSession, Gateway::HttpWasm] {
        let id = format!(
            "diff-{}",
            REQUEST_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (outcome, entry) = http_via(world, gw, caller, host, (host, "GET", "/"), &id).await;
        let ctx = format!(
            "{ctx} [{gw:?}] got {} {:?}; log {entry}",
            outcome.status, outcome.body
        );
        assert_metadata(&entry["authz"], exp, &ctx);
        let upstream_saw = world.http_upstream(host).seen_with_id(&id).len();
        assert_eq!(
            upstream_saw,
            usize::from(exp.allow),
            "{ctx}: upstream saw it"
        );
        let answer = (
            outcome.status,
            outcome.header("x-egress-authz-reason").map(str::to_owned),
            outcome.body.clone(),
        );
        seen.push((answer, decision_of(&entry)));
    }
    assert_eq!(seen[0], seen[1], "{ctx}: ext_authz vs filter over HTTP");
}

async fn compare_tcp(world: &World, caller: &str, host: &str, exp: &Expect, ctx: &str) {
    let mut seen = Vec::new();
    for gw in [Gateway::TcpIstio, Gateway::TcpWasm] {
        let upstream = world.tcp_upstream(host);
        let before = upstream.hits();
        let (result, entry) = through_tcp_via(world, gw, caller, host)
            .await
            .unwrap_or_else(|e| panic!("{ctx} [{gw:?}]: {e}"));
        let entry = entry.unwrap_or_else(|e| panic!("{ctx} [{gw:?}]: {e}"));
        let ctx = format!("{ctx} [{gw:?}] got {:?}; log {entry}", result.outcome);
        assert_metadata(&entry["authz"], exp, &ctx);
        let flowed = match &result.outcome {
            TcpOutcome::Flowed(who) => {
                assert_eq!(who, host, "{ctx}: reached the right host");
                true
            }
            TcpOutcome::Closed(_) => false,
        };
        assert_eq!(flowed, exp.allow, "{ctx}");
        assert_eq!(
            upstream.hits() - before,
            usize::from(exp.allow),
            "{ctx}: bytes upstream"
        );
        assert_eq!(
            entry["bytes_sent_upstream"].as_u64().unwrap_or_default() > 0,
            exp.allow,
            "{ctx}: Envoy's count of bytes sent upstream"
        );
        seen.push((flowed, decision_of(&entry)));
    }
    assert_eq!(seen[0], seen[1], "{ctx}: ext_authz vs filter over TCP");
}

/// A configuration that is not a valid rule file denies everything with its own reason, over HTTP
/// and TCP, logs where the rule file is wrong, and counts the rejection; valid rules again (a new
/// configuration) are enforced again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configuration_fails_closed() {
    let test = "invalid_configuration_fails_closed";
    let allow_all = "defaultAction: ALLOW\nrules: []\n";
    let Some(mut world) =
        World::for_test(test, &Gateway::WASM, allow_all, Variant::ISTIO_DEFAULT).await
    else {
        return;
    };
    let broken = "defaultAction: DENY\nrules:\n  - name: Not_A_Rule_Name\n    action: ALLOW\n";
    world.restart_wasm_gateways_with(broken).await.unwrap();
    let (outcome, entry) = http_via(
        &world,
        Gateway::HttpWasm,
        DEFAULT_SLEEP,
        GOOGLE,
        (GOOGLE, "GET", "/"),
        "invalid-config-http",
    )
    .await;
    let ctx = format!("got {} {:?}; log {entry}", outcome.status, outcome.body);
    assert_eq!(outcome.status, 403, "{ctx}");
    assert_eq!(
        outcome.header("x-egress-authz-reason"),
        Some("invalid_configuration"),
        "{ctx}"
    );
    assert_eq!(
        outcome.body, "egress-authz: invalid_configuration\n",
        "{ctx}"
    );
    assert!(
        world
            .google_http
            .seen_with_id("invalid-config-http")
            .is_empty()
    );
    let invalid = Expect::deny("invalid_configuration", None);
    assert_metadata(&entry["authz"], &invalid, &ctx);

    let before = world.google_tcp.hits();
    let (result, entry) = through_tcp_via(&world, Gateway::TcpWasm, DEFAULT_SLEEP, GOOGLE)
        .await
        .unwrap();
    let entry = entry.unwrap();
    assert!(matches!(result.outcome, TcpOutcome::Closed(_)), "{entry}");
    assert_eq!(world.google_tcp.hits(), before, "no byte upstream");
    assert_metadata(&entry["authz"], &invalid, "TCP");

    for gw in Gateway::WASM {
        let envoy = world.envoy(gw);
        let stderr = std::fs::read_to_string(&envoy.stderr_path).unwrap();
        assert!(
            stderr.contains("configuration:3:") && stderr.contains("invalid_configuration"),
            "{gw:?}: the located compile error is logged:\n{stderr}"
        );
        let stats = envoy.stats("egress_authz").await;
        let counted = |suffix: &str| {
            stats
                .iter()
                .filter(|(name, _)| name.ends_with(suffix))
                .map(|(_, value)| *value)
                .sum::<u64>()
        };
        assert!(
            counted("egress_authz.configurations.rejected") >= 1,
            "{gw:?}: {stats:?}"
        );
        let protocol = if gw.is_tcp() { "tcp" } else { "http" };
        // The same count with the server's labels, as Prometheus scrapes the gateway.
        let (_, exposition) = http_get(envoy.admin, "/stats/prometheus").await.unwrap();
        let scraped = Metrics::parse(&exposition);
        assert_eq!(
            scraped.sum(
                "egress_authz_checks",
                &[
                    ("protocol", protocol),
                    ("decision", "deny"),
                    ("reason", "invalid_configuration")
                ]
            ),
            1.0,
            "{gw:?}: {exposition}"
        );
        assert_eq!(
            counted(&format!(
                "egress_authz.checks.{protocol}.deny.invalid_configuration"
            )),
            1,
            "{gw:?}: {stats:?}"
        );
    }

    world.restart_wasm_gateways_with(allow_all).await.unwrap();
    let (outcome, entry) = http_via(
        &world,
        Gateway::HttpWasm,
        DEFAULT_SLEEP,
        GOOGLE,
        (GOOGLE, "GET", "/"),
        "valid-again-http",
    )
    .await;
    assert_eq!(outcome.status, 200, "{entry}");
    assert_metadata(
        &entry["authz"],
        &Expect::allow("default_allow", None),
        "valid again",
    );
}

/// The bootstrap of a rendered gateway with its listener moved to LDS from the file `lds` (watched in
/// its directory), and that file's content: a DiscoveryResponse with the listener.
fn split_listener(rendered: &str, lds: &Path) -> (String, String) {
    let mut bootstrap: yaml_serde::Value = yaml_serde::from_str(rendered).unwrap();
    let statics = bootstrap["static_resources"].as_mapping_mut().unwrap();
    let mut listener = statics.remove("listeners").unwrap()[0].clone();
    listener.as_mapping_mut().unwrap().insert(
        "@type".into(),
        "type.googleapis.com/envoy.config.listener.v3.Listener".into(),
    );
    let dynamic: yaml_serde::Value = yaml_serde::from_str(&format!(
        "lds_config: {{resource_api_version: V3, path_config_source: {{path: {:?}, watched_directory: {{path: {:?}}}}}}}",
        lds.display().to_string(),
        lds.parent().unwrap().display().to_string(),
    ))
    .unwrap();
    bootstrap
        .as_mapping_mut()
        .unwrap()
        .insert("dynamic_resources".into(), dynamic);
    let mut response = yaml_serde::Mapping::new();
    response.insert(
        "resources".into(),
        yaml_serde::Value::Sequence(vec![listener]),
    );
    (
        yaml_serde::to_string(&bootstrap).unwrap(),
        yaml_serde::to_string(&response).unwrap(),
    )
}

/// Replaces the LDS file in one step (write beside it, rename over it), as a ConfigMap update does.
fn write_lds(lds: &Path, content: &str) {
    let tmp = lds.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, lds).unwrap();
}

/// A new plugin configuration reaches a running gateway as a listener update (here LDS from a watched
/// file; istiod pushes one when a WasmPlugin's `pluginConfig` changes): the filter compiles it in
/// `on_configure` and the new rules decide, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_configuration_swaps_the_rules_in_a_running_gateway() {
    let test = "new_configuration_swaps_the_rules_in_a_running_gateway";
    let first = Stage::Final.text();
    let Some(mut world) =
        World::for_test(test, &[Gateway::HttpWasm], &first, Variant::ISTIO_DEFAULT).await
    else {
        return;
    };
    if let Some(started) = world.envoys.remove(&Gateway::HttpWasm) {
        started.kill().await;
    }
    let dir = world.tmp.path().join("lds");
    std::fs::create_dir_all(&dir).unwrap();
    let lds = dir.join("listeners.yaml");
    let mut vars = world.vars.clone();
    let access_log = Envoy::access_log_path(Gateway::HttpWasm, &dir);
    vars.insert("ACCESS_LOG", access_log.display().to_string());
    vars.insert(WASM_HTTP_LISTENER_PORT, free_port().to_string());
    let (bootstrap, listener) = split_listener(&render_template(Gateway::HttpWasm, &vars), &lds);
    write_lds(&lds, &listener);
    let envoy = Envoy::start_config(&world.envoy_bin, Gateway::HttpWasm, &dir, &bootstrap)
        .await
        .unwrap_or_else(|e| panic!("{test}: Envoy with LDS did not start: {e}"));
    world.envoys.insert(Gateway::HttpWasm, envoy);

    let request = (GOOGLE, "GET", "/");
    let (outcome, entry) = http_via(
        &world,
        Gateway::HttpWasm,
        DEFAULT_SLEEP,
        GOOGLE,
        request,
        "first-rules",
    )
    .await;
    assert_eq!(outcome.status, 200, "{entry}");
    assert_metadata(
        &entry["authz"],
        &expected(Stage::Final, DEFAULT_SLEEP, GOOGLE),
        "first rules",
    );

    vars.insert("WASM_RULES", wasm_rules_value(&Stage::AllowNothing.text()));
    let (_, listener) = split_listener(&render_template(Gateway::HttpWasm, &vars), &lds);
    write_lds(&lds, &listener);
    let world = &world;
    let entry = poll_for(
        Duration::from_secs(10),
        "the new configuration to decide",
        || async move {
            let (outcome, entry) = http_via(
                world,
                Gateway::HttpWasm,
                DEFAULT_SLEEP,
                GOOGLE,
                request,
                "new-rules",
            )
            .await;
            (outcome.status == 403).then_some(entry)
        },
    )
    .await
    .unwrap();
    assert_metadata(
        &entry["authz"],
        &expected(Stage::AllowNothing, DEFAULT_SLEEP, GOOGLE),
        "new rules",
    );
    let envoy = world.envoy(Gateway::HttpWasm);
    let stats = envoy.stats("egress_authz.configurations").await;
    let accepted: u64 = stats
        .iter()
        .filter(|(name, _)| name.ends_with("egress_authz.configurations.accepted"))
        .map(|(_, value)| *value)
        .sum();
    // Counted by the process started above, which the test never restarted.
    assert!(
        accepted >= 2,
        "both configurations were compiled: {stats:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Generated corpus

/// A small deterministic generator (xorshift64*), so a failing rule set can be reproduced from its number.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Hosts the generated requests go to: the walkthrough's and others under one domain.
const CORPUS_HOSTS: [&str; 5] = [
    GOOGLE,
    YAHOO,
    "api.example.com",
    "a.b.example.com",
    "www.example.org",
];
const HOST_PATTERNS: [&str; 8] = [
    GOOGLE,
    YAHOO,
    "api.example.com",
    "*.example.com",
    "**.example.com",
    "www.example.org",
    "*.google.com",
    "*",
];
const NAMESPACES: [&str; 4] = ["default", "otherns", "other*", "*ns"];
const SERVICE_ACCOUNTS: [&str; 4] = ["otherns/sleep", "otherns/sleep-*", "default/*", "*/sleep"];
const METHODS: [&str; 3] = ["GET", "POST", "DELETE"];
const PATHS: [&str; 4] = ["/", "/api/v1", "/api/*", "/admin"];

/// A YAML list of a few of `items`, as a flow sequence of quoted strings.
fn some(random: &mut Random, items: &[&str]) -> String {
    let count = 1 + random.below(2);
    let chosen: Vec<String> = (0..count)
        .map(|_| format!("{:?}", random.pick(items)))
        .collect();
    format!("[{}]", chosen.join(", "))
}

/// A rule set of 6 to 13 rules over the corpus's callers and hosts; the ports named are the gateways'
/// listener ports (so a port condition can match) and one neither listens on.
fn generate_rule_set(random: &mut Random, ports: [u16; 2]) -> String {
    let default = if random.chance(50) { "ALLOW" } else { "DENY" };
    let mut text = format!("defaultAction: {default}\nrules:\n");
    for index in 0..6 + random.below(8) {
        let action = if random.chance(50) { "ALLOW" } else { "DENY" };
        text.push_str(&format!("  - name: rule-{index}\n    action: {action}\n"));
        if random.chance(15) {
            text.push_str("    dryRun: true\n");
        }
        match random.below(4) {
            0 => {}
            1 => text.push_str(&format!(
                "    from:\n      namespaces: {}\n",
                some(random, &NAMESPACES)
            )),
            2 => text.push_str(&format!(
                "    from:\n      serviceAccounts: {}\n",
                some(random, &SERVICE_ACCOUNTS)
            )),
            _ => text.push_str(&format!(
                "    from:\n      notNamespaces: {}\n",
                some(random, &NAMESPACES)
            )),
        }
        text.push_str(&format!(
            "    to:\n      hosts: {}\n",
            some(random, &HOST_PATTERNS)
        ));
        if random.chance(30) {
            let port = *random.pick(&[ports[0], ports[1], 443]);
            text.push_str(&format!("      ports: [{port}]\n"));
        }
        if random.chance(25) {
            text.push_str(&format!("      methods: {}\n", some(random, &METHODS)));
        }
        if random.chance(25) {
            text.push_str(&format!("      paths: {}\n", some(random, &PATHS)));
        }
    }
    text
}

/// A port no process listens on now (bound, read, released): the gateways' listeners are put there so
/// the rules can name them.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// For generated rule sets, the filter in Envoy decides every generated request (caller certificate,
/// host, port, method, path, HTTP or TCP) exactly as `Policy::decide` does on the same facts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_corpus_filter_agrees_with_decide() {
    const RULE_SETS: u64 = 5;
    const REQUESTS: usize = 40;
    let test = "generated_corpus_filter_agrees_with_decide";
    let Some(mut world) = World::for_test(
        test,
        &Gateway::WASM,
        "defaultAction: DENY\nrules: []\n",
        Variant::ISTIO_DEFAULT,
    )
    .await
    else {
        return;
    };
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut dry_run_reports = 0;
    for set in 1..=RULE_SETS {
        let mut random = Random(0x9e37_79b9_7f4a_7c15 ^ set);
        let ports = [free_port(), free_port()];
        world
            .vars
            .insert(WASM_HTTP_LISTENER_PORT, ports[0].to_string());
        world
            .vars
            .insert(WASM_TCP_LISTENER_PORT, ports[1].to_string());
        let rules = generate_rule_set(&mut random, ports);
        world.restart_wasm_gateways_with(&rules).await.unwrap();
        let policy = compile(&[SourceFile {
            name: CORPUS_FILE.to_owned(),
            text: rules.clone(),
        }])
        .unwrap_or_else(|errors| {
            panic!("rule set {set}: generated rules do not compile: {errors:?}\n{rules}")
        });
        for index in 0..REQUESTS {
            let caller = *random.pick(&WORKLOADS);
            let host = *random.pick(&CORPUS_HOSTS);
            let principal = spiffe_of(caller).unwrap_or_default();
            let ctx = format!("rule set {set} request {index}: {caller} -> {host}");
            let (logged, reference) = if random.chance(60) {
                let method = *random.pick(&METHODS);
                let path = *random.pick(&["/", "/api/v1", "/api/v1?token=x", "/admin", "/other"]);
                // Now and then a TLS name other than the host: the SNI/host agreement check.
                let sni = if random.chance(15) { GOOGLE } else { host };
                let id = format!("corpus-{set}-{index}");
                let (_, entry) = http_via(
                    &world,
                    Gateway::HttpWasm,
                    caller,
                    sni,
                    (host, method, path),
                    &id,
                )
                .await;
                let request = EgressRequest {
                    http: Some(HttpRequest {
                        authority: host,
                        method,
                        path,
                    }),
                    principal: &principal,
                    destination_service: "",
                    sni,
                    port: Some(ports[0]),
                };
                let reference = reference_of(&policy.decide(&request));
                (decision_of(&entry), reference)
            } else {
                let (_, entry) = through_tcp_via(&world, Gateway::TcpWasm, caller, host)
                    .await
                    .unwrap_or_else(|e| panic!("{ctx} [TCP]: {e}"));
                let entry = entry.unwrap_or_else(|e| panic!("{ctx} [TCP]: {e}"));
                let request = EgressRequest {
                    http: None,
                    principal: &principal,
                    destination_service: host,
                    sni: "",
                    port: Some(ports[1]),
                };
                let reference = reference_of(&policy.decide(&request));
                (decision_of(&entry), reference)
            };
            assert_eq!(logged, reference, "{ctx}\nrules:\n{rules}");
            dry_run_reports += usize::from(reference["dry_run_rule"].is_some());
            *reasons
                .entry(reference["reason"].clone().unwrap_or_default())
                .or_default() += 1;
        }
    }
    eprintln!("{test}: reasons over the corpus: {reasons:?}, {dry_run_reports} dry-run reports");
    assert!(dry_run_reports > 0, "no dry-run rule matched in the corpus");
    // The corpus must exercise both verdicts and rules, or agreeing would prove little.
    for reason in ["allowed_by_rule", "denied_by_rule"] {
        assert!(reasons.contains_key(reason), "no {reason} in {reasons:?}");
    }
    assert!(
        reasons.contains_key("default_allow") || reasons.contains_key("no_matching_rule"),
        "no default decision in {reasons:?}"
    );
}

/// `decide`'s decision under the access log's keys.
fn reference_of(
    decision: &egress_authz::policy::Decision<'_>,
) -> BTreeMap<&'static str, Option<String>> {
    let values = [
        Some(decision.verdict.as_str().to_owned()),
        Some(decision.reason.as_str().to_owned()),
        decision.rule.map(|r| r.name.clone()),
        decision.dry_run.map(|d| d.rule.name.clone()),
        decision.dry_run.map(|d| d.verdict.as_str().to_owned()),
    ];
    DECISION_KEYS.into_iter().zip(values).collect()
}
