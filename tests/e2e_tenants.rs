//! Delegation end to end, through the real Envoy gateways with real mTLS: a platform rule file with
//! guardrails and two teams' tenant files decide together. Each tenant's rules reach only its own
//! namespace's callers, are reported as `<namespace>/<rule>` in Envoy's metadata, lose to a platform
//! DENY, and a third tenant file that reaches into another namespace is rejected alone.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use testkit::envoy::{Gateway, Variant};
use testkit::pki::{DEFAULT_SLEEP, OTHERNS_SLEEP, SLEEP_GOOGLE};
use testkit::scenarios::{Observation, observe_http, observe_tcp};
use testkit::world::{GOOGLE, World, YAHOO};

const PLATFORM: &str = "\
defaultAction: DENY
tenants:
  defaults: {allowedHosts: [developers.google.com, developer.yahoo.com], maxRules: 5}
rules:
- name: no-yahoo-for-sleep-google
  action: DENY
  from: {serviceAccounts: [otherns/sleep-google]}
  to: {hosts: [developer.yahoo.com]}
";

/// Namespace `default`: google, for any of its callers (`from.namespaces` is implied).
const DEFAULT_TENANT: &str = "\
rules:
- name: google
  to: {hosts: [developers.google.com]}
";

/// Namespace `otherns`: yahoo, for any of its callers.
const OTHERNS_TENANT: &str = "\
rules:
- name: yahoo-all
  to: {hosts: [developer.yahoo.com]}
";

/// Namespace `shop` tries to grant yahoo to namespace `default`: rejected, alone.
const REACHING_TENANT: &str = "\
rules:
- name: steal
  from: {namespaces: [default]}
  to: {hosts: [developer.yahoo.com]}
";

async fn both(world: &World, caller: &str, host: &str) -> [Observation; 2] {
    [
        observe_http(world, Gateway::HttpIstio, caller, host, host, "/tenants").await,
        observe_tcp(world, caller, host).await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_files_decide_for_their_own_namespace_within_the_platform_rules() {
    let tenants = [
        ("default.yaml", DEFAULT_TENANT),
        ("otherns.yaml", OTHERNS_TENANT),
        ("shop.yaml", REACHING_TENANT),
    ];
    let Some(world) = World::for_test_with_tenants(
        "tenant_files_decide_for_their_own_namespace_within_the_platform_rules",
        &[Gateway::HttpIstio, Gateway::TcpIstio],
        PLATFORM,
        Some(&tenants),
        Variant::ISTIO_DEFAULT,
    )
    .await
    else {
        return;
    };

    // (caller, host, allowed, reason, rule)
    #[rustfmt::skip]
    let expectations = [
        (DEFAULT_SLEEP, GOOGLE, true, "allowed_by_rule", "default/google"),
        (OTHERNS_SLEEP, YAHOO, true, "allowed_by_rule", "otherns/yahoo-all"),
        // A tenant's rule does not reach another namespace's callers.
        (OTHERNS_SLEEP, GOOGLE, false, "no_matching_rule", "-"),
        (DEFAULT_SLEEP, YAHOO, false, "no_matching_rule", "-"),
        // The platform's DENY wins over the tenant's ALLOW.
        (SLEEP_GOOGLE, YAHOO, false, "denied_by_rule", "no-yahoo-for-sleep-google"),
    ];
    for (caller, host, allowed, reason, rule) in expectations {
        for seen in both(&world, caller, host).await {
            assert_eq!(seen.allowed, allowed, "{caller} -> {host}: {seen:?}");
            assert_eq!(seen.reason, reason, "{caller} -> {host}: {seen:?}");
            assert_eq!(seen.rule, rule, "{caller} -> {host}: {seen:?}");
        }
    }

    let status = world.server().rules_status().await;
    let tenants = status["tenants"].as_array().unwrap();
    let by_namespace = |ns: &str| {
        tenants
            .iter()
            .find(|t| t["namespace"] == ns)
            .unwrap_or_else(|| panic!("{ns} missing from /rules: {status}"))
    };
    assert_eq!(by_namespace("default")["rules"], 1, "{status}");
    assert_eq!(by_namespace("otherns")["rules"], 1, "{status}");
    let shop = by_namespace("shop");
    assert_eq!(shop["rules"], 0, "{status}");
    assert!(
        shop["last_error"].as_str().unwrap().contains("shop.yaml:"),
        "the rejected tenant's error is located: {status}"
    );
    for (tenant, valid) in [("default", 1.0), ("otherns", 1.0), ("shop", 0.0)] {
        let metric = world
            .server()
            .metric("egress_authz_tenant_config_valid", &[("tenant", tenant)])
            .await;
        assert_eq!(
            metric, valid,
            "egress_authz_tenant_config_valid of {tenant}"
        );
    }
}
