//! Health, readiness and the process lifecycle against a real server process: SERVING and ready after
//! start and across a failed reload; on SIGTERM/SIGINT NOT_SERVING and not ready first, the gRPC
//! listener closed, in-flight RPCs drained within `--shutdown-grace`, exit 0; invalid rules at startup
//! exit non-zero with file:line:column.
//!
//! A long-lived `grpc.health.v1.Health/Watch` stream serves as the in-flight RPC: it is deterministic
//! (it stays open until the client drops it), where a Check is too fast to catch mid-flight.

use std::time::{Duration, Instant};

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use testkit::{
    Server, ServerBuilder, bounded, check, is_allowed, message_of, mk_http_check, poll_until,
    rules_allowing, spiffe,
};

const AUTHZ_SERVICE: &str = "envoy.service.auth.v3.Authorization";
const GIVE_UP: Duration = Duration::from_secs(10);

fn mk_rules() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, rules_allowing("allow-a", "a.example.com")).expect("write rules");
    (dir, path)
}

async fn health_status(server: &Server, service: &str) -> ServingStatus {
    let mut health = server.health().await;
    let response = health
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("health Check")
        .into_inner();
    ServingStatus::try_from(response.status).expect("known status")
}

/// Opens `Watch` for the Authorization service and returns the stream after its first (SERVING) message.
async fn watch_health(server: &Server) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
    let mut health = server.health().await;
    let mut stream = health
        .watch(HealthCheckRequest {
            service: AUTHZ_SERVICE.to_owned(),
        })
        .await
        .expect("health Watch")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("watch message")
        .expect("a first status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    stream
}

async fn next_status(
    stream: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
) -> ServingStatus {
    let message = tokio::time::timeout(GIVE_UP, stream.message())
        .await
        .expect("a status change in time")
        .expect("watch stream")
        .expect("the stream is still open");
    ServingStatus::try_from(message.status).expect("known status")
}

/// Waits for the server to exit after `signal` (named as in the log, `SIGTERM`): it exits 0, and its
/// shutdown log line names the signal.
async fn assert_exits_0_after(server: &mut Server, signal: &str) {
    let status = server.wait_exit(GIVE_UP).await.expect("exits");
    assert!(status.success(), "{signal}: {status:?}");
    let shutdown = server
        .logs
        .with_message("Shutting down; draining in-flight checks");
    assert_eq!(shutdown[0]["fields"]["signal"].as_str(), Some(signal));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_and_ready_after_start_with_a_startup_log() {
    bounded(async {
        let (_dir, path) = mk_rules();
        let server = ServerBuilder::new(&path).spawn().await;
        assert_eq!(health_status(&server, "").await, ServingStatus::Serving);
        assert_eq!(
            health_status(&server, AUTHZ_SERVICE).await,
            ServingStatus::Serving
        );
        assert_eq!(server.admin_get("/healthz").await.0, 200);
        assert_eq!(server.admin_get("/readyz").await.0, 200);

        let fields = &server.serving["fields"];
        assert_eq!(fields["version"].as_str(), Some(env!("CARGO_PKG_VERSION")));
        assert_eq!(
            fields["grpc_addr"].as_str(),
            Some(server.grpc_addr.to_string().as_str())
        );
        assert_eq!(
            fields["admin_addr"].as_str(),
            Some(server.admin_addr.to_string().as_str())
        );
        assert_eq!(fields["rules"].as_u64(), Some(1));
        let status = server.rules_status().await;
        assert_eq!(fields["rules_sha256"], status["sha256"]);
        assert_eq!(status["rules"], 1);
        assert!(
            status["files"][0].as_str().unwrap().ends_with("rules.yaml"),
            "{status}"
        );
        assert!(status["last_reload_error"].is_null());
        assert!(status["last_reload_success_unix_seconds"].as_f64().unwrap() > 0.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_keeps_health_and_readiness_up() {
    bounded(async {
        let (_dir, path) = mk_rules();
        let server = ServerBuilder::new(&path).spawn().await;
        std::fs::write(&path, "rules: [").unwrap();
        let reported = poll_until(GIVE_UP, || async {
            let status = server.rules_status().await;
            status["last_reload_error"].as_str().map(str::to_owned)
        })
        .await;
        assert!(reported.is_some(), "the failure is reported");
        assert_eq!(
            health_status(&server, AUTHZ_SERVICE).await,
            ServingStatus::Serving
        );
        assert_eq!(server.admin_get("/readyz").await.0, 200);
        let mut client = server.authz().await;
        let response = check(
            &mut client,
            mk_http_check(&spiffe("default", "a"), "a.example.com", 443, "GET", "/"),
        )
        .await;
        assert!(is_allowed(&response), "the last good rules serve");
    })
    .await;
}

/// SIGTERM while an RPC is in flight: NOT_SERVING arrives on the open stream, `/readyz` turns 503, the
/// gRPC listener stops accepting, and the process waits for the in-flight RPC; once it ends, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_goes_not_serving_then_drains_in_flight_rpcs_and_exits_0() {
    bounded(async {
        let (_dir, path) = mk_rules();
        let mut server = ServerBuilder::new(&path)
            .args(["--shutdown-grace", "60s"])
            .spawn()
            .await;
        let mut in_flight = watch_health(&server).await;

        server.signal("TERM");
        assert_eq!(next_status(&mut in_flight).await, ServingStatus::NotServing);
        let not_ready = poll_until(GIVE_UP, || async {
            (testkit::http_get(server.admin_addr, "/readyz")
                .await
                .ok()?
                .0
                == 503)
                .then_some(())
        })
        .await;
        assert!(not_ready.is_some(), "/readyz answers 503 while draining");
        let closed = poll_until(GIVE_UP, || async {
            tokio::net::TcpStream::connect(server.grpc_addr)
                .await
                .is_err()
                .then_some(())
        })
        .await;
        assert!(closed.is_some(), "the gRPC listener stops accepting");
        assert!(
            server.is_running(),
            "the process waits for the in-flight RPC"
        );

        let released = Instant::now();
        drop(in_flight);
        assert_exits_0_after(&mut server, "SIGTERM").await;
        eprintln!(
            "exit after the last in-flight RPC ended: {:?}",
            released.elapsed()
        );
        assert!(
            !server.logs.with_message("Stopped").is_empty(),
            "a clean drain"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_0() {
    bounded(async {
        let (_dir, path) = mk_rules();
        let mut server = ServerBuilder::new(&path).spawn().await;
        let mut client = server.authz().await;
        check(
            &mut client,
            mk_http_check("", "a.example.com", 443, "GET", "/"),
        )
        .await;
        drop(client);
        server.signal("INT");
        assert_exits_0_after(&mut server, "SIGINT").await;
    })
    .await;
}

/// An RPC that never ends cannot hold the process past `--shutdown-grace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_bounds_the_drain() {
    bounded(async {
        let (_dir, path) = mk_rules();
        let grace = Duration::from_secs(1);
        let mut server = ServerBuilder::new(&path)
            .args(["--shutdown-grace", "1s"])
            .spawn()
            .await;
        let mut in_flight = watch_health(&server).await;
        let signalled = Instant::now();
        server.signal("TERM");
        assert_eq!(next_status(&mut in_flight).await, ServingStatus::NotServing);
        let status = server
            .wait_exit(GIVE_UP)
            .await
            .expect("exits after the grace period");
        let took = signalled.elapsed();
        eprintln!("exit with an RPC still open, grace {grace:?}: {took:?}");
        assert!(status.success(), "{status:?}");
        assert!(took >= grace, "waited for the in-flight RPC: {took:?}");
        assert!(
            took < grace + Duration::from_secs(3),
            "bounded by the grace: {took:?}"
        );
        let over = server
            .logs
            .wait_for(GIVE_UP, |l| {
                message_of(l) == Some("Grace period over; exiting with requests in flight")
            })
            .await;
        assert!(over.is_some());
        drop(in_flight);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rules_at_startup_exit_non_zero_with_file_line_column() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.yaml");
        std::fs::write(
            &path,
            "defaultAction: DENY\nrules:\n- name: x\n  form: {}\n",
        )
        .unwrap();
        for (rules, names) in [
            (path.clone(), format!("{}:4:3", path.display())),
            (dir.path().join("missing.yaml"), "missing.yaml".to_owned()),
        ] {
            let failure = ServerBuilder::new(&rules)
                .try_spawn()
                .await
                .expect_err("the server must not start on invalid or missing rules");
            let status = failure.status.expect("it exited");
            assert!(!status.success(), "{}: {status:?}", rules.display());
            assert!(
                failure.stderr.contains(&names),
                "no {names} in:\n{}",
                failure.stderr
            );
        }
    })
    .await;
}
