//! Tenant files: every way a file reaches beyond its namespace or its guardrail is refused and located,
//! and the composed policy decides for callers in and out of each tenant's namespace.

use crate::test_fixtures::{http, outcome, tcp};
use crate::*;

const PLATFORM: &str = "\
tenants:
  defaults: {allowedHosts: ['**.example.com'], allowedPorts: [443, 8080], maxRules: 5}
  payments: {allowedHosts: ['api.stripe.com', '*.stripe.com']}
  audit: {allowedPorts: [8443]}
rules:
- name: deny-evil
  action: DENY
  to: {hosts: [evil.example.com]}
";

const PAYMENTS_CALLER: &str = "spiffe://cluster.local/ns/payments/sa/checkout";
const SHOP_CALLER: &str = "spiffe://cluster.local/ns/shop/sa/web";

fn mk_platform(yaml: &str) -> Policy {
    compile(&[SourceFile {
        name: "platform.yaml".into(),
        text: yaml.into(),
    }])
    .unwrap_or_else(|errors| panic!("platform rules must compile: {errors:?}"))
}

fn mk_tenant_file(name: &str, yaml: &str) -> SourceFile {
    SourceFile {
        name: format!("tenants/{name}"),
        text: yaml.into(),
    }
}

fn mk_tenant(name: &str, yaml: &str) -> TenantRules {
    let platform = mk_platform(PLATFORM);
    compile_tenant(&mk_tenant_file(name, yaml), &platform.settings().tenants)
        .unwrap_or_else(|errors| panic!("{name} must compile: {errors:?}"))
}

/// The errors of a tenant file under [`PLATFORM`], as `(line, column, kind)`.
fn mk_tenant_errors(name: &str, yaml: &str) -> Vec<(usize, usize, CompileErrorKind)> {
    let platform = mk_platform(PLATFORM);
    match compile_tenant(&mk_tenant_file(name, yaml), &platform.settings().tenants) {
        Ok(_) => panic!("{name} must not compile:\n{yaml}"),
        Err(errors) => errors
            .into_iter()
            .map(|e| {
                assert_eq!(e.location.file, format!("tenants/{name}"));
                (e.location.line, e.location.column, e.kind)
            })
            .collect(),
    }
}

#[test]
fn namespace_names_are_rfc_1123_labels() {
    for valid in ["a", "payments", "team-a", "0ns", &"a".repeat(63)] {
        assert!(is_valid_namespace(valid), "{valid}");
    }
    for invalid in ["", "-a", "a-", "Payments", "a.b", "a_b", &"a".repeat(64)] {
        assert!(!is_valid_namespace(invalid), "{invalid}");
    }
    assert_eq!(namespace_of_file("dir/payments.yaml"), Some("payments"));
    assert_eq!(namespace_of_file("payments.yml"), Some("payments"));
    assert_eq!(namespace_of_file("Payments.yaml"), None);
    assert_eq!(namespace_of_file("team.a.yaml"), None);
    assert_eq!(namespace_of_file("payments.json"), None);
}

#[test]
fn namespace_entries_override_the_defaults_field_by_field() {
    let platform = mk_platform(PLATFORM);
    let guardrails = &platform.settings().tenants;
    let payments = guardrails.for_namespace("payments").unwrap();
    assert_eq!(
        payments.allowed_hosts.as_deref().unwrap(),
        [
            HostPattern::parse("api.stripe.com").unwrap(),
            HostPattern::parse("*.stripe.com").unwrap()
        ]
    );
    assert_eq!(payments.allowed_ports.as_deref(), Some(&[443, 8080][..]));
    assert_eq!(payments.max_rules, Some(5));
    let audit = guardrails.for_namespace("audit").unwrap();
    assert_eq!(
        audit.allowed_hosts.as_deref().unwrap(),
        [HostPattern::parse("**.example.com").unwrap()]
    );
    assert_eq!(audit.allowed_ports.as_deref(), Some(&[8443][..]));
    // Any other namespace gets the defaults; without defaults, no namespace but those listed.
    assert_eq!(
        guardrails.for_namespace("shop"),
        guardrails.for_namespace("shop2")
    );
    let listed_only = mk_platform("tenants:\n  payments: {allowedHosts: ['*']}\n");
    assert!(
        listed_only
            .settings()
            .tenants
            .for_namespace("payments")
            .is_some()
    );
    assert_eq!(listed_only.settings().tenants.for_namespace("shop"), None);
    assert!(mk_platform("rules: []\n").settings().tenants.is_empty());
}

#[test]
fn invalid_guardrails_are_located_in_the_platform_file() {
    let errors = |files: &[&str]| -> Vec<(String, usize, CompileErrorKind)> {
        let files: Vec<SourceFile> = files
            .iter()
            .enumerate()
            .map(|(i, text)| SourceFile {
                name: format!("p{i}.yaml"),
                text: (*text).into(),
            })
            .collect();
        compile(&files)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.location.file, e.location.line, e.kind))
            .collect()
    };
    let bad_key = errors(&["rules: []\ntenants:\n  Bad_NS: {allowedHosts: ['*']}\n"]);
    assert!(
        matches!(&bad_key[..], [(_, 3, CompileErrorKind::InvalidTenantNamespace(ns))] if ns == "Bad_NS"),
        "{bad_key:?}"
    );
    let bad_host = errors(&["tenants:\n  defaults:\n    allowedHosts: ['a.*.com']\n"]);
    assert!(
        matches!(
            &bad_host[..],
            [(
                _,
                3,
                CompileErrorKind::InvalidValue {
                    field: "tenants.allowedHosts",
                    ..
                }
            )]
        ),
        "{bad_host:?}"
    );
    let bad_port = errors(&["tenants:\n  defaults: {allowedHosts: ['*'], allowedPorts: [0]}\n"]);
    assert!(
        matches!(
            &bad_port[..],
            [(
                _,
                2,
                CompileErrorKind::InvalidValue {
                    field: "tenants.allowedPorts",
                    ..
                }
            )]
        ),
        "{bad_port:?}"
    );
    let unknown = errors(&["tenants:\n  defaults: {allowedHost: ['*']}\n"]);
    assert!(
        matches!(&unknown[..], [(_, 2, CompileErrorKind::Syntax(m))] if m.contains("unknown field")),
        "{unknown:?}"
    );
    let twice = errors(&[
        "tenants:\n  defaults: {allowedHosts: ['*']}\n",
        "rules: []\ntenants:\n  defaults: {allowedHosts: ['*']}\n",
    ]);
    assert!(
        matches!(
            &twice[..],
            [(file, 2, CompileErrorKind::ConflictingSetting { setting: "tenants", other })]
                if file == "p1.yaml" && other.file == "p0.yaml"
        ),
        "{twice:?}"
    );
}

#[test]
fn file_names_and_namespaces_without_guardrails_are_refused() {
    assert_eq!(
        mk_tenant_errors("Payments.yaml", "rules: []\n"),
        [(1, 1, CompileErrorKind::InvalidTenantFileName)]
    );
    assert_eq!(
        mk_tenant_errors("a_b.yml", "rules: []\n"),
        [(1, 1, CompileErrorKind::InvalidTenantFileName)]
    );
    let listed_only = mk_platform("tenants:\n  payments: {allowedHosts: ['*']}\n");
    let errors = compile_tenant(
        &mk_tenant_file("shop.yaml", "rules: []\n"),
        &listed_only.settings().tenants,
    )
    .unwrap_err();
    assert_eq!(
        errors[0].kind,
        CompileErrorKind::NoGuardrail("shop".to_owned())
    );
}

#[test]
fn top_level_settings_in_a_tenant_file_are_errors_at_their_key() {
    let errors = mk_tenant_errors(
        "shop.yaml",
        "rules: []\ndefaultAction: ALLOW\ntrustDomains: [evil.local]\n\
         requireSniMatchesHost: false\ntenants:\n  shop: {allowedHosts: ['*']}\n",
    );
    assert_eq!(
        errors,
        [
            (2, 1, CompileErrorKind::SettingInTenantFile("defaultAction")),
            (3, 1, CompileErrorKind::SettingInTenantFile("trustDomains")),
            (
                4,
                1,
                CompileErrorKind::SettingInTenantFile("requireSniMatchesHost")
            ),
            (5, 1, CompileErrorKind::SettingInTenantFile("tenants")),
        ]
    );
}

#[test]
fn more_rules_than_max_rules_is_an_error_at_rules() {
    let rules: String = (0..6)
        .map(|i| format!("- name: r{i}\n  action: DENY\n"))
        .collect();
    let errors = mk_tenant_errors("shop.yaml", &format!("# six rules\nrules:\n{rules}"));
    assert_eq!(
        errors,
        [(2, 1, CompileErrorKind::TooManyRules { count: 6, max: 5 })]
    );
}

#[test]
fn caller_conditions_naming_another_namespace_are_errors_at_the_value() {
    let cases: &[(&str, &str, &str)] = &[
        ("from.namespaces", "namespaces: [shop]", "shop"),
        ("from.namespaces", "namespaces: ['pay*']", "pay*"),
        ("from.notNamespaces", "notNamespaces: [other]", "other"),
        (
            "from.serviceAccounts",
            "serviceAccounts: [shop/web]",
            "shop/web",
        ),
        (
            "from.serviceAccounts",
            "serviceAccounts: ['*/checkout']",
            "*/checkout",
        ),
        (
            "from.notServiceAccounts",
            "notServiceAccounts: ['pay*/x']",
            "pay*/x",
        ),
        (
            "from.principals",
            "principals: [cluster.local/ns/shop/sa/web]",
            "cluster.local/ns/shop/sa/web",
        ),
        (
            "from.principals",
            "principals: ['spiffe://*/ns/shop/sa/web']",
            "spiffe://*/ns/shop/sa/web",
        ),
        ("from.principals", "principals: ['*']", "*"),
        (
            "from.principals",
            "principals: ['cluster.local/ns/payments*']",
            "cluster.local/ns/payments*",
        ),
        (
            "from.notPrincipals",
            "notPrincipals: ['td/ns/shop/sa/*']",
            "td/ns/shop/sa/*",
        ),
    ];
    for &(field, condition, value) in cases {
        let yaml = format!(
            "rules:\n- name: ok\n  action: DENY\n- name: bad\n  action: DENY\n  from: {{{condition}}}\n"
        );
        let errors = mk_tenant_errors("payments.yaml", &yaml);
        let column = yaml.lines().nth(5).unwrap().find(value).unwrap() + 1;
        assert_eq!(errors.len(), 1, "{condition}: {errors:?}");
        let (line, col, kind) = &errors[0];
        assert_eq!((*line, *col), (6, column), "{condition}");
        assert!(
            matches!(kind, CompileErrorKind::OtherNamespace { field: f, value: v, namespace, .. }
                if *f == field && v == value && namespace == "payments"),
            "{condition}: {kind:?}"
        );
    }
}

#[test]
fn caller_conditions_within_the_namespace_compile() {
    let tenant = mk_tenant(
        "payments.yaml",
        "rules:\n- name: own\n  action: DENY\n  from:\n    namespaces: [payments]\n    \
         notNamespaces: [payments]\n    serviceAccounts: [checkout, payments/web, 'payments/batch-*']\n    \
         principals: [cluster.local/ns/payments/sa/a, 'spiffe://*/ns/payments/sa/b', \
         'cluster.local/ns/payments/sa/*']\n    notPrincipals: ['*.local/ns/payments/sa/c']\n",
    );
    let from = tenant.rules()[0].from.as_ref().unwrap();
    assert_eq!(
        from.service_accounts[0],
        ServiceAccountPattern::parse("payments/checkout").unwrap(),
        "a bare service-account name is the namespace's"
    );
}

#[test]
fn allow_rules_beyond_the_guardrail_are_errors_at_the_value() {
    type Expectation = fn(&CompileErrorKind) -> bool;
    let cases: &[(&str, &str, Option<&str>, Expectation)] = &[
        (
            "payments.yaml",
            "to: {hosts: [api.paypal.com], ports: [443]}",
            Some("api.paypal.com"),
            |k| matches!(k, CompileErrorKind::OutsideGuardrail { field: "to.hosts", value, .. } if value == "api.paypal.com"),
        ),
        (
            "payments.yaml",
            "to: {hosts: ['**.stripe.com'], ports: [443]}",
            Some("**.stripe.com"),
            |k| matches!(k, CompileErrorKind::OutsideGuardrail { field: "to.hosts", value, .. } if value == "**.stripe.com"),
        ),
        ("payments.yaml", "to: {ports: [443]}", None, |k| {
            matches!(
                k,
                CompileErrorKind::OutsideGuardrail {
                    field: "to.hosts",
                    ..
                }
            )
        }),
        (
            "payments.yaml",
            "to: {hosts: [api.stripe.com], ports: [8443]}",
            Some("8443"),
            |k| matches!(k, CompileErrorKind::OutsideGuardrail { field: "to.ports", value, .. } if value == "8443"),
        ),
        (
            "payments.yaml",
            "to: {hosts: [api.stripe.com]}",
            None,
            |k| {
                matches!(
                    k,
                    CompileErrorKind::OutsideGuardrail {
                        field: "to.ports",
                        ..
                    }
                )
            },
        ),
        (
            "shop.yaml",
            "to: {hosts: ['*'], ports: [443]}",
            Some("*"),
            |k| matches!(k, CompileErrorKind::OutsideGuardrail { field: "to.hosts", value, .. } if value == "*"),
        ),
        (
            "shop.yaml",
            "dryRun: true\n  to: {hosts: [example.com], ports: [443]}",
            Some("example.com"),
            |k| {
                matches!(
                    k,
                    CompileErrorKind::OutsideGuardrail {
                        field: "to.hosts",
                        ..
                    }
                )
            },
        ),
    ];
    for &(file, body, value, expected) in cases {
        let yaml = format!("rules:\n- name: ok\n  action: DENY\n- name: bad\n  {body}\n");
        let errors = mk_tenant_errors(file, &yaml);
        assert_eq!(errors.len(), 1, "{file} {body}: {errors:?}");
        let (line, column, kind) = &errors[0];
        assert!(expected(kind), "{file} {body}: {kind:?}");
        let expected_at = match value {
            Some(value) => {
                let offset = yaml.rfind(value).unwrap();
                let line = yaml[..offset].matches('\n').count() + 1;
                let line_start = yaml[..offset].rfind('\n').map_or(0, |i| i + 1);
                (line, offset - line_start + 1)
            }
            // Something the rule leaves out is reported at the rule.
            None => (4, 3),
        };
        assert_eq!((*line, *column), expected_at, "{file} {body}");
    }
}

#[test]
fn a_namespace_without_allowed_hosts_may_write_deny_rules_only() {
    let platform = mk_platform("tenants:\n  defaults: {allowedPorts: [443]}\n");
    let guardrails = &platform.settings().tenants;
    let allow = mk_tenant_file(
        "shop.yaml",
        "rules:\n- name: a\n  to: {hosts: [a.example.com], ports: [443]}\n",
    );
    let errors = compile_tenant(&allow, guardrails).unwrap_err();
    assert_eq!(
        errors[0].kind,
        CompileErrorKind::DenyOnlyTenant {
            namespace: "shop".to_owned()
        }
    );
    // DENY rules are never checked against the guardrail: any host, any port.
    let deny = mk_tenant_file("shop.yaml", "rules:\n- name: d\n  action: DENY\n");
    assert_eq!(compile_tenant(&deny, guardrails).unwrap().rules().len(), 1);
}

#[test]
fn tenant_rules_are_named_after_their_namespace() {
    let payments = mk_tenant(
        "payments.yaml",
        "rules:\n- name: stripe\n  to: {hosts: [api.stripe.com], ports: [443]}\n",
    );
    let shop = mk_tenant(
        "shop.yml",
        "rules:\n- name: stripe\n  to: {hosts: [stripe.example.com], ports: [443]}\n",
    );
    assert_eq!(payments.rules()[0].name, "payments/stripe");
    assert_eq!(shop.rules()[0].name, "shop/stripe");
    let policy = mk_platform(PLATFORM).with_tenants([&shop, &payments]);
    let names: Vec<&str> = policy.rules().iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["deny-evil", "payments/stripe", "shop/stripe"]);
    let files = policy.files();
    assert_eq!(
        files,
        ["platform.yaml", "tenants/payments.yaml", "tenants/shop.yml"]
    );
    for rule in policy.rules() {
        let owner = rule.name.split('/').next().unwrap();
        assert!(files[rule.origin.file].contains(owner) || rule.name == "deny-evil");
    }
    // The written name follows the usual grammar.
    let errors = mk_tenant_errors("shop.yaml", "rules:\n- name: Bad/Name\n  action: DENY\n");
    assert_eq!(errors, [(2, 3, CompileErrorKind::InvalidRuleName)]);
}

#[test]
fn tenant_rules_decide_only_for_callers_of_their_namespace() {
    let payments = mk_tenant(
        "payments.yaml",
        "rules:\n- name: stripe\n  to: {hosts: [api.stripe.com], ports: [443]}\n\
         - name: no-batch\n  action: DENY\n  from: {serviceAccounts: [batch]}\n",
    );
    let shop = mk_tenant(
        "shop.yaml",
        "rules:\n- name: catalog\n  to: {hosts: ['*.example.com'], ports: [443]}\n",
    );
    let policy = mk_platform(PLATFORM).with_tenants([&payments, &shop]);
    let at = |principal, host| {
        let mut request = http(principal, host);
        request.port = Some(443);
        outcome(&policy, &request)
    };
    let allowed = |rule: &str| (Verdict::Allow, Reason::AllowedByRule, Some(rule.to_owned()));
    assert_eq!(
        at(PAYMENTS_CALLER, "api.stripe.com"),
        allowed("payments/stripe")
    );
    assert_eq!(at(SHOP_CALLER, "api.stripe.com").0, Verdict::Deny);
    assert_eq!(at(SHOP_CALLER, "www.example.com"), allowed("shop/catalog"));
    assert_eq!(at(PAYMENTS_CALLER, "www.example.com").0, Verdict::Deny);
    // A platform DENY wins over a tenant ALLOW.
    let deny_evil = at(SHOP_CALLER, "evil.example.com");
    assert_eq!(
        (deny_evil.0, deny_evil.2.as_deref()),
        (Verdict::Deny, Some("deny-evil"))
    );
    // A tenant DENY narrows its own namespace only.
    let batch = "spiffe://cluster.local/ns/payments/sa/batch";
    let batch_outcome = at(batch, "api.stripe.com");
    assert_eq!(
        (batch_outcome.0, batch_outcome.2.as_deref()),
        (Verdict::Deny, Some("payments/no-batch"))
    );
    let shop_batch = "spiffe://cluster.local/ns/shop/sa/batch";
    assert_eq!(at(shop_batch, "www.example.com"), allowed("shop/catalog"));
    // Callers without a trusted identity match no tenant rule.
    for anonymous in ["", "spiffe://other.domain/ns/payments/sa/checkout"] {
        assert_eq!(
            at(anonymous, "api.stripe.com").0,
            Verdict::Deny,
            "{anonymous:?}"
        );
    }
    // TCP checks are scoped the same way.
    let mut tcp_request = tcp(PAYMENTS_CALLER, "api.stripe.com");
    tcp_request.port = Some(443);
    assert_eq!(outcome(&policy, &tcp_request), allowed("payments/stripe"));
    let mut shop_tcp = tcp(SHOP_CALLER, "api.stripe.com");
    shop_tcp.port = Some(443);
    assert_eq!(outcome(&policy, &shop_tcp).0, Verdict::Deny);
}

#[test]
fn composed_digest_covers_every_tenant_and_is_the_platforms_without_them() {
    let platform = mk_platform(PLATFORM);
    assert_eq!(platform.with_tenants([]).digest(), platform.digest());
    let one = mk_tenant("shop.yaml", "rules:\n- name: d\n  action: DENY\n");
    let other = mk_tenant("shop.yaml", "rules:\n- name: e\n  action: DENY\n");
    let with_one = platform.with_tenants([&one]);
    assert_ne!(with_one.digest(), platform.digest());
    assert_ne!(with_one.digest(), platform.with_tenants([&other]).digest());
    assert_eq!(with_one.digest(), platform.with_tenants([&one]).digest());
}
