use super::*;

const RULES: &str = "defaultAction: DENY\nrules:\n  - name: allow-google\n    action: ALLOW\n    to:\n      hosts: [developers.google.com]\n";

fn compiled(configuration: &[u8]) -> Policy {
    match load(configuration) {
        Rules::Compiled(policy) => *policy,
        Rules::Invalid(error) => panic!("expected valid rules, got: {error}"),
    }
}

fn invalid(configuration: &[u8]) -> String {
    match load(configuration) {
        Rules::Compiled(policy) => {
            panic!("expected a rejection, got {} rules", policy.rules().len())
        }
        Rules::Invalid(error) => error,
    }
}

#[test]
fn bare_rule_file_is_the_configuration() {
    let policy = compiled(RULES.as_bytes());
    assert_eq!(policy.rules().len(), 1);
    assert_eq!(policy.rules()[0].name, "allow-google");
    assert_eq!(policy.files(), [CONFIGURATION]);
}

#[test]
fn istio_plugin_config_carries_the_rule_file_text() {
    let json = serde_json::json!({ "rules": RULES }).to_string();
    let policy = compiled(json.as_bytes());
    assert_eq!(policy.rules()[0].name, "allow-google");
    assert_eq!(policy.files(), [PLUGIN_CONFIG_RULES]);
}

#[test]
fn istio_plugin_config_may_write_the_rules_as_a_mapping() {
    let json = serde_json::json!({
        "rules": {
            "defaultAction": "DENY",
            "rules": [{"name": "allow-yahoo", "action": "ALLOW", "to": {"hosts": ["developer.yahoo.com"]}}]
        },
        "other": "ignored"
    })
    .to_string();
    let policy = compiled(json.as_bytes());
    assert_eq!(policy.rules()[0].name, "allow-yahoo");
}

#[test]
fn a_rule_file_written_as_json_is_still_a_rule_file() {
    let json = serde_json::json!({
        "defaultAction": "ALLOW",
        "rules": [{"name": "deny-yahoo", "action": "DENY", "to": {"hosts": ["developer.yahoo.com"]}}]
    })
    .to_string();
    let policy = compiled(json.as_bytes());
    assert_eq!(policy.rules()[0].name, "deny-yahoo");
    assert_eq!(policy.files(), [CONFIGURATION]);
}

#[test]
fn compile_errors_are_located_in_the_configuration() {
    let error = invalid(b"defaultAction: DENY\nrules:\n  - name: Not_A_Name\n    action: ALLOW\n");
    assert!(error.starts_with("configuration:3:"), "{error}");
    let json = serde_json::json!({ "rules": "defaultAction: MAYBE\nrules: []\n" }).to_string();
    let error = invalid(json.as_bytes());
    assert!(error.starts_with("pluginConfig.rules:1:"), "{error}");
}

#[test]
fn empty_or_unreadable_configuration_is_invalid() {
    assert!(invalid(b"").contains("empty"));
    assert!(invalid(b"  \n").contains("empty"));
    assert!(invalid(b"\xff\xfe").contains("UTF-8"));
}

#[test]
fn root_id_says_which_filter_a_plugin_is() {
    assert_eq!(FilterKind::of_root_id("egress-authz"), FilterKind::Http);
    assert_eq!(
        FilterKind::of_root_id("egress-authz-http"),
        FilterKind::Http
    );
    assert_eq!(
        FilterKind::of_root_id("egress-authz-tcp"),
        FilterKind::Network
    );
    assert_eq!(
        FilterKind::of_root_id("egress-authz.network"),
        FilterKind::Network
    );
    assert_eq!(FilterKind::of_root_id(""), FilterKind::Http);
}
