//! CheckRequest ⇄ policy types. Reads fields, never interprets them: all semantics live in `policy`.

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, address};
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
    attribute_context::Peer, check_response::HttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode as HttpStatusCode};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;

use crate::policy::{Decision, EgressRequest, HttpRequest, Protocol, Reason, Verdict};

/// Response header that tells the caller (and the gateway's access log) why a request was denied.
pub const REASON_HEADER: &str = "x-egress-authz-reason";
/// Envoy's request-id header, carried into decision logs so they join with the gateway's access log.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Dynamic-metadata keys, read by access logs as `%DYNAMIC_METADATA(envoy.filters.http.ext_authz:KEY)%`.
pub mod metadata_keys {
    /// `allow` or `deny`.
    pub const DECISION: &str = "decision";
    /// The reason code.
    pub const REASON: &str = "reason";
    /// The deciding rule; absent when none decided.
    pub const RULE: &str = "rule";
    /// The dry-run rule that matched, when one did.
    pub const DRY_RUN_RULE: &str = "dry_run_rule";
    /// What dry-run rules would have decided (`allow`/`deny`), when one matched.
    pub const DRY_RUN_DECISION: &str = "dry_run_decision";
}

// google.rpc.Code values (https://github.com/googleapis/googleapis/blob/master/google/rpc/code.proto).
const RPC_OK: i32 = 0;
const RPC_PERMISSION_DENIED: i32 = 7;

/// Borrows the fields the policy needs. Missing messages read as empty, which the policy turns into a
/// deny with a reason; nothing here can fail, so no check is ever answered with a gRPC error.
pub fn egress_request(check: &CheckRequest) -> EgressRequest<'_> {
    let attributes = check.attributes.as_ref();
    let source = attributes.and_then(|a| a.source.as_ref());
    let destination = attributes.and_then(|a| a.destination.as_ref());
    let http = attributes
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .map(|http| HttpRequest {
            authority: if http.host.is_empty() {
                http.headers.get(":authority").map_or("", String::as_str)
            } else {
                &http.host
            },
            method: &http.method,
            path: if http.path.is_empty() {
                http.headers.get(":path").map_or("", String::as_str)
            } else {
                &http.path
            },
        });
    EgressRequest {
        http,
        principal: source.map_or("", |p| p.principal.as_str()),
        destination_service: destination.map_or("", |p| p.service.as_str()),
        sni: attributes
            .and_then(|a| a.tls_session.as_ref())
            .map_or("", |t| t.sni.as_str()),
        port: destination.and_then(peer_port),
    }
}

/// Envoy's `x-request-id`, when the check is HTTP and has one.
pub fn request_id(check: &CheckRequest) -> Option<&str> {
    check
        .attributes
        .as_ref()
        .and_then(|a: &AttributeContext| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .and_then(|h| h.headers.get(REQUEST_ID_HEADER))
        .map(String::as_str)
}

fn peer_port(peer: &Peer) -> Option<u16> {
    match peer.address.as_ref()?.address.as_ref()? {
        address::Address::SocketAddress(socket) => match socket.port_specifier.as_ref()? {
            envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(
                p,
            ) => u16::try_from(*p).ok(),
            _ => None,
        },
        _ => None,
    }
}

/// The answer Envoy gets: the decision in `status` (the RPC itself always succeeds), a 403 with a
/// reason for HTTP denies, and the decision in dynamic metadata for the gateway's access log.
pub fn to_check_response(decision: &Decision<'_>, protocol: Protocol) -> CheckResponse {
    let rule = decision.rule.map(|r| r.name.as_str());
    let (code, message) = match decision.verdict {
        Verdict::Allow => (RPC_OK, String::new()),
        Verdict::Deny => (
            RPC_PERMISSION_DENIED,
            deny_text(decision.reason.as_str(), rule),
        ),
    };
    let http_response = match (decision.verdict, protocol) {
        // TCP checks have no HTTP response; Envoy closes the connection on a deny.
        (_, Protocol::Tcp) => None,
        // No headers on allow: the upstream is an external host and must learn nothing from us.
        (Verdict::Allow, Protocol::Http) => {
            Some(HttpResponse::OkResponse(OkHttpResponse::default()))
        }
        (Verdict::Deny, Protocol::Http) => Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: deny_status(decision.reason).into(),
            }),
            headers: vec![HeaderValueOption {
                header: Some(HeaderValue {
                    key: REASON_HEADER.to_owned(),
                    value: reason_header_value(decision.reason.as_str(), rule),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            body: format!("{message}\n"),
        })),
    };
    CheckResponse {
        status: Some(rpc::Status {
            code,
            message,
            details: Vec::new(),
        }),
        dynamic_metadata: Some(dynamic_metadata(decision)),
        http_response,
    }
}

/// The HTTP status of a deny: 503 when the server shed the check, so clients retry and dashboards do
/// not count it as policy; 403 for every decision about the request itself.
fn deny_status(reason: Reason) -> HttpStatusCode {
    match reason {
        Reason::Overloaded => HttpStatusCode::ServiceUnavailable,
        _ => HttpStatusCode::Forbidden,
    }
}

/// `denied_by_rule; rule=deny-default-to-yahoo`, or just the reason when no rule decided.
pub fn reason_header_value(reason: &str, rule: Option<&str>) -> String {
    match rule {
        Some(rule) => format!("{reason}; rule={rule}"),
        None => reason.to_owned(),
    }
}

fn deny_text(reason: &str, rule: Option<&str>) -> String {
    match rule {
        Some(rule) => format!("egress-authz: {reason} (rule {rule})"),
        None => format!("egress-authz: {reason}"),
    }
}

fn dynamic_metadata(decision: &Decision<'_>) -> Struct {
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let mut fields = std::collections::HashMap::with_capacity(5);
    fields.insert(
        metadata_keys::DECISION.to_owned(),
        string(decision.verdict.as_str()),
    );
    fields.insert(
        metadata_keys::REASON.to_owned(),
        string(decision.reason.as_str()),
    );
    if let Some(rule) = decision.rule {
        fields.insert(metadata_keys::RULE.to_owned(), string(&rule.name));
    }
    if let Some(dry_run) = decision.dry_run {
        fields.insert(
            metadata_keys::DRY_RUN_RULE.to_owned(),
            string(&dry_run.rule.name),
        );
        fields.insert(
            metadata_keys::DRY_RUN_DECISION.to_owned(),
            string(dry_run.verdict.as_str()),
        );
    }
    Struct { fields }
}
