//! Any bytes as a CheckRequest message, through the wire reader and the whole decision, as the Check
//! endpoint does it. Every input must be answered with an explicit OK or PERMISSION_DENIED, never a
//! panic. When prost can decode the bytes (so they are a well-formed CheckRequest with UTF-8 strings),
//! the wire reader must read exactly the fields the generated types hold, and the answer must be the
//! one the policy gives for those fields: the fast reader may not see a different request than Envoy sent.

#![no_main]

use std::sync::LazyLock;

use egress_authz::grpc::AuthzService;
use egress_authz::grpc::convert::{egress_request, request_id, to_check_response};
use egress_authz::grpc::wire::{CheckFields, HttpFields, read_check_request};
use egress_authz::policy::{EgressRequest, HttpRequest, Policy};
use egress_authz_fuzz::{check_policy, check_service};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest as PbHttpRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

static SERVICE: LazyLock<AuthzService> = LazyLock::new(check_service);
static POLICY: LazyLock<Policy> = LazyLock::new(check_policy);

// google.rpc.Code: OK and PERMISSION_DENIED, the only answers a check may get.
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;

fuzz_target!(|message: &[u8]| {
    let response = SERVICE.decide_message(message);
    let code = response.status.as_ref().map(|status| status.code);
    assert!(
        matches!(code, Some(OK | PERMISSION_DENIED)),
        "a check answered with {code:?}"
    );

    let read = read_check_request(message);
    if read.is_err() {
        assert_eq!(code, Some(PERMISSION_DENIED), "an unreadable check allowed");
    }
    let Ok(check) = CheckRequest::decode(message) else {
        return;
    };
    let fields = match read {
        Ok(fields) => fields,
        Err(malformed) => {
            panic!("prost decodes the check, the wire reader refuses it: {malformed:?}")
        }
    };
    let expected = expected_fields(&check);
    assert_eq!(fields, expected, "the wire reader disagrees with prost");

    // The same fields must give the same answer, metadata and HTTP response included.
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let http = expected
        .http
        .map(|h| [text(h.authority), text(h.method), text(h.path)]);
    let request = EgressRequest {
        http: http.as_ref().map(|[authority, method, path]| HttpRequest {
            authority,
            method,
            path,
        }),
        principal: &text(expected.principal),
        destination_service: &text(expected.destination_service),
        sni: &text(expected.sni),
        port: expected.port,
    };
    let decision = POLICY.decide(&request);
    assert_eq!(response, to_check_response(&decision, request.protocol()));
});

/// The fields the wire reader should find, from the prost-decoded message: what the adapter over the
/// generated types (`convert`) reads, plus `header_map`, which Envoy sends instead of `headers` with
/// `encode_raw_headers` and which `convert` does not know.
fn expected_fields(check: &CheckRequest) -> CheckFields<'_> {
    let request = egress_request(check);
    let pb_http = check
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    CheckFields {
        principal: request.principal.as_bytes(),
        destination_service: request.destination_service.as_bytes(),
        sni: request.sni.as_bytes(),
        port: request.port,
        http: request.http.zip(pb_http).map(|(http, pb_http)| HttpFields {
            authority: first_non_empty(
                http.authority.as_bytes(),
                header_map(pb_http, ":authority"),
            ),
            method: http.method.as_bytes(),
            path: first_non_empty(http.path.as_bytes(), header_map(pb_http, ":path")),
            request_id: first_non_empty(
                request_id(check).unwrap_or_default().as_bytes(),
                header_map(pb_http, "x-request-id"),
            ),
        }),
    }
}

/// The last `header_map` entry for `name` (its `raw_value`, else its `value`), empty when none.
fn header_map<'a>(http: &'a PbHttpRequest, name: &str) -> &'a [u8] {
    http.header_map
        .iter()
        .flat_map(|map| &map.headers)
        .rfind(|header| header.key == name)
        .map_or(&[], |header| {
            if header.raw_value.is_empty() {
                header.value.as_bytes()
            } else {
                &header.raw_value
            }
        })
}

fn first_non_empty<'a>(first: &'a [u8], second: &'a [u8]) -> &'a [u8] {
    if first.is_empty() { second } else { first }
}
