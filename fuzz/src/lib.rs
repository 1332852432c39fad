//! What the fuzz targets share: the rule set check_request_bytes decides against, and the seed corpora,
//! written from the project's fixtures by this crate's test (`WRITE_SEEDS=1 cargo test --lib`).

use std::sync::Arc;

use egress_authz::decision_log::DecisionLog;
use egress_authz::grpc::AuthzService;
use egress_authz::metrics::Metrics;
use egress_authz::policy::{Policy, SourceFile, compile};
use egress_authz::reload::RuleStore;

/// The rule file check_request_bytes decides against.
pub const CHECK_RULES: &str = include_str!("check_rules.yaml");
const CHECK_RULES_NAME: &str = "check_rules.yaml";

/// The compiled [`CHECK_RULES`].
pub fn check_policy() -> Policy {
    let files = [SourceFile {
        name: CHECK_RULES_NAME.to_owned(),
        text: CHECK_RULES.to_owned(),
    }];
    match compile(&files) {
        Ok(policy) => policy,
        Err(errors) => panic!("{CHECK_RULES_NAME} must compile: {errors:?}"),
    }
}

/// The Check service as the server builds it, over [`CHECK_RULES`], logging nothing. The store's path is
/// only used by reloads, which the targets never do.
pub fn check_service() -> AuthzService {
    let store = RuleStore::new(CHECK_RULES_NAME.into(), check_policy(), Metrics::disabled());
    let log = Arc::new(DecisionLog::disabled());
    AuthzService::new(Arc::new(store), log, Metrics::disabled())
}

#[cfg(test)]
mod seeds;
