//! The traffic inventory (learn mode) against a real server process: every check counted under its
//! flow key and served at the admin port's `/traffic`; bounded, with overflow counted; turned off by
//! `--traffic-max-entries 0`; saved atomically to `--traffic-file` periodically and at shutdown, and
//! restored from it at startup.

use std::path::Path;
use std::time::Duration;

use egress_authz::traffic::{FlowEntry, InventoryDocument};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use testkit::{
    ServerBuilder, bounded, check, grpc, is_allowed, mk_http_check, mk_tcp_check, poll_until,
    spiffe,
};

const GIVE_UP: Duration = Duration::from_secs(10);
const OVERFLOW: &str = "egress_authz_traffic_overflow_total";

/// Default DENY; `allow-a` lets namespace `default` reach a.example.com; blocked.example.com is denied
/// by rule to everyone.
const RULES_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/rules/allow-deny-dry-run.yaml"
);

async fn send(server: &testkit::Server, requests: impl IntoIterator<Item = CheckRequest>) {
    let mut client = server.authz().await;
    for request in requests {
        check(&mut client, request).await;
    }
}

async fn inventory(server: &testkit::Server) -> InventoryDocument {
    let (status, body) = server.admin_get("/traffic").await;
    assert_eq!(status, 200, "{body}");
    InventoryDocument::parse(body.as_bytes()).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Entries as one comparable line each: caller, protocol, host, port, decision, reason, rule, count.
fn rows(document: &InventoryDocument) -> Vec<String> {
    document.entries.iter().map(row).collect()
}

fn row(e: &FlowEntry) -> String {
    format!(
        "{}/{} {} {}:{} {} {} {} x{}",
        e.namespace,
        e.service_account,
        e.protocol,
        e.host,
        e.port.map_or("-".to_owned(), |p| p.to_string()),
        e.decision,
        e.reason,
        e.rule.as_deref().unwrap_or("-"),
        e.count
    )
}

#[tokio::test]
async fn every_check_is_counted_under_its_flow_key() {
    bounded(async {
        let server = ServerBuilder::new(RULES_PATH).spawn().await;
        let sleep = spiffe("default", "sleep");
        let other = spiffe("other", "api");
        send(
            &server,
            [
                // Method, path and the spelling of the host are not part of the key.
                mk_http_check(&sleep, "a.example.com", 443, "GET", "/x?q=1"),
                mk_http_check(&sleep, "A.Example.COM.", 443, "POST", "/y"),
                mk_http_check(&sleep, "a.example.com", 443, "GET", "/z"),
                mk_tcp_check(&sleep, "a.example.com", 443),
                mk_http_check(&other, "blocked.example.com", 8443, "GET", "/"),
                mk_tcp_check(&other, "c.example.com", 443),
                mk_tcp_check(&other, "c.example.com", 443),
                mk_tcp_check(
                    "spiffe://evil.example/ns/default/sa/sleep",
                    "a.example.com",
                    443,
                ),
                mk_http_check(&sleep, "bad_host!", 443, "GET", "/"),
            ],
        )
        .await;
        let mut channel = server.channel().await;
        let answer = grpc::raw_call(&mut channel, grpc::CHECK_PATH, grpc::framed(0, 9, b"x")).await;
        assert_eq!(answer.denied_reason(), "invalid_request");

        let document = inventory(&server).await;
        assert_eq!(
            rows(&document),
            [
                "<none>/<none> tcp a.example.com:443 deny invalid_principal - x1",
                "<none>/<none> unknown <invalid>:- deny invalid_request - x1",
                "default/sleep http <invalid>:443 deny invalid_host - x1",
                "default/sleep http a.example.com:443 allow allowed_by_rule allow-a x3",
                "default/sleep tcp a.example.com:443 allow allowed_by_rule allow-a x1",
                "other/api http blocked.example.com:8443 deny denied_by_rule deny-blocked x1",
                "other/api tcp c.example.com:443 deny no_matching_rule - x2",
            ]
        );
        assert_eq!(document.trust_domains, ["cluster.local"]);
        assert_eq!(document.max_entries, 100_000, "the default bound");
        for entry in &document.entries {
            assert!(entry.first_seen <= entry.last_seen, "{entry:?}");
        }
        assert_eq!(
            server.metric("egress_authz_traffic_entries", &[]).await,
            7.0
        );
        assert_eq!(server.metric(OVERFLOW, &[]).await, 0.0);
    })
    .await;
}

#[tokio::test]
async fn a_full_inventory_counts_new_flows_as_overflow_and_keeps_the_ones_it_has() {
    bounded(async {
        let server = ServerBuilder::new(RULES_PATH)
            .args(["--traffic-max-entries", "2"])
            .spawn()
            .await;
        let sleep = spiffe("default", "sleep");
        let hosts = [
            "a.example.com",
            "b.example.com",
            "c.example.com",
            "d.example.com",
        ];
        send(&server, hosts.map(|h| mk_tcp_check(&sleep, h, 443))).await;
        send(&server, hosts.map(|h| mk_tcp_check(&sleep, h, 443))).await;
        let document = inventory(&server).await;
        assert_eq!(
            rows(&document),
            [
                "default/sleep tcp a.example.com:443 allow allowed_by_rule allow-a x2",
                "default/sleep tcp b.example.com:443 deny no_matching_rule - x2",
            ]
        );
        assert_eq!(document.overflow, 4);
        assert_eq!(server.metric(OVERFLOW, &[]).await, 4.0);
    })
    .await;
}

#[tokio::test]
async fn the_inventory_can_be_turned_off() {
    bounded(async {
        let server = ServerBuilder::new(RULES_PATH)
            .args(["--traffic-max-entries", "0"])
            .spawn()
            .await;
        let mut client = server.authz().await;
        let allowed = check(
            &mut client,
            mk_tcp_check(&spiffe("default", "sleep"), "a.example.com", 443),
        )
        .await;
        assert!(is_allowed(&allowed), "checks are decided as before");
        let (status, body) = server.admin_get("/traffic").await;
        assert_eq!(status, 404);
        assert!(body.contains("off"), "{body}");
        assert_eq!(
            server.metric("egress_authz_traffic_entries", &[]).await,
            0.0
        );

        let dir = tempfile::tempdir().unwrap();
        let failure = ServerBuilder::new(RULES_PATH)
            .args(["--traffic-max-entries", "0", "--traffic-file"])
            .args([dir.path().join("traffic.json").display().to_string()])
            .try_spawn()
            .await
            .expect_err("a file for an inventory that is off is a mistake");
        assert!(
            failure.stderr.contains("--traffic-max-entries 0"),
            "{failure}"
        );
    })
    .await;
}

fn saved(path: &Path) -> Option<InventoryDocument> {
    InventoryDocument::parse(&std::fs::read(path).ok()?).ok()
}

fn saved_count(path: &Path) -> u64 {
    saved(path).map_or(0, |d| d.entries.iter().map(|e| e.count).sum())
}

#[tokio::test]
async fn the_traffic_file_is_saved_periodically_and_at_shutdown_and_restored_at_startup() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("traffic.json");
        let file_arg = file.display().to_string();
        let args = [
            "--traffic-file",
            file_arg.as_str(),
            "--traffic-file-interval",
            "200ms",
        ];
        let mut server = ServerBuilder::new(RULES_PATH).args(args).spawn().await;
        assert_eq!(
            saved(&file).map(|d| d.entries.len()),
            Some(0),
            "saved at startup"
        );
        let check = || mk_tcp_check(&spiffe("default", "sleep"), "a.example.com", 443);
        send(&server, [check(), check()]).await;
        let periodic = poll_until(GIVE_UP, || async {
            (saved_count(&file) == 2).then_some(())
        })
        .await;
        assert!(periodic.is_some(), "the periodic save has both checks");

        // Counted after the last periodic save can have happened: only the save at shutdown has it.
        send(&server, [check()]).await;
        server.signal("TERM");
        let status = server.wait_exit(GIVE_UP).await.expect("exits");
        assert!(status.success());
        assert_eq!(
            saved_count(&file),
            3,
            "the save at shutdown has every check"
        );
        let before = saved(&file).unwrap();

        let server = ServerBuilder::new(RULES_PATH).args(args).spawn().await;
        send(&server, [check()]).await;
        let document = inventory(&server).await;
        assert_eq!(
            rows(&document),
            ["default/sleep tcp a.example.com:443 allow allowed_by_rule allow-a x4"]
        );
        assert_eq!(document.entries[0].first_seen, before.entries[0].first_seen);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["traffic.json"], "no temporary file left beside it");
    })
    .await;
}

#[tokio::test]
async fn an_unreadable_traffic_file_is_set_aside_not_overwritten() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("traffic.json");
        let cut_off = "{\"format\": \"egress-authz-traffic\", \"version\": 1, \"entr";
        std::fs::write(&file, cut_off).unwrap();
        let server = ServerBuilder::new(RULES_PATH)
            .args(["--traffic-file", &file.display().to_string()])
            .spawn()
            .await;
        let aside = dir.path().join("traffic.json.rejected");
        assert_eq!(std::fs::read_to_string(&aside).unwrap(), cut_off);
        assert!(
            saved(&file).is_some(),
            "a fresh inventory is saved in its place"
        );
        let logged = server
            .logs
            .with_message("The saved traffic inventory cannot be restored; starting afresh");
        assert_eq!(logged.len(), 1, "{}", server.log_text());
        assert!(logged[0].to_string().contains("cut off"), "{}", logged[0]);
    })
    .await;
}

#[tokio::test]
async fn a_traffic_file_that_cannot_be_written_stops_startup_with_its_path() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("no-such-directory").join("traffic.json");
        let failure = ServerBuilder::new(RULES_PATH)
            .args(["--traffic-file", &file.display().to_string()])
            .try_spawn()
            .await
            .expect_err("the server must not start");
        assert!(
            failure.stderr.contains(&file.display().to_string()),
            "{failure}"
        );
    })
    .await;
}
