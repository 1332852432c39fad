//! Any bytes sent to Check get an answer with RPC status OK, never a gRPC error (which Envoy's
//! `failure_mode_allow` would turn into an allow): messages that are not UTF-8 where protobuf wants
//! strings, nested deeper than any decoder recurses, truncated or not protobuf at all, and gRPC frames
//! that are compressed, oversized or cut off. Each is a deny with a reason, counted in `/metrics`.
//! Runs the real binary and speaks HTTP/2 directly, so the requests are exactly these bytes.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use prost::Message as _;
use testkit::grpc::{CHECK_PATH, framed, message, raw_call};
use testkit::{Server, ServerBuilder, bounded, mk_http_check, mk_tcp_check, spiffe};

const RULES: &str = r#"
defaultAction: DENY
rules:
- name: allow-google
  from: {namespaces: [team-a]}
  to: {hosts: ["**.google.com"]}
"#;

/// Replaces every `placeholder` in an encoded message with `bytes` of the same length, so the
/// protobuf stays well-formed while string fields hold bytes a strict decoder refuses.
fn splice(mut encoded: Vec<u8>, placeholder: &[u8], bytes: &[u8]) -> Vec<u8> {
    assert_eq!(placeholder.len(), bytes.len());
    let mut replaced = 0;
    while let Some(at) = encoded
        .windows(placeholder.len())
        .position(|w| w == placeholder)
    {
        encoded[at..at + bytes.len()].copy_from_slice(bytes);
        replaced += 1;
    }
    assert!(replaced > 0, "placeholder in the message");
    encoded
}

/// `metadata_context` (field 11 of AttributeContext) as a `Struct` nested `depth` levels deep, inside
/// an otherwise allowed HTTP check: a decoder that recurses into it gives up (or overflows its stack).
fn deeply_nested_metadata(depth: usize) -> Vec<u8> {
    // Struct{fields: {"k": Value{struct_value: Struct{...}}}}, built from the inside out.
    let mut inner: Vec<u8> = Vec::new();
    for _ in 0..depth {
        let mut value = vec![0x2a]; // Value.struct_value, field 5, length-delimited
        put_len(&mut value, inner.len());
        value.extend_from_slice(&inner);
        let mut entry = vec![0x0a, 0x01, b'k', 0x12]; // key "k", then value (field 2)
        put_len(&mut entry, value.len());
        entry.extend_from_slice(&value);
        let mut fields = vec![0x0a]; // Struct.fields, field 1
        put_len(&mut fields, entry.len());
        fields.extend_from_slice(&entry);
        inner = fields;
    }
    let mut attributes = vec![0x5a]; // AttributeContext.metadata_context, field 11
    put_len(&mut attributes, inner.len());
    attributes.extend_from_slice(&inner);
    // Appending a field to the CheckRequest's `attributes` merges it into the same message.
    let mut check =
        mk_http_check(&spiffe("team-a", "app"), "www.google.com", 443, "GET", "/").encode_to_vec();
    check.push(0x0a); // CheckRequest.attributes, field 1
    put_len(&mut check, attributes.len());
    check.extend_from_slice(&attributes);
    check
}

fn put_len(buf: &mut Vec<u8>, mut len: usize) {
    while len >= 0x80 {
        buf.push((len as u8) | 0x80);
        len >>= 7;
    }
    buf.push(len as u8);
}

async fn server() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, RULES).unwrap();
    let server = ServerBuilder::new(&rules)
        .args(["--max-request-bytes", "65536"])
        .spawn()
        .await;
    (server, dir)
}

#[tokio::test]
async fn unreadable_fields_are_denied_with_their_reason() {
    bounded(async {
        let (server, _dir) = server().await;
        let mut channel = server.channel().await;
        let team_a = spiffe("team-a", "app");
        let placeholder = b"zzzz.google.com";
        let not_utf8 = b"\xff\xfezz.google.com";

        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "a TCP check whose SNI is not UTF-8",
                splice(
                    mk_tcp_check(&team_a, "zzzz.google.com", 443).encode_to_vec(),
                    placeholder,
                    not_utf8,
                ),
                "invalid_host",
            ),
            (
                "an HTTP check whose :authority is not UTF-8",
                splice(
                    mk_http_check(&team_a, "zzzz.google.com", 443, "GET", "/").encode_to_vec(),
                    placeholder,
                    not_utf8,
                ),
                "invalid_host",
            ),
            (
                "a check whose principal is not UTF-8",
                splice(
                    mk_http_check(&spiffe("team-a", "zzzz"), "www.google.com", 443, "GET", "/")
                        .encode_to_vec(),
                    b"zzzz",
                    b"\xc3\x28zz",
                ),
                "invalid_principal",
            ),
        ];
        for (what, payload, reason) in cases {
            let answer = raw_call(&mut channel, CHECK_PATH, message(&payload)).await;
            assert_eq!(answer.denied_reason(), reason, "{what}");
        }

        // The control: the same checks, readable, are allowed, so the denies above are about the bytes.
        let allowed = message(&mk_tcp_check(&team_a, "zzzz.google.com", 443).encode_to_vec());
        let answer = raw_call(&mut channel, CHECK_PATH, allowed).await;
        assert_eq!(answer.grpc_status.as_deref(), Some("0"));
        assert_eq!(answer.response.unwrap().status.unwrap().code, 0, "allowed");

        let metrics = server.metrics().await;
        for (protocol, reason, count) in [
            ("tcp", "invalid_host", 1.0),
            ("http", "invalid_host", 1.0),
            ("http", "invalid_principal", 1.0),
        ] {
            let labels = [
                ("decision", "deny"),
                ("reason", reason),
                ("protocol", protocol),
            ];
            assert_eq!(
                metrics.get("egress_authz_checks_total", &labels),
                Some(count),
                "{labels:?}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn deeply_nested_metadata_is_skipped_unread() {
    bounded(async {
        let (server, _dir) = server().await;
        let mut channel = server.channel().await;
        // 2,000 levels: far past prost's recursion limit of 100, and under the 64 KiB request limit.
        let answer = raw_call(
            &mut channel,
            CHECK_PATH,
            message(&deeply_nested_metadata(2000)),
        )
        .await;
        assert_eq!(answer.grpc_status.as_deref(), Some("0"), "{answer:?}");
        let response = answer.response.unwrap();
        assert_eq!(
            response.status.unwrap().code,
            0,
            "decided on its fields, as if the metadata were not there"
        );
        assert!(matches!(
            response.http_response,
            Some(HttpResponse::OkResponse(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn messages_that_are_not_check_requests_are_invalid_requests() {
    bounded(async {
        let (server, _dir) = server().await;
        let mut channel = server.channel().await;
        let valid = mk_http_check(&spiffe("team-a", "app"), "www.google.com", 443, "GET", "/")
            .encode_to_vec();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "a truncated CheckRequest",
                message(&valid[..valid.len() - 3]),
            ),
            ("field number 0", message(&[0x02, 0x00])),
            ("an invalid wire type", message(&[0x0f])),
            ("an unterminated varint", message(&[0x08, 0xff, 0xff])),
            ("an end-group without a start", message(&[0x0c])),
            ("a message field sent as a varint", message(&[0x08, 0x01])),
            (
                "plain text",
                message(b"GET / HTTP/1.1\r\nhost: www.google.com\r\n\r\n"),
            ),
            ("a compressed message", framed(1, 3, b"abc")),
            ("an invalid frame flag", framed(0x80, 3, b"abc")),
            ("a message over --max-request-bytes", framed(0, 65537, b"")),
            ("a message over 4 GiB declared", framed(0, u32::MAX, b"")),
            ("a frame cut off", framed(0, 100, b"only-some")),
            ("a frame header cut off", vec![0, 0]),
            ("no message at all", Vec::new()),
        ];
        let count = cases.len();
        for (what, body) in cases {
            let answer = raw_call(&mut channel, CHECK_PATH, body).await;
            assert_eq!(answer.denied_reason(), "invalid_request", "{what}");
        }
        let metrics = server.metrics().await;
        let counted = metrics.sum(
            "egress_authz_checks_total",
            &[("decision", "deny"), ("reason", "invalid_request")],
        );
        assert_eq!(counted, count as f64, "every invalid request is counted");
        // And the server still decides readable checks.
        let answer = raw_call(&mut channel, CHECK_PATH, message(&valid)).await;
        assert_eq!(answer.response.unwrap().status.unwrap().code, 0);
    })
    .await;
}

#[tokio::test]
async fn unknown_methods_of_the_service_are_unimplemented_not_checks() {
    bounded(async {
        let (server, _dir) = server().await;
        let mut channel = server.channel().await;
        let answer = raw_call(
            &mut channel,
            "/envoy.service.auth.v3.Authorization/NotCheck",
            message(b""),
        )
        .await;
        assert_eq!(answer.grpc_status.as_deref(), Some("12"), "{answer:?}");
    })
    .await;
}
