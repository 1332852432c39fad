//! CheckRequests as Envoy sends them: the short builders tests write by hand (`mk_http_check`,
//! `mk_tcp_check`), the captured Envoy 1.40 samples in tests/fixtures/envoy-1.40 turned back into
//! protobuf, and readers for the parts of a CheckResponse tests assert on. Pure: no I/O but reading a
//! fixture, no runtime, so the fuzz crate uses it too.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    Address, HeaderMap, HeaderValue, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request, TlsSession,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use serde_json::Value as Json;

/// The header the server names its deny reason in (`<reason>[; rule=<name>]`).
pub const REASON_HEADER: &str = "x-egress-authz-reason";

/// The SPIFFE principal of a workload in `namespace` running as `service_account`.
pub fn spiffe(namespace: &str, service_account: &str) -> String {
    format!("spiffe://cluster.local/ns/{namespace}/sa/{service_account}")
}

/// A peer with `principal` at the socket address `ip:port`.
pub fn mk_peer(principal: &str, ip: &str, port: u16) -> Peer {
    Peer {
        principal: principal.to_owned(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.to_owned(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
                ..Default::default()
            })),
        }),
        ..Default::default()
    }
}

/// A check as Envoy's HTTP ext_authz filter sends it from an Istio egress gateway.
pub fn mk_http_check(
    principal: &str,
    host: &str,
    port: u16,
    method: &str,
    path: &str,
) -> CheckRequest {
    let headers = HashMap::from([
        (":authority".to_owned(), host.to_owned()),
        (":method".to_owned(), method.to_owned()),
        (":path".to_owned(), path.to_owned()),
    ]);
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    host: host.to_owned(),
                    method: method.to_owned(),
                    path: path.to_owned(),
                    headers,
                    protocol: "HTTP/1.1".to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..gateway_attributes(principal, port)
        }),
    }
}

/// What every check from the gateway carries: the caller's principal, and the gateway's listener on
/// `port` as the destination.
fn gateway_attributes(principal: &str, port: u16) -> AttributeContext {
    AttributeContext {
        source: Some(Peer {
            principal: principal.to_owned(),
            ..Default::default()
        }),
        destination: Some(mk_peer("", "127.0.0.1", port)),
        ..Default::default()
    }
}

/// `mk_http_check` plus an `x-request-id` header.
pub fn mk_http_check_with_request_id(
    principal: &str,
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    request_id: &str,
) -> CheckRequest {
    let mut check = mk_http_check(principal, host, port, method, path);
    http_of(&mut check)
        .headers
        .insert("x-request-id".to_owned(), request_id.to_owned());
    check
}

/// A check as Envoy's network (TCP) ext_authz filter sends it, with the TLS SNI.
pub fn mk_tcp_check(principal: &str, sni: &str, port: u16) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            tls_session: Some(TlsSession {
                sni: sni.to_owned(),
            }),
            ..gateway_attributes(principal, port)
        }),
    }
}

/// The attributes of `check`, created empty if it has none.
pub fn attributes_of(check: &mut CheckRequest) -> &mut AttributeContext {
    check.attributes.get_or_insert_with(Default::default)
}

/// The HTTP request of `check`, created empty if it has none.
pub fn http_of(check: &mut CheckRequest) -> &mut HttpRequest {
    attributes_of(check)
        .request
        .get_or_insert_with(Default::default)
        .http
        .get_or_insert_with(Default::default)
}

/// `headers` as Envoy sends them with `encode_raw_headers: true`: in `header_map`, values as bytes.
pub fn raw_header_map(headers: impl IntoIterator<Item = (String, String)>) -> HeaderMap {
    HeaderMap {
        headers: headers
            .into_iter()
            .map(|(key, value)| HeaderValue {
                key,
                raw_value: value.into_bytes(),
                ..Default::default()
            })
            .collect(),
    }
}

// === Captured Envoy requests ===

/// Builds a CheckRequest from Envoy's protobuf JSON (as captured), for the fields Envoy 1.40 sends. A
/// field the JSON lacks stays at its default, so a hand-trimmed sample still builds.
pub fn from_envoy_json(json: &Json) -> CheckRequest {
    let attrs = &json["attributes"];
    let str_of = |v: &Json| v.as_str().unwrap_or_default().to_owned();
    let peer = |p: &Json| Peer {
        address: p.get("address").map(|a| Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: str_of(&a["socketAddress"]["address"]),
                port_specifier: a["socketAddress"]["portValue"]
                    .as_u64()
                    .and_then(|port| u32::try_from(port).ok())
                    .map(socket_address::PortSpecifier::PortValue),
                ..Default::default()
            })),
        }),
        service: str_of(&p["service"]),
        principal: str_of(&p["principal"]),
        ..Default::default()
    };
    let http = &attrs["request"]["http"];
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer(&attrs["source"])),
            destination: Some(peer(&attrs["destination"])),
            request: http.is_object().then(|| Request {
                http: Some(HttpRequest {
                    id: str_of(&http["id"]),
                    method: str_of(&http["method"]),
                    headers: http["headers"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), str_of(v)))
                        .collect(),
                    path: str_of(&http["path"]),
                    host: str_of(&http["host"]),
                    scheme: str_of(&http["scheme"]),
                    protocol: str_of(&http["protocol"]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            tls_session: attrs.get("tlsSession").map(|t| TlsSession {
                sni: str_of(&t["sni"]),
            }),
            ..Default::default()
        }),
    }
}

/// The captured Envoy 1.40 CheckRequest of `kind` (`http` or `tcp`) as protobuf JSON.
pub fn envoy_sample_json(kind: &str) -> Json {
    let path = crate::fixtures::envoy_sample(kind);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The captured Envoy 1.40 CheckRequest of `kind` (`http` or `tcp`).
pub fn envoy_sample(kind: &str) -> CheckRequest {
    from_envoy_json(&envoy_sample_json(kind))
}

// === Responses ===

/// True if the response lets the request through (`status.code == OK`).
pub fn is_allowed(response: &CheckResponse) -> bool {
    response.status.as_ref().map_or(0, |s| s.code) == 0
}

/// The reason code the server put in the response's dynamic metadata.
pub fn reason_of(response: &CheckResponse) -> Option<String> {
    match response
        .dynamic_metadata
        .as_ref()?
        .fields
        .get("reason")?
        .kind
        .as_ref()?
    {
        Kind::StringValue(reason) => Some(reason.clone()),
        _ => None,
    }
}

/// The value of header `name` in the response's denied HTTP response, if it is a deny that has one.
pub fn denied_header<'a>(response: &'a CheckResponse, name: &str) -> Option<&'a str> {
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        return None;
    };
    denied
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == name)
        .map(|h| h.value.as_str())
}
