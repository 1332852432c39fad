//! Overload shedding against a real server process: past `--max-checks-in-flight` a Check is answered
//! at once with a deny carrying HTTP 503 and reason `overloaded` (never a gRPC error), the checks that
//! were admitted are decided as usual, `/metrics` counts exactly the shed ones, and once the burst is
//! over checks are decided normally again.
//!
//! Exact counts need checks that stay in flight for as long as the test wants: a Check whose message
//! has not arrived is in flight (the server waits for it), so the bursts below hold their messages back.
//! With a limit of 2, exactly 2 checks of such a burst are admitted and every other one must be shed,
//! whatever the order the streams arrive in.

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

use testkit::check::{REASON_HEADER, denied_header};
use testkit::grpc::held_check;
use testkit::{
    RPC_TIMEOUT, Server, ServerBuilder, bounded, check, is_allowed, mk_http_check, reason_of,
    rules_allowing, spiffe,
};

const CHECKS_TOTAL: &str = "egress_authz_checks_total";
const MAX_IN_FLIGHT: usize = 2;
const CONNECTIONS: usize = 4;
/// Small enough that the streams alone stay within the server's allowance for its own tasks, so only the
/// count of checks the endpoint is working on decides who is shed: the runtime's task count, the other
/// measure (for floods of streams waiting for a worker), stays out of these exact counts.
const STREAMS_PER_CONNECTION: usize = 8;
const BURST: usize = CONNECTIONS * STREAMS_PER_CONNECTION;
/// google.rpc.Code PERMISSION_DENIED: every deny, shed or not.
const PERMISSION_DENIED: i32 = 7;

/// The i-th check of a burst and whether the rules allow it: alternately an allowed and a denied host,
/// so a check decided with the wrong request or as the wrong verdict shows.
fn nth_check(i: usize) -> (CheckRequest, bool) {
    let caller = spiffe("default", "sleep");
    if i.is_multiple_of(2) {
        (
            mk_http_check(&caller, "allowed.example.com", 443, "GET", "/"),
            true,
        )
    } else {
        (
            mk_http_check(&caller, "other.example.com", 443, "GET", "/"),
            false,
        )
    }
}

async fn start() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, rules_allowing("allow", "allowed.example.com")).expect("write rules");
    let server = ServerBuilder::new(&rules)
        .args([
            "--max-checks-in-flight",
            &MAX_IN_FLIGHT.to_string(),
            // One worker: shedding must not depend on the server having threads to spare.
            "--worker-threads",
            "1",
        ])
        .spawn()
        .await;
    (dir, server)
}

/// Whether the response is the shed answer, asserting its whole shape when the reason says it is.
fn is_shed(response: &CheckResponse) -> bool {
    if reason_of(response).as_deref() != Some("overloaded") {
        return false;
    }
    assert_eq!(
        response.status.as_ref().map(|s| s.code),
        Some(PERMISSION_DENIED),
        "a shed check is a deny: {response:?}"
    );
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        panic!("a shed check carries a denied HTTP response: {response:?}");
    };
    assert_eq!(
        denied.status.as_ref().map(|s| s.code),
        Some(503),
        "shed, not a policy deny: {response:?}"
    );
    assert_eq!(
        denied_header(response, REASON_HEADER),
        Some("overloaded"),
        "{response:?}"
    );
    true
}

/// Asserts the response is the rules' decision for a check the rules allow (`allowed`) or not.
fn assert_decided(response: &CheckResponse, allowed: bool, what: &str) {
    let reason = reason_of(response);
    let expected = if allowed {
        "allowed_by_rule"
    } else {
        "no_matching_rule"
    };
    assert_eq!(
        (is_allowed(response), reason.as_deref()),
        (allowed, Some(expected)),
        "{what}: {response:?}"
    );
}

async fn channels(server: &Server) -> Vec<Channel> {
    let mut channels = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        channels.push(server.channel().await);
    }
    channels
}

async fn shed_count(server: &Server) -> f64 {
    server
        .metrics()
        .await
        .get(
            CHECKS_TOTAL,
            &[
                ("decision", "deny"),
                ("reason", "overloaded"),
                ("protocol", "unknown"),
            ],
        )
        .expect("the overloaded series is pre-registered")
}

#[tokio::test]
async fn past_the_limit_checks_are_shed_and_the_admitted_ones_decided() {
    bounded(async {
        let (_dir, server) = start().await;
        assert_eq!(shed_count(&server).await, 0.0);
        let channels = channels(&server).await;

        // The burst: every stream at once, over several connections, messages held back.
        let (answers_tx, mut answers_rx) = mpsc::unbounded_channel();
        let mut releases = Vec::with_capacity(BURST);
        for i in 0..BURST {
            let (release, released) = oneshot::channel();
            releases.push(release);
            let channel = channels[i % CONNECTIONS].clone();
            let answers = answers_tx.clone();
            tokio::spawn(async move {
                let (request, allowed) = nth_check(i);
                let answer = held_check(channel, request, released).await;
                let _ = answers.send((i, allowed, answer));
            });
        }
        drop(answers_tx);

        // Only the admitted checks wait for their message; every other one is answered without it. So
        // all but MAX_IN_FLIGHT answers arrive while every message is still held back.
        let mut shed = 0;
        for _ in 0..BURST - MAX_IN_FLIGHT {
            let (i, _, answer) = tokio::time::timeout(RPC_TIMEOUT, answers_rx.recv())
                .await
                .expect("a shed check is answered without its message")
                .expect("every check reports its answer");
            let answer = answer.unwrap_or_else(|e| panic!("check {i}: gRPC error {e:?}"));
            assert!(
                is_shed(&answer),
                "check {i} answered before its message was sent: {answer:?}"
            );
            shed += 1;
        }

        // Now the admitted ones get their messages and must be decided by the rules.
        for release in releases {
            let _ = release.send(());
        }
        let mut decided = 0;
        while let Some((i, allowed, answer)) = tokio::time::timeout(RPC_TIMEOUT, answers_rx.recv())
            .await
            .expect("an admitted check is answered once its message arrives")
        {
            let answer = answer.unwrap_or_else(|e| panic!("check {i}: gRPC error {e:?}"));
            assert_decided(&answer, allowed, &format!("admitted check {i}"));
            decided += 1;
        }
        assert_eq!(
            (shed, decided),
            (BURST - MAX_IN_FLIGHT, MAX_IN_FLIGHT),
            "exactly the limit admitted"
        );
        assert_eq!(shed_count(&server).await, shed as f64, "/metrics");
        assert!(
            !server
                .logs
                .with_message(
                    "Overloaded: shedding checks (denied with HTTP 503, reason overloaded)"
                )
                .is_empty(),
            "shedding is logged"
        );

        assert_recovered(&channels).await;
        assert_eq!(
            shed_count(&server).await,
            shed as f64,
            "nothing shed once the burst is over"
        );
    })
    .await;
}

#[tokio::test]
async fn a_burst_of_plain_unary_checks_gets_only_decisions_and_shed_answers() {
    bounded(async {
        let (_dir, server) = start().await;
        let channels = channels(&server).await;

        // Ordinary unary Checks, all at once. How many of them overlap on the server is up to the
        // scheduling, so this asserts what holds for any split: each answer is a shed answer or the
        // rules' decision, and /metrics agrees with the client on how many were shed.
        let mut tasks = Vec::with_capacity(BURST);
        for i in 0..BURST {
            let mut client = AuthorizationClient::new(channels[i % CONNECTIONS].clone());
            tasks.push(tokio::spawn(async move {
                let (request, allowed) = nth_check(i);
                (i, allowed, check(&mut client, request).await)
            }));
        }
        let mut shed = 0;
        for task in tasks {
            let (i, allowed, answer) = task.await.expect("check task");
            if is_shed(&answer) {
                shed += 1;
            } else {
                assert_decided(&answer, allowed, &format!("burst check {i}"));
            }
        }
        assert_eq!(shed_count(&server).await, f64::from(shed), "/metrics");

        assert_recovered(&channels).await;
        assert_eq!(shed_count(&server).await, f64::from(shed));
    })
    .await;
}

/// With nothing else in flight, one check at a time on every connection is always admitted.
async fn assert_recovered(channels: &[Channel]) {
    for round in 0..4 {
        for (c, channel) in channels.iter().enumerate() {
            let mut client = AuthorizationClient::new(channel.clone());
            let i = round * CONNECTIONS + c;
            let (request, allowed) = nth_check(i);
            let answer = check(&mut client, request).await;
            assert_decided(&answer, allowed, &format!("check {i} after the burst"));
        }
    }
}
