//! The Check RPC on HTTP/2, framed here instead of by a generated tonic server, so that nothing about a
//! request can turn into a gRPC error. A generated server answers a message it cannot decode, one over
//! its size limit, a compressed one or one cut off with an error status; Envoy counts an error as a
//! failure, and `failure_mode_allow` (Istio `failOpen`) lets the request through. Here each of those is
//! a deny with reason `invalid_request`, counted and logged like every decision.
//!
//! The endpoint also sheds load: past `max_in_flight` checks it answers at once with a deny carrying
//! HTTP 503 and reason `overloaded`, without reading the request, so a flood is refused in constant
//! time and memory instead of queueing without bound.
//!
//! Counting checks in flight takes two measures, because tonic calls a service only when the stream's
//! task first runs: a check waiting for a worker has not reached this code yet. So besides the checks
//! this endpoint is working on (those waiting for their message included), it reads how many tasks the
//! runtime holds: each HTTP/2 stream is a task from the moment it arrives, each connection one more. A
//! flood shows there first, as tasks queued faster than the workers run them.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use http::header::{CONTENT_TYPE, HeaderValue};
use http_body::Frame;
use http_body_util::BodyExt as _;
use prost::Message as _;
use tonic::body::Body;

use super::AuthzService;
use crate::listener::OpenConnections;
use crate::policy::{Decision, Protocol, Reason};

/// The gRPC service the endpoint serves.
pub const SERVICE_NAME: &str = "envoy.service.auth.v3.Authorization";
/// The one method of that service.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// How long a request's message may take to arrive once its stream has started. Envoy sends a check in
/// one go; a stream that trickles its body ties up a slot, so it is answered (denied) when this runs out.
const MESSAGE_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one "shedding" warning per this period, carrying the count since the last one.
const SHED_LOG_PERIOD: Duration = Duration::from_secs(1);
/// gRPC's message prefix: a compressed-flag byte and a 4-byte big-endian length.
const FRAME_HEADER_LEN: usize = 5;

/// Limits on what one check, and all checks together, may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest CheckRequest message read; a larger one is denied (`invalid_request`).
    pub max_message_bytes: usize,
    /// Checks in flight past which new ones are shed (`overloaded`).
    pub max_in_flight: usize,
}

/// A tower service for tonic's router that answers `envoy.service.auth.v3.Authorization/Check`.
#[derive(Clone, Debug)]
pub struct CheckEndpoint {
    shared: Arc<Shared>,
}

/// Tasks the runtime holds besides streams and connections (the reload watcher, timers, the admin
/// listener and its connections): allowed for when reading the runtime's task count, so that count
/// sheds only when streams are queued.
const SERVER_TASKS_ALLOWANCE: usize = 64;

#[derive(Debug)]
struct Shared {
    authz: AuthzService,
    limits: Limits,
    connections: OpenConnections,
    in_flight: AtomicUsize,
    shed_since_log: AtomicU64,
    last_shed_log: Mutex<Option<Instant>>,
}

impl CheckEndpoint {
    /// An endpoint deciding with `authz` within `limits`, on the connections counted by `connections`.
    pub fn new(authz: AuthzService, limits: Limits, connections: OpenConnections) -> Self {
        Self {
            shared: Arc::new(Shared {
                authz,
                limits,
                connections,
                in_flight: AtomicUsize::new(0),
                shed_since_log: AtomicU64::new(0),
                last_shed_log: Mutex::new(None),
            }),
        }
    }
}

impl tonic::server::NamedService for CheckEndpoint {
    const NAME: &'static str = SERVICE_NAME;
}

impl tower_service::Service<http::Request<Body>> for CheckEndpoint {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let ticket = InFlight::enter(&self.shared);
        Box::pin(async move { Ok(ticket.answer(request).await) })
    }
}

/// One check's place among those in flight; leaving is on drop, so a cancelled stream frees it too.
struct InFlight {
    shared: Arc<Shared>,
    admitted: bool,
}

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> Self {
        let before = shared.in_flight.fetch_add(1, Ordering::AcqRel);
        let max = shared.limits.max_in_flight;
        Self {
            shared: Arc::clone(shared),
            admitted: before < max && shared.queued_streams() <= max,
        }
    }

    async fn answer(self, request: http::Request<Body>) -> http::Response<Body> {
        let shared = &self.shared;
        if request.uri().path() != CHECK_PATH {
            return status_only(tonic::Code::Unimplemented, "unknown method");
        }
        if !self.admitted {
            shared.note_shed();
            return unread_refusal(shared, Reason::Overloaded);
        }
        match read_message(request.into_body(), shared.limits.max_message_bytes).await {
            Ok(message) => unary_response(&shared.authz.decide_message(&message)),
            Err(Unread::Abandoned) => {
                // Nobody is waiting for this answer; a deny is still the safe thing to send.
                shared.authz.metrics().record_abandoned_check();
                refusal(Reason::InvalidRequest)
            }
            Err(Unread::Invalid(problem)) => {
                tracing::debug!(problem, "A check whose gRPC message cannot be read");
                unread_refusal(shared, Reason::InvalidRequest)
            }
        }
    }
}

/// The deny for a check refused before its message was read (shed, or its frame unreadable): the
/// protocol is unknown, so it is counted under `protocol="unknown"`, and answered with the HTTP shape,
/// which the network filter ignores.
fn unread_refusal(shared: &Shared, reason: Reason) -> http::Response<Body> {
    shared.authz.record_unread(reason);
    refusal(reason)
}

/// A deny with `reason` and no rule, in the HTTP shape (the network filter ignores HTTP responses).
fn refusal(reason: Reason) -> http::Response<Body> {
    unary_response(&super::convert::to_check_response(
        &Decision::refused(reason),
        Protocol::Http,
    ))
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    /// Streams the runtime holds as tasks, ready or waiting, estimated from its task count: every
    /// task but the connections' and the server's own. Outside a runtime (never, in the server), none.
    fn queued_streams(&self) -> usize {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return 0;
        };
        runtime
            .metrics()
            .num_alive_tasks()
            .saturating_sub(self.connections.get() + SERVER_TASKS_ALLOWANCE)
    }

    /// Counts a shed check and warns at most once per [`SHED_LOG_PERIOD`], so a flood cannot flood
    /// the log too.
    fn note_shed(&self) {
        self.shed_since_log.fetch_add(1, Ordering::Relaxed);
        let Ok(mut last) = self.last_shed_log.try_lock() else {
            return;
        };
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < SHED_LOG_PERIOD) {
            return;
        }
        *last = Some(now);
        let shed = self.shed_since_log.swap(0, Ordering::Relaxed);
        tracing::warn!(
            shed,
            max_in_flight = self.limits.max_in_flight,
            "Overloaded: shedding checks (denied with HTTP 503, reason overloaded)"
        );
    }
}

/// Why a request's message was not read.
#[derive(Debug, PartialEq, Eq)]
enum Unread {
    /// The client reset the stream first (Envoy does when its timeout for the check fires): not a bad
    /// request, so not counted as one.
    Abandoned,
    /// What was sent is not a readable gRPC message.
    Invalid(&'static str),
}

/// Reads the request's one gRPC message, within the size limit and [`MESSAGE_READ_TIMEOUT`]. It does
/// not wait for the end of the stream once the message is complete.
async fn read_message(mut body: Body, max_message_bytes: usize) -> Result<Bytes, Unread> {
    let read = async {
        let mut buffer = BytesMut::new();
        loop {
            if let Some(message) =
                complete_message(&mut buffer, max_message_bytes).map_err(Unread::Invalid)?
            {
                return Ok(message);
            }
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buffer.extend_from_slice(&data);
                    }
                }
                Some(Err(_)) => return Err(Unread::Abandoned),
                None if buffer.is_empty() => {
                    return Err(Unread::Invalid("the request has no message"));
                }
                None => return Err(Unread::Invalid("the request's message is cut off")),
            }
        }
    };
    tokio::time::timeout(MESSAGE_READ_TIMEOUT, read)
        .await
        .unwrap_or(Err(Unread::Invalid(
            "the request's message did not arrive in time",
        )))
}

/// The message, once `buffer` holds all of it; an error as soon as its header shows it cannot be read.
fn complete_message(
    buffer: &mut BytesMut,
    max_message_bytes: usize,
) -> Result<Option<Bytes>, &'static str> {
    let Some(header) = buffer.get(..FRAME_HEADER_LEN) else {
        return Ok(None);
    };
    match header[0] {
        0 => {}
        // No `grpc-encoding` is accepted, and Envoy does not compress checks.
        1 => return Err("the request's message is compressed"),
        _ => return Err("the request's message has an invalid frame header"),
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > max_message_bytes {
        return Err("the request's message is over the size limit");
    }
    if buffer.len() < FRAME_HEADER_LEN + len {
        buffer.reserve(FRAME_HEADER_LEN + len - buffer.len());
        return Ok(None);
    }
    let mut frame = buffer.split_to(FRAME_HEADER_LEN + len);
    Ok(Some(frame.split_off(FRAME_HEADER_LEN).freeze()))
}

/// A successful unary gRPC response carrying `message`.
fn unary_response(message: &CheckResponse) -> http::Response<Body> {
    let encoded = message.encode_to_vec();
    let mut framed = BytesMut::with_capacity(FRAME_HEADER_LEN + encoded.len());
    framed.extend_from_slice(&[0]);
    // A CheckResponse is a few hundred bytes; the cast cannot truncate.
    framed.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    framed.extend_from_slice(&encoded);
    let mut trailers = http::HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut response = http::Response::new(Body::new(UnaryBody {
        message: Some(framed.freeze()),
        trailers: Some(trailers),
    }));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// A "trailers-only" gRPC response: used only for a method this endpoint does not have.
fn status_only(code: tonic::Code, message: &'static str) -> http::Response<Body> {
    let mut response = http::Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(code as i32));
    headers.insert("grpc-message", HeaderValue::from_static(message));
    response
}

/// The body of a unary response: the framed message, then the trailers.
struct UnaryBody {
    message: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl http_body::Body for UnaryBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(flag: u8, declared_len: u32, payload: &[u8]) -> BytesMut {
        let mut buffer = BytesMut::new();
        buffer.extend_from_slice(&[flag]);
        buffer.extend_from_slice(&declared_len.to_be_bytes());
        buffer.extend_from_slice(payload);
        buffer
    }

    #[test]
    fn a_message_is_returned_once_complete_and_not_before() {
        let mut partial = framed(0, 4, b"ab");
        assert_eq!(complete_message(&mut partial, 10), Ok(None));
        partial.extend_from_slice(b"cd-and-more");
        assert_eq!(
            complete_message(&mut partial, 10),
            Ok(Some(Bytes::from_static(b"abcd")))
        );
    }

    #[test]
    fn unreadable_frames_are_refused_from_their_header() {
        for (flag, len, why) in [
            (1, 4, "compressed"),
            (2, 4, "invalid frame header"),
            (0, 11, "over the size limit"),
            (0, u32::MAX, "over the size limit"),
        ] {
            let problem = complete_message(&mut framed(flag, len, b""), 10).unwrap_err();
            assert!(problem.contains(why), "{flag} {len}: {problem}");
        }
    }
}
