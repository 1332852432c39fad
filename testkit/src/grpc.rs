//! Calling Check on a running server: the ordinary bounded unary call, polling until a verdict flips,
//! and two lower-level calls for what a generated client cannot send: exact request bytes over HTTP/2
//! ([`raw_call`]), and a Check whose message arrives late ([`held_check`]), so it stays in flight.

use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use http_body_util::{BodyExt as _, Full};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tower_service::Service as _;

use crate::check::is_allowed;
use crate::wait::{RPC_TIMEOUT, poll_until};

/// The HTTP/2 path of the Check method.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// One Check with a bound; panics on an RPC error (the server must never return one).
pub async fn check(
    client: &mut AuthorizationClient<Channel>,
    request: CheckRequest,
) -> CheckResponse {
    tokio::time::timeout(RPC_TIMEOUT, client.check(request))
        .await
        .expect("Check timed out")
        .expect("Check RPC failed")
        .into_inner()
}

/// Checks `request` every `POLL_INTERVAL` until its verdict is `allowed`; returns the time from `since`
/// to the first response with that verdict, or `None` after `timeout`.
pub async fn time_until_verdict(
    client: &mut AuthorizationClient<Channel>,
    request: &CheckRequest,
    allowed: bool,
    since: Instant,
    timeout: Duration,
) -> Option<Duration> {
    poll_until(timeout, || {
        let mut client = client.clone();
        let request = request.clone();
        async move {
            let response = check(&mut client, request).await;
            (is_allowed(&response) == allowed).then(|| since.elapsed())
        }
    })
    .await
}

/// A Check whose message is sent only when `release` fires (or is dropped); until then it is in
/// flight on the server. Returns the RPC's answer, `Err` being a gRPC error.
pub async fn held_check(
    channel: Channel,
    request: CheckRequest,
    release: oneshot::Receiver<()>,
) -> Result<CheckResponse, tonic::Status> {
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        // A dropped release sends the message too: the check is then answered rather than left to
        // the server's read timeout.
        let _ = release.await;
        let _ = sender.send(request).await;
    });
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    // A client stream of one message is, on the wire, exactly a unary call whose message comes late.
    grpc.client_streaming(
        tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(receiver)),
        http::uri::PathAndQuery::from_static(CHECK_PATH),
        tonic_prost::ProstCodec::<CheckRequest, CheckResponse>::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

// === Exact bytes ===

/// A gRPC frame: compression `flag`, the `declared_len` the prefix claims, then `payload` as given.
pub fn framed(flag: u8, declared_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![flag];
    body.extend_from_slice(&declared_len.to_be_bytes());
    body.extend_from_slice(payload);
    body
}

/// `payload` as one well-formed uncompressed gRPC message.
pub fn message(payload: &[u8]) -> Vec<u8> {
    framed(
        0,
        u32::try_from(payload.len()).expect("a test message is under 4 GiB"),
        payload,
    )
}

/// What the server answered to one raw HTTP/2 request.
#[derive(Debug)]
pub struct RawAnswer {
    /// `grpc-status` from the trailers (or the headers, for a trailers-only answer).
    pub grpc_status: Option<String>,
    /// The decoded CheckResponse, when the body held one.
    pub response: Option<CheckResponse>,
}

impl RawAnswer {
    /// The decision's `reason` metadata; asserts the call itself succeeded with a deny.
    pub fn denied_reason(&self) -> String {
        assert_eq!(
            self.grpc_status.as_deref(),
            Some("0"),
            "the RPC must succeed: {self:?}"
        );
        let response = self.response.as_ref().expect("a CheckResponse");
        assert_eq!(
            response.status.as_ref().map(|s| s.code),
            Some(7),
            "{self:?}"
        );
        let reason = &response
            .dynamic_metadata
            .as_ref()
            .expect("a deny carries metadata")
            .fields["reason"];
        match &reason.kind {
            Some(Kind::StringValue(reason)) => reason.clone(),
            other => panic!("reason is not a string: {other:?}"),
        }
    }
}

/// Sends `body` as the request body of a gRPC call to `path`, exactly as given.
pub async fn raw_call(channel: &mut Channel, path: &str, body: Vec<u8>) -> RawAnswer {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://egress-authz{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Full::new(Bytes::from(body))))
        .expect("a valid request");
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .expect("the channel is ready");
    let response = channel.call(request).await.expect("an HTTP/2 answer");
    let header_status = response.headers().get("grpc-status").cloned();
    let collected = response
        .into_body()
        .collect()
        .await
        .expect("the whole answer body");
    let trailer_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .cloned();
    let data = collected.to_bytes();
    let response = data
        .get(5..)
        .filter(|_| data[0] == 0)
        .map(|m| CheckResponse::decode(m).expect("the answer is a CheckResponse"));
    RawAnswer {
        grpc_status: trailer_status
            .or(header_status)
            .map(|v| v.to_str().expect("grpc-status is ASCII").to_owned()),
        response,
    }
}
