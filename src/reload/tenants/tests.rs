//! The tenant directory under reloads: one bad file is rejected alone, at startup too; a rejected file
//! keeps its previous rules unless new guardrails rule them out; a deleted file takes its rules away.

use std::path::Path;

use crate::metrics::Metrics;
use crate::policy::{EgressRequest, HttpRequest, Verdict};
use crate::reload::{LoadError, ReloadOutcome, RuleStore, load_policy};

const PLATFORM: &str = "\
tenants:
  defaults: {allowedHosts: ['**.example.com'], allowedPorts: [443]}
rules:
- name: deny-evil
  action: DENY
  to: {hosts: [evil.example.com]}
";

/// The platform rules with `payments` limited to `api.example.com`.
const NARROWER_PLATFORM: &str = "\
tenants:
  defaults: {allowedHosts: ['**.example.com'], allowedPorts: [443]}
  payments: {allowedHosts: [api.example.com]}
rules: []
";

fn allowing(rule: &str, host: &str) -> String {
    format!("rules:\n- name: {rule}\n  to: {{hosts: ['{host}'], ports: [443]}}\n")
}

struct Fixture {
    _root: tempfile::TempDir,
    platform: std::path::PathBuf,
    tenants: std::path::PathBuf,
}

impl Fixture {
    fn new(tenant_files: &[(&str, &str)]) -> Self {
        let root = tempfile::tempdir().unwrap();
        let platform = root.path().join("platform.yaml");
        std::fs::write(&platform, PLATFORM).unwrap();
        let tenants = root.path().join("tenants");
        std::fs::create_dir(&tenants).unwrap();
        for (name, text) in tenant_files {
            std::fs::write(tenants.join(name), text).unwrap();
        }
        Self {
            _root: root,
            platform,
            tenants,
        }
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.tenants.join(name), text).unwrap();
    }

    fn store(&self, metrics: &Metrics) -> RuleStore {
        RuleStore::with_tenants(
            self.platform.clone(),
            load_policy(&self.platform).unwrap(),
            self.tenants.clone(),
            metrics.clone(),
        )
        .unwrap()
    }
}

/// Whether a caller of `namespace` may reach `host` on 443 under the store's live rules, and the rule.
fn decide(store: &RuleStore, namespace: &str, host: &str) -> (Verdict, Option<String>) {
    let principal = format!("spiffe://cluster.local/ns/{namespace}/sa/app");
    let request = EgressRequest {
        http: Some(HttpRequest {
            authority: host,
            method: "GET",
            path: "/",
        }),
        principal: &principal,
        port: Some(443),
        ..Default::default()
    };
    let live = store.current();
    let decision = live.policy.decide(&request);
    (
        decision.verdict,
        decision.rule.map(|rule| rule.name.clone()),
    )
}

fn allowed_by(rule: &str) -> (Verdict, Option<String>) {
    (Verdict::Allow, Some(rule.to_owned()))
}

fn reload_failures(metrics: &Metrics) -> usize {
    let text = metrics.render("", false, &[]);
    let line = text
        .lines()
        .find(|l| l.starts_with("egress_authz_reloads_total{result=\"failure\"}"))
        .unwrap();
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn startup_serves_the_platform_and_the_valid_tenants_and_reports_the_bad_one() {
    let fixture = Fixture::new(&[
        ("payments.yaml", &allowing("api", "api.example.com")),
        ("shop.yaml", "rules:\n- name: any\n  to: {hosts: ['*']}\n"),
        ("Bad_Name.yaml", "rules: []\n"),
    ]);
    let metrics = Metrics::prometheus(false).unwrap();
    let store = fixture.store(&metrics);
    assert_eq!(
        decide(&store, "payments", "api.example.com"),
        allowed_by("payments/api")
    );
    assert_eq!(decide(&store, "shop", "api.example.com").0, Verdict::Deny);
    let status = store.status();
    let by_name = |name: &str| {
        status
            .tenants
            .iter()
            .find(|t| t.namespace == name)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("payments").rules, 1);
    assert!(by_name("payments").last_error.is_none());
    assert!(by_name("payments").sha256.is_some());
    let shop = by_name("shop");
    assert_eq!((shop.rules, shop.sha256), (0, None));
    assert!(shop.last_error.unwrap().contains("to.hosts"));
    assert!(by_name("Bad_Name").last_error.is_some());
    assert_eq!(reload_failures(&metrics), 2);
    assert!(status.last_error.is_none(), "the platform rules are fine");
}

#[test]
fn a_rejected_tenant_file_keeps_its_previous_rules_and_others_apply() {
    let fixture = Fixture::new(&[
        ("payments.yaml", &allowing("api", "api.example.com")),
        ("shop.yaml", &allowing("web", "www.example.com")),
    ]);
    let metrics = Metrics::prometheus(false).unwrap();
    let store = fixture.store(&metrics);
    fixture.write("payments.yaml", &allowing("api", "api.stripe.com"));
    fixture.write("shop.yml.tmp", "not a tenant file");
    fixture.write("shop.yaml", &allowing("web2", "www2.example.com"));
    assert!(matches!(store.reload(), ReloadOutcome::Applied { .. }));
    assert_eq!(
        decide(&store, "payments", "api.example.com"),
        allowed_by("payments/api")
    );
    assert_eq!(
        decide(&store, "shop", "www2.example.com"),
        allowed_by("shop/web2")
    );
    assert_eq!(decide(&store, "shop", "www.example.com").0, Verdict::Deny);
    assert_eq!(reload_failures(&metrics), 1);
    // The same bad content seen again is not a new rejection.
    assert!(matches!(store.reload(), ReloadOutcome::Unchanged));
    assert_eq!(reload_failures(&metrics), 1);
    let payments = store.status().tenants[0].clone();
    assert_eq!(payments.namespace, "payments");
    assert_eq!(payments.rules, 1);
    assert!(payments.last_error.unwrap().contains("api.stripe.com"));
    // Fixed: the error clears.
    fixture.write("payments.yaml", &allowing("api", "api.example.com"));
    assert!(matches!(store.reload(), ReloadOutcome::Unchanged));
    assert!(store.status().tenants[0].last_error.is_none());
}

#[test]
fn new_guardrails_that_rule_out_a_tenants_rules_stop_them_and_spare_the_others() {
    let fixture = Fixture::new(&[
        ("payments.yaml", &allowing("www", "www.example.com")),
        ("shop.yaml", &allowing("web", "www.example.com")),
    ]);
    let metrics = Metrics::prometheus(false).unwrap();
    let store = fixture.store(&metrics);
    assert_eq!(
        decide(&store, "payments", "www.example.com"),
        allowed_by("payments/www")
    );
    std::fs::write(&fixture.platform, NARROWER_PLATFORM).unwrap();
    assert!(matches!(store.reload(), ReloadOutcome::Applied { .. }));
    // Fail closed: the rules accepted under the wider guardrail no longer serve.
    assert_eq!(
        decide(&store, "payments", "www.example.com").0,
        Verdict::Deny
    );
    assert_eq!(
        decide(&store, "shop", "www.example.com"),
        allowed_by("shop/web")
    );
    let payments = store.status().tenants[0].clone();
    assert_eq!((payments.rules, payments.sha256), (0, None));
    assert!(payments.last_error.unwrap().contains("www.example.com"));
    assert_eq!(reload_failures(&metrics), 1);
}

#[test]
fn a_rejected_file_keeps_previous_rules_that_still_fit_new_guardrails() {
    let fixture = Fixture::new(&[("payments.yaml", &allowing("api", "api.example.com"))]);
    let metrics = Metrics::prometheus(false).unwrap();
    let store = fixture.store(&metrics);
    fixture.write("payments.yaml", "rules: [\n");
    std::fs::write(&fixture.platform, NARROWER_PLATFORM).unwrap();
    assert!(matches!(store.reload(), ReloadOutcome::Applied { .. }));
    assert_eq!(
        decide(&store, "payments", "api.example.com"),
        allowed_by("payments/api")
    );
}

#[test]
fn a_deleted_tenant_file_takes_its_rules_away() {
    let fixture = Fixture::new(&[
        ("payments.yaml", &allowing("api", "api.example.com")),
        ("shop.yaml", &allowing("web", "www.example.com")),
    ]);
    let metrics = Metrics::prometheus(false).unwrap();
    let store = fixture.store(&metrics);
    std::fs::remove_file(fixture.tenants.join("payments.yaml")).unwrap();
    assert!(matches!(store.reload(), ReloadOutcome::Applied { .. }));
    assert_eq!(
        decide(&store, "payments", "api.example.com").0,
        Verdict::Deny
    );
    let names: Vec<String> = store
        .status()
        .tenants
        .into_iter()
        .map(|t| t.namespace)
        .collect();
    assert_eq!(names, ["shop"]);
}

#[test]
fn an_invalid_platform_file_rejects_the_whole_reload() {
    let fixture = Fixture::new(&[("payments.yaml", &allowing("api", "api.example.com"))]);
    let metrics = Metrics::prometheus(false).unwrap();
    let store = fixture.store(&metrics);
    std::fs::write(&fixture.platform, "rules: [\n").unwrap();
    fixture.write("payments.yaml", &allowing("web", "www.example.com"));
    assert!(matches!(store.reload(), ReloadOutcome::Failed(_)));
    assert!(matches!(store.reload(), ReloadOutcome::Unchanged));
    assert_eq!(
        decide(&store, "payments", "api.example.com"),
        allowed_by("payments/api")
    );
    std::fs::write(&fixture.platform, PLATFORM).unwrap();
    assert!(matches!(store.reload(), ReloadOutcome::Applied { .. }));
    assert_eq!(
        decide(&store, "payments", "www.example.com"),
        allowed_by("payments/web")
    );
}

#[test]
fn two_files_for_one_namespace_are_both_rejected() {
    let fixture = Fixture::new(&[
        ("payments.yaml", &allowing("api", "api.example.com")),
        ("payments.yml", &allowing("web", "www.example.com")),
    ]);
    let metrics = Metrics::prometheus(false).unwrap();
    let store = fixture.store(&metrics);
    assert_eq!(
        decide(&store, "payments", "api.example.com").0,
        Verdict::Deny
    );
    assert_eq!(
        decide(&store, "payments", "www.example.com").0,
        Verdict::Deny
    );
    let error = store.status().tenants[0].last_error.clone().unwrap();
    assert!(error.contains("keep one"), "{error}");
}

#[test]
fn an_unreadable_tenant_entry_fails_that_tenant_only() {
    let fixture = Fixture::new(&[("shop.yaml", &allowing("web", "www.example.com"))]);
    std::os::unix::fs::symlink(
        fixture.tenants.join("gone.yaml"),
        fixture.tenants.join("payments.yaml"),
    )
    .unwrap();
    let metrics = Metrics::prometheus(false).unwrap();
    let store = fixture.store(&metrics);
    assert_eq!(
        decide(&store, "shop", "www.example.com"),
        allowed_by("shop/web")
    );
    let payments = store.status().tenants[0].clone();
    assert_eq!(payments.namespace, "payments");
    assert!(payments.last_error.unwrap().contains("symlink"));
}

#[test]
fn a_tenant_directory_that_cannot_be_listed_fails_startup_and_later_keeps_every_tenant() {
    let fixture = Fixture::new(&[("shop.yaml", &allowing("web", "www.example.com"))]);
    let missing = fixture.tenants.with_file_name("missing");
    let started = RuleStore::with_tenants(
        fixture.platform.clone(),
        load_policy(&fixture.platform).unwrap(),
        missing,
        Metrics::disabled(),
    );
    assert!(matches!(started, Err(LoadError::Io { .. })));

    let metrics = Metrics::prometheus(false).unwrap();
    let store = fixture.store(&metrics);
    let moved = fixture.tenants.with_file_name("moved");
    std::fs::rename(&fixture.tenants, &moved).unwrap();
    store.reload();
    assert_eq!(
        decide(&store, "shop", "www.example.com"),
        allowed_by("shop/web")
    );
    assert!(store.status().tenant_dir_error.is_some());
    assert_eq!(reload_failures(&metrics), 1);
    std::fs::rename(&moved, &fixture.tenants).unwrap();
    store.reload();
    assert!(store.status().tenant_dir_error.is_none());
    assert!(Path::new(&fixture.tenants).is_dir());
}
