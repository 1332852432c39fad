//! Fixtures shared by the policy's unit tests: rule text compiled or refused, the callers and hosts of
//! Istio's egress walkthrough, and checks shaped as its HTTP and TCP requests.

use super::*;

pub(super) const DEPLOY_RULES: &str = include_str!("../../deploy/rules/egress.yaml");
pub(super) const NAMESPACE_LEVEL: &str = include_str!("../../examples/rules/namespace-level.yaml");
pub(super) const SERVICE_ACCOUNT_LEVEL: &str =
    include_str!("../../examples/rules/service-account-level.yaml");
pub(super) const ALLOW_NOTHING: &str = include_str!("../../examples/rules/allow-nothing.yaml");

pub(super) const GOOGLE: &str = "developers.google.com";
pub(super) const YAHOO: &str = "developer.yahoo.com";
pub(super) const DEFAULT_SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
pub(super) const OTHERNS_SLEEP: &str = "spiffe://cluster.local/ns/otherns/sa/sleep";
pub(super) const SLEEP_GOOGLE: &str = "spiffe://cluster.local/ns/otherns/sa/sleep-google";
pub(super) const SLEEP_YAHOO: &str = "spiffe://cluster.local/ns/otherns/sa/sleep-yahoo";

pub(super) fn mk_policy(yaml: &str) -> Policy {
    compile(&[SourceFile {
        name: "rules.yaml".into(),
        text: yaml.into(),
    }])
    .unwrap_or_else(|errors| panic!("rules must compile: {errors:?}"))
}

pub(super) fn mk_errors(yaml: &str) -> Vec<CompileErrorKind> {
    match compile(&[SourceFile {
        name: "rules.yaml".into(),
        text: yaml.into(),
    }]) {
        Ok(_) => panic!("rules must not compile:\n{yaml}"),
        Err(errors) => errors.into_iter().map(|e| e.kind).collect(),
    }
}

pub(super) fn mk_errors_located(yaml: &str) -> Vec<CompileError> {
    compile(&[SourceFile {
        name: "rules.yaml".into(),
        text: yaml.into(),
    }])
    .unwrap_err()
}

pub(super) fn http<'a>(principal: &'a str, authority: &'a str) -> EgressRequest<'a> {
    EgressRequest {
        http: Some(HttpRequest {
            authority,
            method: "GET",
            path: "/",
        }),
        principal,
        port: Some(8080),
        ..Default::default()
    }
}

pub(super) fn tcp<'a>(principal: &'a str, sni: &'a str) -> EgressRequest<'a> {
    EgressRequest {
        http: None,
        principal,
        destination_service: sni,
        port: Some(8443),
        ..Default::default()
    }
}

/// (verdict, reason, deciding rule)
pub(super) fn outcome(
    policy: &Policy,
    request: &EgressRequest<'_>,
) -> (Verdict, Reason, Option<String>) {
    let d = policy.decide(request);
    (d.verdict, d.reason, d.rule.map(|r| r.name.clone()))
}

/// Callers without a usable identity: none, malformed, foreign trust domain.
pub(super) const ANONYMOUS_CALLERS: [&str; 4] = [
    "",
    "spiffe://cluster.local/ns/default",
    "not-a-spiffe-id",
    "spiffe://evil.example/ns/prod/sa/x",
];
