//! The real binary, driven with grpcurl as an operator would: reflection lists the services without proto
//! files, the README's Explain example works, and gRPC health answers for the ext_authz service.
//!
//! grpcurl comes from `scripts/install.sh grpcurl` (found through `GRPCURL_BIN` or `.tools/grpcurl`).
//! Without it the tests say so and pass in a plain `cargo test`; under CI or `scripts/test.sh` they fail.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::{Server, ServerBuilder};

/// Starts `serve` on the shipped rules; the shared support waits for its "Serving" line.
async fn start_server() -> Server {
    ServerBuilder::new(repo("deploy/rules")).spawn().await
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn grpcurl() -> Option<PathBuf> {
    let found = std::env::var_os("GRPCURL_BIN")
        .map(PathBuf::from)
        .or_else(|| Some(repo(".tools/grpcurl")))
        .filter(|p| p.is_file());
    let required = std::env::var_os("CI").is_some()
        || std::env::var_os("EGRESS_AUTHZ_REQUIRE_TOOLS").is_some();
    match (&found, required) {
        (None, true) => {
            panic!("grpcurl not found: run scripts/install.sh grpcurl or set GRPCURL_BIN")
        }
        (None, false) => {
            eprintln!("skipping: grpcurl not found (scripts/install.sh grpcurl installs it)")
        }
        _ => {}
    }
    found
}

fn run(grpcurl: &Path, args: &[&str]) -> String {
    let started = Instant::now();
    let output = Command::new(grpcurl)
        .args(["-plaintext", "-max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        output.status.success(),
        "grpcurl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn reflection_lists_the_services_without_proto_files() {
    let Some(grpcurl) = grpcurl() else { return };
    let server = start_server().await;
    let services = run(&grpcurl, &[&server.grpc_addr.to_string(), "list"]);
    assert!(
        services.lines().any(|l| l == "egress_authz.admin.v1.Admin"),
        "{services}"
    );
    assert!(
        services.lines().any(|l| l == "grpc.health.v1.Health"),
        "{services}"
    );
    let described = run(
        &grpcurl,
        &[
            &server.grpc_addr.to_string(),
            "describe",
            "egress_authz.admin.v1.Admin",
        ],
    );
    assert!(described.contains("rpc Explain"), "{described}");
}

#[tokio::test]
async fn readme_explain_example_works() {
    let Some(grpcurl) = grpcurl() else { return };
    let server = start_server().await;
    let request = r#"{"attributes":{"source":{"principal":"spiffe://cluster.local/ns/default/sa/sleep"},
        "request":{"http":{"host":"developer.yahoo.com","method":"GET","path":"/"}}}}"#;
    let out = run(
        &grpcurl,
        &[
            "-d",
            request,
            &server.grpc_addr.to_string(),
            "egress_authz.admin.v1.Admin/Explain",
        ],
    );
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["decision"], "deny");
    assert_eq!(json["reason"], "no_matching_rule");
    assert_eq!(json["namespace"], "default");
    assert_eq!(json["rules"][0]["failedCondition"], "to.hosts");
}

#[tokio::test]
async fn health_is_serving_for_the_authorization_service() {
    let Some(grpcurl) = grpcurl() else { return };
    let server = start_server().await;
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        let request = format!(r#"{{"service":"{service}"}}"#);
        let out = run(
            &grpcurl,
            &[
                "-d",
                &request,
                &server.grpc_addr.to_string(),
                "grpc.health.v1.Health/Check",
            ],
        );
        assert!(
            out.contains("SERVING") && !out.contains("NOT_SERVING"),
            "{service:?}: {out}"
        );
    }
}
