//! Real gRPC Check calls over 127.0.0.1 against the service, with requests shaped exactly as Envoy 1.40
//! sends them (captured samples in tests/fixtures/envoy-1.40), asserting status, HTTP status, body,
//! reason header and dynamic metadata.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;

use egress_authz::app::{self, GrpcLimits};
use egress_authz::decision_log::DecisionLog;
use egress_authz::grpc::admin::pb as admin_pb;
use egress_authz::metrics::Metrics;
use egress_authz::reload::{RuleStore, load_policy};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::TlsSession;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use testkit::check::{REASON_HEADER, denied_header, envoy_sample as sample};
use tonic::transport::Channel;

const SAMPLE_RULES: &str = r#"
defaultAction: DENY
rules:
- name: billing-to-allowed
  from: {serviceAccounts: [team-a/billing]}
  to: {hosts: [api.allowed.example.com], methods: [GET]}
- name: deny-reports
  action: DENY
  from: {namespaces: [team-b]}
- name: shadow-deny-billing-get
  action: DENY
  dryRun: true
  from: {namespaces: [team-a]}
  to: {paths: ["/get"]}
"#;

struct Server {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn spawn_server(rules: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, rules).unwrap();
    let metrics = Metrics::prometheus(true).unwrap();
    let store = Arc::new(RuleStore::new(
        path.clone(),
        load_policy(&path).unwrap(),
        metrics.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let services = app::GrpcServices {
        store,
        decision_log: Arc::new(DecisionLog::disabled()),
        metrics,
        traffic: None,
    };
    let limits = GrpcLimits::default();
    let (_health, server) =
        app::grpc_server(listener, services, &limits, std::future::pending()).unwrap();
    // Bound before spawning, so clients can connect at once: no readiness sleep.
    tokio::spawn(server);
    Server { addr, _dir: dir }
}

async fn client(server: &Server) -> AuthorizationClient<Channel> {
    AuthorizationClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap()
}

fn with_principal(mut check: CheckRequest, principal: &str) -> CheckRequest {
    check
        .attributes
        .as_mut()
        .unwrap()
        .source
        .as_mut()
        .unwrap()
        .principal = principal.to_owned();
    check
}

fn metadata(response: &CheckResponse) -> std::collections::BTreeMap<String, String> {
    response
        .dynamic_metadata
        .as_ref()
        .expect("dynamic metadata on every answer")
        .fields
        .iter()
        .map(|(k, v)| match &v.kind {
            Some(Kind::StringValue(s)) => (k.clone(), s.clone()),
            other => panic!("{k}: expected a string, got {other:?}"),
        })
        .collect()
}

fn denied(response: &CheckResponse) -> (u32, String, String) {
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => {
            let header = denied_header(response, REASON_HEADER)
                .expect("reason header")
                .to_owned();
            (
                denied.status.as_ref().unwrap().code as u32,
                denied.body.clone(),
                header,
            )
        }
        other => panic!("expected a denied response, got {other:?}"),
    }
}

const BILLING: &str = "spiffe://cluster.local/ns/team-a/sa/billing";
const REPORTS: &str = "spiffe://cluster.local/ns/team-b/sa/reports";

#[tokio::test]
async fn http_sample_allowed_is_status_ok_with_no_upstream_headers() {
    let server = spawn_server(SAMPLE_RULES).await;
    let response = client(&server)
        .await
        .check(sample("http"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.status.as_ref().unwrap().code, 0, "explicit OK");
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            assert!(
                ok.headers.is_empty() && ok.response_headers_to_add.is_empty(),
                "{ok:?}"
            );
        }
        other => panic!("expected OkResponse, got {other:?}"),
    }
    let meta = metadata(&response);
    assert_eq!(meta["decision"], "allow");
    assert_eq!(meta["reason"], "allowed_by_rule");
    assert_eq!(meta["rule"], "billing-to-allowed");
    // The sample's path is /get?x=1: the dry-run DENY on /get matches without the query.
    assert_eq!(meta["dry_run_rule"], "shadow-deny-billing-get");
    assert_eq!(meta["dry_run_decision"], "deny");
}

#[tokio::test]
async fn http_sample_denied_is_a_403_with_reason_header_body_and_metadata() {
    let server = spawn_server(SAMPLE_RULES).await;
    let response = client(&server)
        .await
        .check(with_principal(sample("http"), REPORTS))
        .await
        .expect("a deny is still a successful RPC")
        .into_inner();
    assert_eq!(
        response.status.as_ref().unwrap().code,
        7,
        "PERMISSION_DENIED"
    );
    let (status, body, header) = denied(&response);
    assert_eq!(status, 403);
    assert_eq!(body, "egress-authz: denied_by_rule (rule deny-reports)\n");
    assert_eq!(header, "denied_by_rule; rule=deny-reports");
    let meta = metadata(&response);
    assert_eq!(meta["decision"], "deny");
    assert_eq!(meta["reason"], "denied_by_rule");
    assert_eq!(meta["rule"], "deny-reports");
    assert!(
        !meta.contains_key("dry_run_rule"),
        "team-b does not match the dry-run rule"
    );
}

#[tokio::test]
async fn tcp_sample_uses_destination_service_and_has_no_http_response() {
    let server = spawn_server(SAMPLE_RULES).await;
    let mut client = client(&server).await;
    // The ALLOW rule requires GET, an HTTP-only field: on TCP it cannot match (fail closed).
    let response = client.check(sample("tcp")).await.unwrap().into_inner();
    assert_eq!(response.status.as_ref().unwrap().code, 7);
    assert!(
        response.http_response.is_none(),
        "TCP denies close the connection; no HTTP body"
    );
    assert_eq!(metadata(&response)["reason"], "no_matching_rule");

    let tcp_rules = "rules:\n- name: billing-tcp\n  from: {serviceAccounts: [team-a/billing]}\n  to: {hosts: [api.allowed.example.com], ports: [18443]}\n";
    let server = spawn_server(tcp_rules).await;
    let response = self::client(&server)
        .await
        .check(sample("tcp"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.status.as_ref().unwrap().code, 0);
    assert!(response.http_response.is_none());
    assert_eq!(metadata(&response)["rule"], "billing-tcp");
}

#[tokio::test]
async fn unreadable_requests_are_denied_with_a_reason_never_an_rpc_error() {
    let server = spawn_server(SAMPLE_RULES).await;
    let mut client = client(&server).await;
    let mut fronted = sample("http");
    fronted.attributes.as_mut().unwrap().tls_session = Some(TlsSession {
        sni: "evil.example.org".into(),
    });
    let mut bad_host = sample("http");
    bad_host
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap()
        .host = "a b".into();
    let cases = [
        (CheckRequest::default(), "no_destination_host"),
        (
            with_principal(sample("http"), "not-a-spiffe-id"),
            "invalid_principal",
        ),
        (
            with_principal(sample("http"), "spiffe://evil.example/ns/team-a/sa/billing"),
            "invalid_principal",
        ),
        (fronted, "sni_host_mismatch"),
        (bad_host, "invalid_host"),
    ];
    for (check, reason) in cases {
        let response = client
            .check(check)
            .await
            .expect("RPC succeeds")
            .into_inner();
        assert_eq!(response.status.as_ref().unwrap().code, 7, "{reason}");
        assert_eq!(metadata(&response)["reason"], reason);
    }
}

#[tokio::test]
async fn explain_rpc_traces_every_rule() {
    let server = spawn_server(SAMPLE_RULES).await;
    let mut admin = admin_pb::admin_client::AdminClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    // The admin CheckRequest is wire-compatible with Envoy's: send Envoy's bytes as they are.
    let envoy_bytes = prost::Message::encode_to_vec(&with_principal(sample("http"), REPORTS));
    let request: admin_pb::CheckRequest = prost::Message::decode(envoy_bytes.as_slice()).unwrap();
    let explained = admin.explain(request).await.unwrap().into_inner();
    assert_eq!(
        (explained.decision.as_str(), explained.reason.as_str()),
        ("deny", "denied_by_rule")
    );
    assert_eq!(explained.rule, "deny-reports");
    assert_eq!(explained.host, "api.allowed.example.com");
    assert_eq!(
        (
            explained.namespace.as_str(),
            explained.service_account.as_str()
        ),
        ("team-b", "reports")
    );
    let trace: Vec<_> = explained
        .rules
        .iter()
        .map(|r| (r.name.as_str(), r.matched, r.failed_condition.as_str()))
        .collect();
    assert_eq!(
        trace,
        [
            ("billing-to-allowed", false, "from.serviceAccounts"),
            ("deny-reports", true, ""),
            ("shadow-deny-billing-get", false, "from.namespaces"),
        ]
    );
    assert_eq!(explained.rules_sha256.len(), 64);
}

#[tokio::test]
async fn reflection_describes_the_admin_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = spawn_server(SAMPLE_RULES).await;
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"egress_authz.admin.v1.Admin"), "{names:?}");
}

#[test]
fn sample_fixtures_are_what_envoy_sent() {
    // Guard against the fixtures drifting from the capture: the shapes the tests rely on.
    let http = sample("http");
    let attrs = http.attributes.as_ref().unwrap();
    assert_eq!(
        attrs.request.as_ref().unwrap().http.as_ref().unwrap().path,
        "/get?x=1"
    );
    assert_eq!(
        attrs.tls_session.as_ref().unwrap().sni,
        "api.allowed.example.com"
    );
    assert_eq!(attrs.source.as_ref().unwrap().principal, BILLING);
    let tcp = sample("tcp");
    let attrs = tcp.attributes.as_ref().unwrap();
    assert!(attrs.request.is_none());
    assert_eq!(
        attrs.destination.as_ref().unwrap().service,
        "api.allowed.example.com"
    );
}
