//! `/metrics` against a real server process: every counter rises by exactly the checks sent, under the
//! right labels; rule series follow `--rule-metrics`; the rule-set gauges and `config_info` follow
//! reloads; and no label carries a request's host, principal or path.

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;

use testkit::{
    Metrics, ServerBuilder, bounded, check, is_allowed, mk_http_check, mk_tcp_check, poll_until,
    rules_allowing, spiffe, write_by_rename,
};

const CHECKS_TOTAL: &str = "egress_authz_checks_total";
const DURATION: &str = "egress_authz_check_duration_seconds";
const RULE_MATCHES: &str = "egress_authz_rule_matches_total";
const DRY_RUN: &str = "egress_authz_dry_run_total";
const GIVE_UP: Duration = Duration::from_secs(5);

/// Default DENY; `allow-a` lets `default` reach a.example.com, `deny-blocked` denies blocked.example.com
/// to everyone, and the dry-run `dry-deny-a` would deny a.example.com.
const RULES: &str = include_str!("fixtures/rules/allow-deny-dry-run.yaml");
/// The same rules, served in place: the tests that do not change them need no copy.
const RULES_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/rules/allow-deny-dry-run.yaml"
);

/// The traffic mix: (request, how many, expected decision, reason, protocol).
fn traffic() -> Vec<(CheckRequest, u32, &'static str, &'static str, &'static str)> {
    let caller = spiffe("default", "sleep");
    vec![
        (
            mk_http_check(&caller, "a.example.com", 443, "GET", "/x?q=1"),
            3,
            "allow",
            "allowed_by_rule",
            "http",
        ),
        (
            mk_tcp_check(&caller, "a.example.com", 443),
            1,
            "allow",
            "allowed_by_rule",
            "tcp",
        ),
        (
            mk_http_check(&caller, "blocked.example.com", 443, "POST", "/"),
            2,
            "deny",
            "denied_by_rule",
            "http",
        ),
        (
            mk_tcp_check(&caller, "c.example.com", 443),
            4,
            "deny",
            "no_matching_rule",
            "tcp",
        ),
        (
            mk_http_check("", "c.example.com", 80, "GET", "/"),
            2,
            "deny",
            "invalid_principal",
            "http",
        ),
        (
            mk_http_check(&caller, "", 80, "GET", "/"),
            1,
            "deny",
            "no_destination_host",
            "http",
        ),
    ]
}

type Series = BTreeMap<(String, BTreeMap<String, String>), f64>;

fn series(metrics: &Metrics) -> Series {
    metrics
        .samples
        .iter()
        .map(|(name, labels, value)| ((name.clone(), labels.clone()), *value))
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_rise_by_exactly_the_checks_sent_with_the_right_labels() {
    bounded(async {
        let server = ServerBuilder::new(RULES_PATH).spawn().await;
        let mut client = server.authz().await;
        let before = server.metrics().await;

        let mut expected: Series = BTreeMap::new();
        let mut total = 0;
        for (request, times, decision, reason, protocol) in traffic() {
            for _ in 0..times {
                let response = check(&mut client, request.clone()).await;
                assert_eq!(is_allowed(&response), decision == "allow", "{reason}");
            }
            let key = (
                CHECKS_TOTAL.to_owned(),
                labels(&[
                    ("decision", decision),
                    ("reason", reason),
                    ("protocol", protocol),
                ]),
            );
            *expected.entry(key).or_default() += f64::from(times);
            total += times;
        }
        let allowed_a = 4.0; // 3 HTTP + 1 TCP to a.example.com
        for (name, pairs, delta) in [
            (
                RULE_MATCHES,
                &[
                    ("rule", "allow-a"),
                    ("action", "allow"),
                    ("dry_run", "false"),
                ][..],
                allowed_a,
            ),
            (
                RULE_MATCHES,
                &[
                    ("rule", "deny-blocked"),
                    ("action", "deny"),
                    ("dry_run", "false"),
                ],
                2.0,
            ),
            (
                RULE_MATCHES,
                &[
                    ("rule", "dry-deny-a"),
                    ("action", "deny"),
                    ("dry_run", "true"),
                ],
                allowed_a,
            ),
            (
                DRY_RUN,
                &[("rule", "dry-deny-a"), ("would", "deny")],
                allowed_a,
            ),
        ] {
            expected.insert((name.to_owned(), labels(pairs)), delta);
        }
        let total = f64::from(total);
        expected.insert((format!("{DURATION}_count"), BTreeMap::new()), total);

        let after = server.metrics().await;
        let (before, after_series) = (series(&before), series(&after));
        for (key, value) in &after_series {
            let (name, _) = key;
            let counted = [CHECKS_TOTAL, RULE_MATCHES, DRY_RUN].contains(&name.as_str())
                || name == &format!("{DURATION}_count");
            if !counted {
                continue;
            }
            let delta = value - before.get(key).copied().unwrap_or(0.0);
            let want = expected.remove(key).unwrap_or(0.0);
            assert_eq!(delta, want, "{key:?}");
        }
        assert!(expected.is_empty(), "series never exported: {expected:?}");

        // The histogram: typed, microsecond buckets, the +Inf bucket equals the count.
        assert_eq!(
            after.types.get(DURATION).map(String::as_str),
            Some("histogram")
        );
        assert!(
            after
                .get(&format!("{DURATION}_bucket"), &[("le", "0.000005")])
                .is_some()
        );
        assert_eq!(
            after.get(&format!("{DURATION}_bucket"), &[("le", "+Inf")]),
            Some(total)
        );
        assert!(after.get(&format!("{DURATION}_sum"), &[]).unwrap() > 0.0);

        // Bounded cardinality: no label value comes from a request.
        for (name, labels, _) in after
            .samples
            .iter()
            .filter(|(n, _, _)| n.starts_with("egress_authz_"))
        {
            for value in labels.values() {
                assert!(
                    !value.contains("example.com")
                        && !value.contains("spiffe")
                        && !value.contains('/'),
                    "{name} has a request-derived label value {value:?}"
                );
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_metrics_false_turns_the_rule_series_off() {
    bounded(async {
        let server = ServerBuilder::new(RULES_PATH)
            .args(["--rule-metrics", "false"])
            .spawn()
            .await;
        let mut client = server.authz().await;
        for (request, times, ..) in traffic() {
            for _ in 0..times {
                check(&mut client, request.clone()).await;
            }
        }
        let metrics = server.metrics().await;
        assert!(
            !metrics.has(RULE_MATCHES),
            "rule series exported with --rule-metrics false"
        );
        assert_eq!(metrics.sum(CHECKS_TOTAL, &[]), 13.0);
        // Dry-run disagreements are what a dry run is for; they stay (one series per dry-run rule).
        assert_eq!(metrics.get(DRY_RUN, &[("rule", "dry-deny-a")]), Some(4.0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_set_gauges_and_config_info_follow_reloads() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.yaml");
        std::fs::write(&path, rules_allowing("allow-a", "a.example.com")).unwrap();
        let server = ServerBuilder::new(&path).spawn().await;

        let status = server.rules_status().await;
        let metrics = server.metrics().await;
        let sha = status["sha256"].as_str().unwrap().to_owned();
        assert_eq!(sha.len(), 64, "{sha}");
        assert_eq!(
            server.serving["fields"]["rules_sha256"].as_str(),
            Some(sha.as_str())
        );
        let info: Vec<_> = metrics.matching("egress_authz_config_info", &[]).collect();
        assert_eq!(info.len(), 1, "exactly one config_info series: {info:?}");
        assert_eq!(
            metrics.get("egress_authz_config_info", &[("sha256", &sha)]),
            Some(1.0)
        );
        assert_eq!(metrics.get("egress_authz_rules", &[]), Some(1.0));
        assert_eq!(status["rules"], 1);
        let loaded = metrics
            .get(
                "egress_authz_config_last_reload_success_timestamp_seconds",
                &[],
            )
            .unwrap();
        assert!(
            (loaded - status["last_reload_success_unix_seconds"].as_f64().unwrap()).abs() < 1e-3,
            "the gauge and /rules agree on the load time"
        );
        assert_eq!(
            metrics.get("egress_authz_reloads_total", &[("result", "success")]),
            Some(0.0)
        );

        write_by_rename(&path, RULES);
        // The success counter is the last series a reload writes: once it moved, the rest shows the
        // new rule set (waiting on the rule gauge instead raced the counter on a busy machine).
        let reloaded = poll_until(GIVE_UP, || async {
            let metrics = server.metrics().await;
            let counted = metrics.get("egress_authz_reloads_total", &[("result", "success")]);
            (counted == Some(1.0)).then_some(metrics)
        })
        .await
        .expect("the reload is counted");
        assert_eq!(reloaded.get("egress_authz_rules", &[]), Some(3.0));
        let status = server.rules_status().await;
        let new_sha = status["sha256"].as_str().unwrap();
        assert_ne!(new_sha, sha);
        assert_eq!(status["rules"], 3);
        let info: Vec<_> = reloaded.matching("egress_authz_config_info", &[]).collect();
        assert_eq!(info.len(), 1, "the old digest is gone: {info:?}");
        assert_eq!(
            reloaded.get("egress_authz_config_info", &[("sha256", new_sha)]),
            Some(1.0)
        );
        assert!(
            reloaded
                .get(
                    "egress_authz_config_last_reload_success_timestamp_seconds",
                    &[]
                )
                .unwrap()
                >= loaded
        );
        assert_eq!(
            reloaded.get("egress_authz_reloads_total", &[("result", "success")]),
            Some(1.0)
        );
        assert_eq!(
            reloaded.get("egress_authz_reloads_total", &[("result", "failure")]),
            Some(0.0)
        );
    })
    .await;
}

/// Rule series are counted through handles cached per rule position; a reload that moves rules must not
/// leave a position counting for the rule that used to be there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_series_follow_rules_that_a_reload_moved() {
    bounded(async {
        let rules = |first: (&str, &str), second: (&str, &str)| {
            format!(
                "defaultAction: DENY\nrules:\n- name: {}\n  to: {{hosts: [{}]}}\n- name: {}\n  to: {{hosts: [{}]}}\n",
                first.0, first.1, second.0, second.1
            )
        };
        let alpha = ("alpha", "a.example.com");
        let beta = ("beta", "b.example.com");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.yaml");
        std::fs::write(&path, rules(alpha, beta)).unwrap();
        // One worker thread: every check goes through the same thread's cache of handles.
        let server = ServerBuilder::new(&path)
            .args(["--worker-threads", "1"])
            .spawn()
            .await;
        let mut client = server.authz().await;
        let caller = spiffe("default", "sleep");
        let to_a = mk_http_check(&caller, "a.example.com", 443, "GET", "/");
        let to_b = mk_http_check(&caller, "b.example.com", 443, "GET", "/");
        assert!(is_allowed(&check(&mut client, to_a.clone()).await));

        let before = server.rules_status().await["sha256"].clone();
        write_by_rename(&path, &rules(beta, alpha));
        poll_until(GIVE_UP, || async {
            (server.rules_status().await["sha256"] != before).then_some(())
        })
        .await
        .expect("the reordered rules are loaded");
        for _ in 0..2 {
            assert!(is_allowed(&check(&mut client, to_b.clone()).await));
        }
        assert!(is_allowed(&check(&mut client, to_a).await));

        let metrics = server.metrics().await;
        let matches = |rule| metrics.get(RULE_MATCHES, &[("rule", rule), ("dry_run", "false")]);
        assert_eq!(matches("alpha"), Some(2.0), "alpha: once before, once after");
        assert_eq!(matches("beta"), Some(2.0), "beta: twice, now at alpha's old position");
    })
    .await;
}
