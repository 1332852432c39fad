//! The admin `Explain` RPC: the same decision as Check, with a per-rule trace and no side effects.

use std::sync::Arc;

use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::policy::Explanation;
use crate::reload::RuleStore;

/// Generated types of `proto/egress_authz/admin/v1/admin.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    tonic::include_proto!("egress_authz.admin.v1");

    /// Descriptors for gRPC reflection, so grpcurl can call Explain without proto files.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("admin_descriptor");
}

/// Serves Explain from the current rule set.
#[derive(Debug, Clone)]
pub(crate) struct AdminService {
    store: Arc<RuleStore>,
}

impl AdminService {
    /// An admin service over `store`.
    pub(crate) fn new(store: Arc<RuleStore>) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn explain(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        // The admin message is a wire-compatible subset of Envoy's: re-decode its bytes as the real type
        // so Explain runs exactly the conversion Check runs.
        let bytes = request.get_ref().encode_to_vec();
        let check =
            envoy_types::pb::envoy::service::auth::v3::CheckRequest::decode(bytes.as_slice())
                .map_err(|e| Status::invalid_argument(format!("not a CheckRequest: {e}")))?;
        let live = self.store.current();
        let policy = &live.policy;
        let egress = super::convert::egress_request(&check);
        let explanation = policy.explain(&egress);
        Ok(Response::new(to_explain_response(
            &explanation,
            egress.protocol().as_str(),
            policy.digest(),
        )))
    }
}

/// Converts an explanation to its wire form.
fn to_explain_response(
    explanation: &Explanation<'_>,
    protocol: &str,
    digest: &str,
) -> pb::ExplainResponse {
    let decision = &explanation.decision;
    pb::ExplainResponse {
        decision: decision.verdict.as_str().to_owned(),
        reason: decision.reason.as_str().to_owned(),
        rule: decision.rule.map(|r| r.name.clone()).unwrap_or_default(),
        dry_run: decision.dry_run.map(|d| pb::DryRun {
            rule: d.rule.name.clone(),
            decision: d.verdict.as_str().to_owned(),
        }),
        protocol: protocol.to_owned(),
        host: explanation.host.clone().unwrap_or_default(),
        namespace: explanation
            .identity
            .as_ref()
            .map(|i| i.namespace.clone())
            .unwrap_or_default(),
        service_account: explanation
            .identity
            .as_ref()
            .map(|i| i.service_account.clone())
            .unwrap_or_default(),
        identity_problem: explanation.identity_problem.unwrap_or_default().to_owned(),
        rules: explanation
            .rules
            .iter()
            .map(|t| pb::RuleResult {
                name: t.rule.name.clone(),
                action: t.rule.action.as_rule_str().to_owned(),
                dry_run: t.rule.dry_run,
                matched: t.outcome.is_ok(),
                failed_condition: t
                    .outcome
                    .err()
                    .map(|c| c.as_str().to_owned())
                    .unwrap_or_default(),
            })
            .collect(),
        rules_sha256: digest.to_owned(),
    }
}

/// gRPC server reflection for the admin API and health, in both protocol versions: `v1` for current
/// clients and `v1alpha` for older ones (grpcurl before 1.8.8 speaks only `v1alpha`).
pub(crate) fn reflection_services() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}
