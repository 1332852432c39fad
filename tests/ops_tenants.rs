//! Tenant rule files against a real server process: one bad tenant file is rejected alone (at startup
//! and on reload), new platform guardrails that rule out a tenant's rules stop that tenant only, each
//! tenant's state shows in `/rules` and `/metrics`, and one tenant reloads under load without a failed
//! check. The one-shot commands read the same tenant files with `--tenant-rules`, strictly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use envoy_types::pb::google::protobuf::value::Kind;

use testkit::flip::{RELOADS_TOTAL, reloads};
use testkit::{
    Server, ServerBuilder, bounded, check, is_allowed, mk_http_check, poll_until, reason_of,
    spiffe, write_by_rename,
};

/// How long a reload's outcome may take to show: the reload thread runs at a lower priority, so a busy
/// machine can hold it back for seconds.
const OUTCOME_GIVE_UP: Duration = Duration::from_secs(30);

const TENANT_RULES: &str = "egress_authz_tenant_rules";
const TENANT_CONFIG_VALID: &str = "egress_authz_tenant_config_valid";

/// Platform rules: every namespace may have a tenant file reaching `**.example.com` on 443, and
/// nobody reaches `evil.example.com`.
const PLATFORM: &str = "\
defaultAction: DENY
tenants:
  defaults: {allowedHosts: ['**.example.com'], allowedPorts: [443]}
rules:
- name: deny-evil
  action: DENY
  to: {hosts: [evil.example.com]}
";

/// [`PLATFORM`] with `payments` narrowed to `api.example.com`.
const NARROWER_PLATFORM: &str = "\
defaultAction: DENY
tenants:
  defaults: {allowedHosts: ['**.example.com'], allowedPorts: [443]}
  payments: {allowedHosts: [api.example.com]}
rules:
- name: deny-evil
  action: DENY
  to: {hosts: [evil.example.com]}
";

/// A tenant file with one ALLOW rule `rule` to `host` on 443.
fn allowing(rule: &str, host: &str) -> String {
    format!("rules:\n- name: {rule}\n  to:\n    hosts: ['{host}']\n    ports: [443]\n")
}

/// A platform file and a tenant directory in a temporary directory.
struct Layout {
    _root: tempfile::TempDir,
    platform: PathBuf,
    tenants: PathBuf,
}

impl Layout {
    fn new(tenant_files: &[(&str, &str)]) -> Self {
        let root = tempfile::tempdir().expect("temporary directory");
        let platform = root.path().join("platform").join("rules.yaml");
        std::fs::create_dir(platform.parent().expect("a parent")).expect("platform directory");
        std::fs::write(&platform, PLATFORM).expect("write platform rules");
        let tenants = root.path().join("tenants");
        std::fs::create_dir(&tenants).expect("tenant directory");
        for (name, text) in tenant_files {
            std::fs::write(tenants.join(name), text).expect("write tenant file");
        }
        Self {
            _root: root,
            platform,
            tenants,
        }
    }

    fn tenant(&self, name: &str) -> PathBuf {
        self.tenants.join(name)
    }

    async fn serve(&self) -> Server {
        ServerBuilder::new(&self.platform)
            .args([
                "--tenant-rules".to_owned(),
                self.tenants.display().to_string(),
            ])
            .spawn()
            .await
    }
}

/// A check from `<namespace>/app` to `host` on 443.
async fn check_from(server: &Server, namespace: &str, host: &str) -> CheckResponse {
    let request = mk_http_check(&spiffe(namespace, "app"), host, 443, "GET", "/");
    check(&mut server.authz().await, request).await
}

/// The deciding rule the server put in the response's dynamic metadata.
fn rule_of(response: &CheckResponse) -> Option<String> {
    match response
        .dynamic_metadata
        .as_ref()?
        .fields
        .get("rule")?
        .kind
        .as_ref()?
    {
        Kind::StringValue(rule) => Some(rule.clone()),
        _ => None,
    }
}

async fn assert_allowed_by(server: &Server, namespace: &str, host: &str, rule: &str) {
    let response = check_from(server, namespace, host).await;
    assert!(
        is_allowed(&response),
        "{namespace} -> {host}: {:?}",
        reason_of(&response)
    );
    assert_eq!(rule_of(&response).as_deref(), Some(rule));
}

async fn assert_denied(server: &Server, namespace: &str, host: &str) {
    let response = check_from(server, namespace, host).await;
    assert!(!is_allowed(&response), "{namespace} -> {host} is denied");
}

/// The entry of `/rules`' `tenants` for `namespace`.
fn tenant_entry(status: &serde_json::Value, namespace: &str) -> serde_json::Value {
    status["tenants"]
        .as_array()
        .unwrap_or_else(|| panic!("/rules has no tenants list: {status}"))
        .iter()
        .find(|t| t["namespace"] == namespace)
        .unwrap_or_else(|| panic!("/rules lists no tenant {namespace}: {status}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_with_one_bad_tenant_serves_the_platform_and_the_others() {
    bounded(async {
        let layout = Layout::new(&[
            ("payments.yaml", &allowing("api", "api.example.com")),
            ("shop.yml", &allowing("web", "**.example.com")),
            // Beyond the guardrail: rejected, and only this file.
            ("search.yaml", &allowing("all", "*")),
        ]);
        let server = layout.serve().await;
        assert_allowed_by(&server, "payments", "api.example.com", "payments/api").await;
        assert_allowed_by(&server, "shop", "www.example.com", "shop/web").await;
        // A tenant's rules apply to its own namespace only.
        assert_denied(&server, "search", "api.example.com").await;
        // The platform DENY wins over a tenant ALLOW that covers it.
        let evil = check_from(&server, "shop", "evil.example.com").await;
        assert!(!is_allowed(&evil));
        assert_eq!(rule_of(&evil).as_deref(), Some("deny-evil"));

        let status = server.rules_status().await;
        let payments = tenant_entry(&status, "payments");
        assert_eq!(payments["rules"], 1);
        assert_eq!(payments["last_error"], serde_json::Value::Null);
        assert_eq!(payments["sha256"].as_str().map(str::len), Some(64));
        assert!(
            payments["file"]
                .as_str()
                .unwrap()
                .ends_with("payments.yaml")
        );
        assert!(
            payments["last_reload_success_unix_seconds"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        let search = tenant_entry(&status, "search");
        assert_eq!(search["rules"], 0);
        assert_eq!(search["sha256"], serde_json::Value::Null);
        let error = search["last_error"].as_str().expect("search has an error");
        assert!(
            error.contains("search.yaml:4:") && error.contains("to.hosts"),
            "{error}"
        );
        assert_eq!(status["last_reload_error"], serde_json::Value::Null);

        let metrics = server.metrics().await;
        for (tenant, rules, valid) in [
            ("payments", 1.0, 1.0),
            ("shop", 1.0, 1.0),
            ("search", 0.0, 0.0),
        ] {
            assert_eq!(
                metrics.get(TENANT_RULES, &[("tenant", tenant)]),
                Some(rules),
                "{tenant}"
            );
            assert_eq!(
                metrics.get(TENANT_CONFIG_VALID, &[("tenant", tenant)]),
                Some(valid),
                "{tenant}"
            );
        }
        assert_eq!(
            metrics.get(RELOADS_TOTAL, &[("result", "failure")]),
            Some(1.0)
        );
        assert!(
            server
                .logs
                .with_message("Rejected tenant rule file; it serves no rules")
                .iter()
                .any(|line| line.to_string().contains("search")),
            "the rejection is logged"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guardrail_change_rejects_an_existing_tenant_and_the_others_stay() {
    bounded(async {
        let layout = Layout::new(&[
            ("payments.yaml", &allowing("www", "www.example.com")),
            ("shop.yaml", &allowing("web", "www.example.com")),
        ]);
        let server = layout.serve().await;
        assert_allowed_by(&server, "payments", "www.example.com", "payments/www").await;
        let failures = reloads(&server, "failure").await;
        write_by_rename(&layout.platform, NARROWER_PLATFORM);
        let rejected = poll_until(OUTCOME_GIVE_UP, || async {
            (reloads(&server, "failure").await > failures).then_some(())
        });
        assert!(
            rejected.await.is_some(),
            "the tenant's rejection is counted"
        );
        let stopped = poll_until(OUTCOME_GIVE_UP, || async {
            (!is_allowed(&check_from(&server, "payments", "www.example.com").await)).then_some(())
        });
        assert!(stopped.await.is_some(), "payments' rules stop serving");
        assert_allowed_by(&server, "shop", "www.example.com", "shop/web").await;

        let status = server.rules_status().await;
        let payments = tenant_entry(&status, "payments");
        assert_eq!(payments["rules"], 0);
        let error = payments["last_error"]
            .as_str()
            .expect("payments has an error");
        assert!(
            error.contains("www.example.com") && error.contains("api.example.com"),
            "{error}"
        );
        assert_eq!(
            tenant_entry(&status, "shop")["last_error"],
            serde_json::Value::Null
        );
        let metrics = server.metrics().await;
        assert_eq!(
            metrics.get(TENANT_CONFIG_VALID, &[("tenant", "payments")]),
            Some(0.0)
        );
        assert_eq!(
            metrics.get(TENANT_CONFIG_VALID, &[("tenant", "shop")]),
            Some(1.0)
        );
        assert_eq!(
            metrics.get(TENANT_RULES, &[("tenant", "payments")]),
            Some(0.0)
        );

        // The team fixes its file within the new guardrail: it serves again.
        write_by_rename(
            &layout.tenant("payments.yaml"),
            &allowing("api", "api.example.com"),
        );
        let fixed = poll_until(OUTCOME_GIVE_UP, || async {
            is_allowed(&check_from(&server, "payments", "api.example.com").await).then_some(())
        });
        assert!(fixed.await.is_some(), "the fixed file is picked up");
        let status = server.rules_status().await;
        assert_eq!(
            tenant_entry(&status, "payments")["last_error"],
            serde_json::Value::Null
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_tenant_keeps_its_rules_and_a_deleted_one_loses_them() {
    bounded(async {
        let layout = Layout::new(&[
            ("payments.yaml", &allowing("api", "api.example.com")),
            ("shop.yaml", &allowing("web", "www.example.com")),
        ]);
        let server = layout.serve().await;
        // Naming another namespace's callers is refused; the previous rules keep serving.
        let foreign = "rules:\n- name: api\n  from: {namespaces: [shop]}\n  to: {hosts: [api.example.com], ports: [443]}\n";
        write_by_rename(&layout.tenant("payments.yaml"), foreign);
        let reported = poll_until(OUTCOME_GIVE_UP, || async {
            let status = server.rules_status().await;
            tenant_entry(&status, "payments")["last_error"].as_str().map(str::to_owned)
        });
        let error = reported.await.expect("the rejection is reported");
        assert!(error.contains("payments.yaml:3:") && error.contains("from.namespaces"), "{error}");
        assert_allowed_by(&server, "payments", "api.example.com", "payments/api").await;
        assert_denied(&server, "shop", "api.example.com").await;
        assert_eq!(
            server.metric(TENANT_CONFIG_VALID, &[("tenant", "payments")]).await,
            0.0
        );

        std::fs::remove_file(layout.tenant("payments.yaml")).expect("delete payments");
        let gone = poll_until(OUTCOME_GIVE_UP, || async {
            (!is_allowed(&check_from(&server, "payments", "api.example.com").await)).then_some(())
        });
        assert!(gone.await.is_some(), "a deleted file's rules go away");
        let metrics = server.metrics().await;
        assert_eq!(metrics.get(TENANT_RULES, &[("tenant", "payments")]), None);
        assert_eq!(metrics.get(TENANT_RULES, &[("tenant", "shop")]), Some(1.0));
        let status = server.rules_status().await;
        assert_eq!(status["tenants"].as_array().map(Vec::len), Some(1));
    })
    .await;
}

/// Checks from two tenants run continuously while one tenant's file is rewritten `REWRITES` times:
/// every RPC succeeds, the other tenant is allowed every time, and the rewritten tenant is answered
/// by one of its versions only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_one_tenant_under_load_fails_no_check() {
    bounded(async {
        const REWRITES: u32 = 8;
        let layout = Layout::new(&[
            ("payments.yaml", &allowing("v0", "api.example.com")),
            ("shop.yaml", &allowing("web", "www.example.com")),
        ]);
        let server = Arc::new(layout.serve().await);
        let stop = Arc::new(AtomicBool::new(false));
        let (sent, payments_allowed, payments_denied) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let mut clients = Vec::new();
        for client_index in 0..4 {
            let mut client = server.authz().await;
            let (stop, sent, allowed, denied) = (
                Arc::clone(&stop),
                Arc::clone(&sent),
                Arc::clone(&payments_allowed),
                Arc::clone(&payments_denied),
            );
            clients.push(tokio::spawn(async move {
                let shop = client_index % 2 == 0;
                while !stop.load(Ordering::Relaxed) {
                    let request = if shop {
                        mk_http_check(&spiffe("shop", "app"), "www.example.com", 443, "GET", "/")
                    } else {
                        mk_http_check(
                            &spiffe("payments", "app"),
                            "api.example.com",
                            443,
                            "GET",
                            "/",
                        )
                    };
                    let response = client.check(request).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    let response = response
                        .expect("no Check fails during a reload")
                        .into_inner();
                    let rule = rule_of(&response);
                    match (shop, is_allowed(&response), rule.as_deref()) {
                        (true, true, Some("shop/web")) => {}
                        (false, true, Some(rule)) if rule.starts_with("payments/v") => {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                        (false, false, None) => {
                            denied.fetch_add(1, Ordering::Relaxed);
                        }
                        other => panic!("an answer no version gives: {other:?}"),
                    }
                }
            }));
        }
        let successes = reloads(&server, "success").await;
        for rewrite in 1..=REWRITES {
            let checks_so_far = sent.load(Ordering::Relaxed);
            let ran = poll_until(OUTCOME_GIVE_UP, || async {
                (sent.load(Ordering::Relaxed) >= checks_so_far + 20).then_some(())
            });
            assert!(
                ran.await.is_some(),
                "checks keep flowing before rewrite {rewrite}"
            );
            // Odd versions allow another host: payments' checks are denied under them.
            let host = if rewrite % 2 == 0 {
                "api.example.com"
            } else {
                "other.example.com"
            };
            write_by_rename(
                &layout.tenant("payments.yaml"),
                &allowing(&format!("v{rewrite}"), host),
            );
            let applied = poll_until(OUTCOME_GIVE_UP, || async {
                (reloads(&server, "success").await >= successes + f64::from(rewrite)).then_some(())
            });
            assert!(applied.await.is_some(), "rewrite {rewrite} was reloaded");
        }
        let checks_so_far = sent.load(Ordering::Relaxed);
        let ran = poll_until(OUTCOME_GIVE_UP, || async {
            (sent.load(Ordering::Relaxed) >= checks_so_far + 20).then_some(())
        });
        assert!(
            ran.await.is_some(),
            "checks keep flowing after the last rewrite"
        );
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            client.await.expect("client task");
        }
        eprintln!(
            "checks under tenant reloads: {} (payments {} allowed, {} denied)",
            sent.load(Ordering::Relaxed),
            payments_allowed.load(Ordering::Relaxed),
            payments_denied.load(Ordering::Relaxed)
        );
        assert!(payments_allowed.load(Ordering::Relaxed) > 0);
        assert!(payments_denied.load(Ordering::Relaxed) > 0);
        let metrics = server.metrics().await;
        assert_eq!(
            metrics.get(RELOADS_TOTAL, &[("result", "failure")]),
            Some(0.0)
        );
        assert_eq!(
            metrics.sum("egress_authz_checks_total", &[]),
            sent.load(Ordering::Relaxed) as f64,
            "the server answered exactly the checks sent"
        );
    })
    .await;
}

/// `egress-authz <args>` run to completion: exit code, stdout, stderr.
fn run(args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_egress-authz"))
        .args(args)
        .output()
        .expect("run egress-authz");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

// === One-shot commands ===

#[test]
fn validate_with_tenant_rules_exits_1_naming_the_bad_file() {
    let layout = Layout::new(&[
        ("payments.yaml", &allowing("api", "api.example.com")),
        (
            "shop.yaml",
            "rules:\n- name: web\n  from: {serviceAccounts: [payments/app]}\n  action: DENY\n",
        ),
    ]);
    let (platform, tenants) = (path_arg(&layout.platform), path_arg(&layout.tenants));
    let (code, _, stderr) = run(&["validate", &platform, "--tenant-rules", &tenants]);
    assert_eq!(code, 1, "{stderr}");
    let shop = path_arg(&layout.tenant("shop.yaml"));
    assert!(
        stderr.contains(&format!("{shop}:3:")) && stderr.contains("from.serviceAccounts"),
        "{stderr}"
    );
    assert!(!stderr.contains("payments.yaml"), "{stderr}");

    std::fs::remove_file(layout.tenant("shop.yaml")).expect("remove shop");
    let (code, stdout, stderr) = run(&["validate", &platform, "--tenant-rules", &tenants]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!(
            "{}: ok, 1 rule(s)",
            path_arg(&layout.tenant("payments.yaml"))
        )),
        "{stdout}"
    );
    let (code, stdout, _) = run(&[
        "explain",
        "--rules",
        &platform,
        "--tenant-rules",
        &tenants,
        "--principal",
        &spiffe("payments", "app"),
        "--host",
        "api.example.com",
        "--port",
        "443",
    ]);
    assert_eq!(code, 0);
    assert!(stdout.contains("payments/api"), "{stdout}");
}

#[test]
fn test_diff_and_query_read_the_tenant_files() {
    let layout = Layout::new(&[("payments.yaml", &allowing("api", "api.example.com"))]);
    let (platform, tenants) = (path_arg(&layout.platform), path_arg(&layout.tenants));
    let dir = layout.tenants.parent().expect("a parent").to_path_buf();
    let test_file = dir.join("payments.test.yaml");
    std::fs::write(
        &test_file,
        format!(
            "cases:\n- name: payments reaches its api\n  principal: {}\n  host: api.example.com\n  port: 443\n  expect: {{decision: allow, rule: payments/api}}\n",
            spiffe("payments", "app")
        ),
    )
    .expect("write test file");
    let test_arg = path_arg(&test_file);
    let (code, stdout, stderr) = run(&[
        "test",
        &test_arg,
        "--rules",
        &platform,
        "--tenant-rules",
        &tenants,
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // Without the tenant files, the rule the case expects does not exist: the test file is refused.
    let (code, _, stderr) = run(&["test", &test_arg, "--rules", &platform]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("payments/api"), "{stderr}");

    let (code, stdout, _) = run(&[
        "query",
        "what-can",
        "--rules",
        &platform,
        "--tenant-rules",
        &tenants,
        "--principal",
        &spiffe("payments", "app"),
        "--json",
    ]);
    assert_eq!(code, 0);
    assert!(stdout.contains("payments/api"), "{stdout}");

    // The same platform rules, with and without the tenant's file: the tenant's access is new.
    let empty = dir.join("no-tenants");
    std::fs::create_dir(&empty).expect("empty tenant directory");
    let (code, stdout, stderr) = run(&[
        "diff",
        "--old",
        &platform,
        "--new",
        &platform,
        "--old-tenant-rules",
        &path_arg(&empty),
        "--new-tenant-rules",
        &tenants,
    ]);
    assert_eq!(code, 3, "newly allowed: {stdout}{stderr}");
    assert!(stdout.contains("payments/api"), "{stdout}");
}
