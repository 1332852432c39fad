use std::collections::HashMap;

use super::*;

fn properties(entries: &[([&str; 2], &[u8])]) -> impl Fn(&[&str]) -> Option<Vec<u8>> + use<> {
    let map: HashMap<String, Vec<u8>> = entries
        .iter()
        .map(|(path, value)| (path.join("."), value.to_vec()))
        .collect();
    move |path: &[&str]| map.get(&path.join(".")).cloned()
}

#[test]
fn principal_is_the_first_uri_san_else_dns_san_else_subject() {
    let uri = b"spiffe://cluster.local/ns/default/sa/sleep".as_slice();
    let all = properties(&[
        (paths::PEER_URI_SAN, uri),
        (paths::PEER_DNS_SAN, b"sleep.default"),
        (paths::PEER_SUBJECT, b"CN=sleep"),
    ]);
    assert_eq!(
        Connection::read(all).principal,
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
    let no_uri = properties(&[
        (paths::PEER_URI_SAN, b""),
        (paths::PEER_DNS_SAN, b"sleep.default"),
    ]);
    assert_eq!(Connection::read(no_uri).principal, "sleep.default");
    let subject_only = properties(&[(paths::PEER_SUBJECT, b"CN=sleep")]);
    assert_eq!(Connection::read(subject_only).principal, "CN=sleep");
    assert_eq!(Connection::read(properties(&[])).principal, "");
}

#[test]
fn port_is_a_little_endian_int64() {
    assert_eq!(port(&8443_i64.to_le_bytes()), Some(8443));
    assert_eq!(port(&(-1_i64).to_le_bytes()), None);
    assert_eq!(port(&70_000_i64.to_le_bytes()), None);
    assert_eq!(port(b"8443"), None);
}

#[test]
fn sni_that_is_not_utf8_becomes_replacement_characters() {
    let read = Connection::read(properties(&[(paths::SNI, b"bad\xffhost")]));
    assert_eq!(read.sni, "bad\u{fffd}host");
}

#[test]
fn tcp_names_the_destination_by_sni_and_http_checks_sni_against_authority() {
    let read = Connection::read(properties(&[
        (paths::SNI, b"developers.google.com"),
        (paths::DESTINATION_PORT, &443_i64.to_le_bytes()),
    ]));
    let tcp = read.tcp_request();
    assert!(tcp.http.is_none());
    assert_eq!(tcp.destination_service, "developers.google.com");
    assert_eq!(tcp.port, Some(443));
    let http = read.http_request(HttpRequest {
        authority: "developer.yahoo.com",
        method: "GET",
        path: "/",
    });
    assert_eq!(http.sni, "developers.google.com");
    assert_eq!(http.destination_service, "");
}
