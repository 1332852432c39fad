//! Learn mode end to end, through the real Envoy gateways with real mTLS: workloads reach hosts over
//! HTTP and TCP while the server observes (`defaultAction: ALLOW`); the inventory is fetched from
//! `/traffic`; `egress-authz suggest` turns it into rules; the server reloads them under
//! `defaultAction: DENY`; the same traffic is allowed, by the suggested rules, while an unobserved host
//! and an unobserved caller are denied.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::Command;

use egress_authz::traffic::InventoryDocument;
use testkit::envoy::Gateway;
use testkit::envoy::Variant;
use testkit::pki::{DEFAULT_SLEEP, OTHERNS_SLEEP, SLEEP_GOOGLE, SLEEP_YAHOO};
use testkit::scenarios::{Observation, observe_http, observe_tcp};
use testkit::world::{GOOGLE, World, YAHOO};

/// What the workloads reach today, observed with everything allowed.
const OBSERVE: &str = "defaultAction: ALLOW\nrules: []\n";

#[derive(Clone, Copy, Debug)]
enum Via {
    Http,
    Tcp,
}

async fn through(world: &World, via: Via, caller: &str, host: &str) -> Observation {
    match via {
        Via::Http => observe_http(world, Gateway::HttpIstio, caller, host, host, "/learn").await,
        Via::Tcp => observe_tcp(world, caller, host).await,
    }
}

fn run(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_egress-authz"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observed_traffic_becomes_rules_that_allow_it_and_deny_the_rest() {
    let Some(world) = World::for_test(
        "observed_traffic_becomes_rules_that_allow_it_and_deny_the_rest",
        &[Gateway::HttpIstio, Gateway::TcpIstio],
        OBSERVE,
        Variant::ISTIO_DEFAULT,
    )
    .await
    else {
        return;
    };
    // Several identities, several hosts, both protocols.
    let observed = [
        (Via::Http, DEFAULT_SLEEP, GOOGLE),
        (Via::Tcp, DEFAULT_SLEEP, GOOGLE),
        (Via::Http, SLEEP_YAHOO, YAHOO),
        (Via::Tcp, SLEEP_YAHOO, YAHOO),
        (Via::Tcp, SLEEP_GOOGLE, GOOGLE),
    ];
    for (via, caller, host) in observed {
        let seen = through(&world, via, caller, host).await;
        assert!(
            seen.allowed,
            "observing {caller} -> {host} over {via:?}: {seen:?}"
        );
        assert_eq!(seen.reason, "default_allow", "{seen:?}");
    }

    let (status, body) = world.server().admin_get("/traffic").await;
    assert_eq!(status, 200, "{body}");
    let inventory = InventoryDocument::parse(body.as_bytes()).unwrap();
    for (via, caller, host) in observed {
        let (namespace, service_account) = caller.split_once('/').unwrap();
        let protocol = match via {
            Via::Http => "http",
            Via::Tcp => "tcp",
        };
        assert!(
            inventory.entries.iter().any(|e| e.namespace == namespace
                && e.service_account == service_account
                && e.protocol == protocol
                && e.host == host
                && e.reason == "default_allow"),
            "{caller} -> {host} over {protocol} is missing from {body}"
        );
    }
    let file = world.tmp.path().join("traffic.json");
    std::fs::write(&file, &body).unwrap();

    let (ok, suggested, summary) = run(&["suggest", "--from", &file.display().to_string()]);
    assert!(ok, "suggest failed: {summary}");
    assert!(suggested.contains("defaultAction: DENY"), "{suggested}");
    let suggested_file = world.tmp.path().join("suggested.yaml");
    std::fs::write(&suggested_file, &suggested).unwrap();
    let (ok, out, err) = run(&["validate", &suggested_file.display().to_string()]);
    assert!(ok, "the suggestion must validate: {out}{err}\n{suggested}");

    world.reload_rules(&suggested).await.unwrap();
    for (via, caller, host) in observed {
        let seen = through(&world, via, caller, host).await;
        assert!(
            seen.allowed,
            "enforcing, {caller} -> {host} over {via:?}: {seen:?}\n{suggested}"
        );
        assert_eq!(seen.reason, "allowed_by_rule", "{seen:?}");
        assert!(
            suggested.contains(&format!("name: {}", seen.rule))
                || suggested.contains(&format!("name: '{}'", seen.rule))
                || suggested.contains(&format!("name: \"{}\"", seen.rule)),
            "allowed by {:?}, not a suggested rule:\n{suggested}",
            seen.rule
        );
    }
    // An unobserved host for an observed caller, and an unobserved caller, over both protocols.
    let unobserved = [
        (Via::Http, DEFAULT_SLEEP, YAHOO),
        (Via::Tcp, DEFAULT_SLEEP, YAHOO),
        (Via::Http, OTHERNS_SLEEP, GOOGLE),
        (Via::Tcp, OTHERNS_SLEEP, YAHOO),
    ];
    for (via, caller, host) in unobserved {
        let seen = through(&world, via, caller, host).await;
        assert!(
            !seen.allowed,
            "{caller} -> {host} over {via:?} was never observed: {seen:?}"
        );
        assert_eq!(seen.reason, "no_matching_rule", "{seen:?}");
    }
}
