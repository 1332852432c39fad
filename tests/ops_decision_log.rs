//! Decision logs against a real server process (`--log-format json`): one event per decision with
//! every field a decision carries, the `all|deny|none` modes, and per-(namespace, host, reason) deny
//! sampling with a count of what was suppressed.
//!
//! A decision event is written before its Check response is sent, and stderr is one ordered pipe, so a
//! later marker line (SIGHUP's "SIGHUP: reloading rules") proves that no further decision event of the
//! checks already answered can still arrive.

use std::time::Duration;

use testkit::{
    Server, ServerBuilder, bounded, check, message_of, mk_http_check,
    mk_http_check_with_request_id, mk_tcp_check, spiffe,
};

const GIVE_UP: Duration = Duration::from_secs(10);
const DECISION: &str = "Decision";
const SUPPRESSED: &str = "Suppressed deny decision logs";

/// `allow-a` lets `default` reach a.example.com, which the dry-run `dry-deny-a` would deny; anything
/// else but blocked.example.com (which no test here asks for) is denied with `no_matching_rule`.
const RULES_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/rules/allow-deny-dry-run.yaml"
);

async fn spawn(args: &[&str]) -> Server {
    ServerBuilder::new(RULES_PATH)
        .args(args.iter().copied())
        .spawn()
        .await
}

/// Waits until every decision event of the checks answered so far has been read.
async fn settle(server: &Server) {
    let before = server.logs.with_message("SIGHUP: reloading rules").len();
    server.signal("HUP");
    let marker = server
        .logs
        .wait_for(GIVE_UP, |l| {
            message_of(l) == Some("SIGHUP: reloading rules")
        })
        .await;
    assert!(marker.is_some());
    let seen = testkit::poll_until(GIVE_UP, || async {
        (server.logs.with_message("SIGHUP: reloading rules").len() > before).then_some(())
    })
    .await;
    assert!(seen.is_some(), "the marker line arrived");
}

fn decisions(server: &Server) -> Vec<serde_json::Value> {
    server.logs.with_message(DECISION)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_mode_logs_every_decision_with_its_fields() {
    bounded(async {
        let server = spawn(&["--decision-log", "all"]).await;
        let mut client = server.authz().await;
        let caller = spiffe("default", "sleep");
        let allowed = mk_http_check_with_request_id(
            &caller,
            "a.example.com:443",
            443,
            "GET",
            "/v1/items?token=s3cr3t#frag",
            "req-123",
        );
        check(&mut client, allowed).await;
        check(
            &mut client,
            mk_http_check(&caller, "b.example.com", 443, "POST", "/upload"),
        )
        .await;
        check(&mut client, mk_tcp_check(&caller, "c.example.com", 8443)).await;
        settle(&server).await;

        let events = decisions(&server);
        assert_eq!(events.len(), 3, "one event per decision: {events:#?}");
        for event in &events {
            assert_eq!(event["target"].as_str(), Some("egress_authz::decision"));
            assert_eq!(event["level"].as_str(), Some("INFO"));
            let latency = &event["fields"]["latency_us"];
            assert!(latency.is_u64(), "latency_us in {event}");
        }
        let allow = &events[0]["fields"];
        let want = [
            ("decision", "allow"),
            ("reason", "allowed_by_rule"),
            ("rule", "allow-a"),
            ("dry_run_rule", "dry-deny-a"),
            ("dry_run_decision", "deny"),
            ("protocol", "http"),
            ("principal", caller.as_str()),
            ("namespace", "default"),
            ("service_account", "sleep"),
            ("host", "a.example.com"),
            ("method", "GET"),
            ("path", "/v1/items"),
            ("request_id", "req-123"),
        ];
        for (field, value) in want {
            assert_eq!(allow[field].as_str(), Some(value), "{field} in {allow}");
        }
        assert_eq!(allow["port"].as_u64(), Some(443));
        let line = serde_json::to_string(&events[0]).unwrap();
        assert!(
            !line.contains("s3cr3t") && !line.contains("frag"),
            "no query string: {line}"
        );

        let deny = &events[1]["fields"];
        assert_eq!(deny["decision"].as_str(), Some("deny"));
        assert_eq!(deny["reason"].as_str(), Some("no_matching_rule"));
        assert!(
            deny.get("rule").is_none() && deny.get("request_id").is_none(),
            "{deny}"
        );
        assert_eq!(deny["path"].as_str(), Some("/upload"));

        let tcp = &events[2]["fields"];
        assert_eq!(tcp["protocol"].as_str(), Some("tcp"));
        assert_eq!(tcp["host"].as_str(), Some("c.example.com"));
        assert_eq!(tcp["port"].as_u64(), Some(8443));
        assert!(
            tcp.get("method").is_none() && tcp.get("path").is_none(),
            "{tcp}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_controlled_field_is_bounded_in_a_line() {
    bounded(async {
        let server = spawn(&["--decision-log", "all"]).await;
        let mut client = server.authz().await;
        let long = |c: &str| c.repeat(20_000);
        let caller = format!("spiffe://cluster.local/ns/default/sa/{}", long("s"));
        let huge = mk_http_check_with_request_id(
            &caller,
            &format!("{}.example.com", long("h")),
            443,
            &long("M"),
            &format!("/{}", long("p")),
            &long("r"),
        );
        check(&mut client, huge).await;
        settle(&server).await;

        let events = decisions(&server);
        assert_eq!(events.len(), 1, "{events:#?}");
        let line = serde_json::to_string(&events[0]).unwrap();
        // Six fields of 20 KB each came in (the service account with the principal); the line stays
        // under 4 KiB.
        assert!(line.len() < 4096, "{} bytes: {line}", line.len());
        let fields = &events[0]["fields"];
        for field in [
            "principal",
            "service_account",
            "host",
            "method",
            "path",
            "request_id",
        ] {
            let value = fields[field].as_str().unwrap_or_default();
            assert!(value.contains("…[+"), "{field} says it was cut: {value}");
        }
    })
    .await;
}

/// Sends HTTP GETs from `default/sleep`, `times` to each `host` in `sends`, to a server started with
/// `args`, then checks the decisions of the events logged, in order.
async fn assert_logged_decisions(args: &[&str], sends: &[(&str, usize)], logged: &[&str]) {
    bounded(async {
        let server = spawn(args).await;
        let mut client = server.authz().await;
        let caller = spiffe("default", "sleep");
        for &(host, times) in sends {
            for _ in 0..times {
                check(&mut client, mk_http_check(&caller, host, 443, "GET", "/")).await;
            }
        }
        settle(&server).await;
        let events = decisions(&server);
        let got: Vec<_> = events
            .iter()
            .map(|e| e["fields"]["decision"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(got, logged, "with {args:?}: {events:#?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_mode_is_the_default_and_logs_only_denies() {
    let sends = [("a.example.com", 3), ("b.example.com", 1)];
    assert_logged_decisions(&[], &sends, &["deny"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_mode_logs_no_decision() {
    let sends = [("a.example.com", 1), ("b.example.com", 1)];
    assert_logged_decisions(&["--decision-log", "none"], &sends, &[]).await;
}

/// `--decision-log-sample-limit 2`: of 10 identical denies, 2 are logged; once the key's interval is
/// over, one summary reports the 8 suppressed, without waiting for another deny. Another key has its
/// own budget, and after the interval the key is logged again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denies_are_sampled_per_key_with_a_count_of_the_suppressed() {
    bounded(async {
        let server = spawn(&[
            "--decision-log-sample-limit",
            "2",
            "--decision-log-sample-interval",
            "1s",
        ])
        .await;
        let mut client = server.authz().await;
        let caller = spiffe("team-x", "worker");
        let flood = mk_http_check(&caller, "b.example.com", 443, "GET", "/");
        for _ in 0..10 {
            check(&mut client, flood.clone()).await;
        }
        for _ in 0..3 {
            check(
                &mut client,
                mk_http_check(&caller, "c.example.com", 443, "GET", "/"),
            )
            .await;
        }
        settle(&server).await;
        let hosts: Vec<_> = decisions(&server)
            .iter()
            .map(|e| e["fields"]["host"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            hosts,
            [
                "b.example.com",
                "b.example.com",
                "c.example.com",
                "c.example.com"
            ],
            "two events per key"
        );

        let summary = server
            .logs
            .wait_for(GIVE_UP, |l| {
                message_of(l) == Some(SUPPRESSED) && l["fields"]["host"] == "b.example.com"
            })
            .await
            .expect("a summary once the interval is over, with no further deny");
        let fields = &summary["fields"];
        assert_eq!(fields["suppressed"].as_u64(), Some(8), "{summary}");
        assert_eq!(fields["namespace"].as_str(), Some("team-x"));
        assert_eq!(fields["reason"].as_str(), Some("no_matching_rule"));
        let other = server
            .logs
            .wait_for(GIVE_UP, |l| {
                message_of(l) == Some(SUPPRESSED) && l["fields"]["host"] == "c.example.com"
            })
            .await
            .expect("the other key's summary");
        assert_eq!(other["fields"]["suppressed"].as_u64(), Some(1));
        let summaries = server.logs.with_message(SUPPRESSED);
        assert_eq!(summaries.len(), 2, "one summary per key: {summaries:#?}");

        // A new interval: logged again.
        check(&mut client, flood).await;
        settle(&server).await;
        assert_eq!(decisions(&server).len(), 5);
    })
    .await;
}
