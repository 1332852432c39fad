//! Bad input of every kind must give a decision or a located error, never a panic: arbitrary rule-file
//! text through `compile`, and arbitrary CheckRequest fields through `decide`, `explain` and the gRPC
//! adapter (which must always produce a response with an explicit status).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use egress_authz::decision_log::DecisionLog;
use egress_authz::grpc::AuthzService;
use egress_authz::grpc::convert::{egress_request, to_check_response};
use egress_authz::grpc::wire::{CheckFields, read_check_request};
use egress_authz::policy::{
    EgressRequest, HttpRequest, NormalizedHost, SourceFile, Verdict, authority_host, compile,
    is_valid_dns_name, normalize_authority, normalize_host, parse_spiffe_id,
};
use egress_authz::reload::{RuleStore, load_policy};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use proptest::prelude::*;
use prost::Message as _;
use testkit::check::raw_header_map;

use testkit::reference::{
    reference_dns_name, reference_inet_aton, reference_is_number, reference_normalize_host,
    reference_spiffe,
};

const RULES: &str = r#"
defaultAction: DENY
rules:
- name: google
  from: {namespaces: ["team-*"], notServiceAccounts: ["*/blocked"]}
  to: {hosts: ["*.google.com", "**.googleapis.com", "exact.example"], ports: [8443], methods: [GET], paths: ["/api/*"]}
- name: deny-yahoo
  action: DENY
  to: {hosts: [developer.yahoo.com], methods: [POST]}
- name: shadow
  dryRun: true
  from: {principals: ["*"]}
"#;

/// Strings that hit the interesting edges: non-ASCII, separators, wildcards, very long labels.
fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        ".*",
        "[a-zA-Z0-9.:/*_%@\\[\\]-]{0,40}",
        Just("spiffe://cluster.local/ns/team-a/sa/sleep".to_owned()),
        Just("spiffe://cluster.local/ns/ü/sa/ß".to_owned()),
        Just("é.google.com:443".to_owned()),
        Just("[::1]:x".to_owned()),
        Just(format!("{}.google.com", "a".repeat(300))),
        Just("outbound_.443_._.gw.istio-system.svc.cluster.local".to_owned()),
    ]
}

/// Raw bytes, and valid encodings of checks mangled the ways that matter: cut off, a byte flipped,
/// a field appended (which protobuf merges into the message).
fn check_request_bytes() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        (
            any_check_request(),
            any::<prop::sample::Index>(),
            any::<u8>(),
            proptest::collection::vec(any::<u8>(), 0..16)
        )
            .prop_map(|(check, at, byte, tail)| {
                let mut bytes = check.encode_to_vec();
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                bytes.extend_from_slice(&tail);
                bytes
            }),
        (any_check_request(), any_check_request()).prop_map(|(a, b)| {
            let mut bytes = a.encode_to_vec();
            bytes.extend_from_slice(&b.encode_to_vec());
            bytes
        }),
    ]
    .boxed()
}

/// CheckRequests with the fields the server reads set or not, headers both as `headers` and as
/// `header_map`, and destination addresses that are and are not socket addresses with a port.
fn any_check_request() -> BoxedStrategy<CheckRequest> {
    use envoy_types::pb::envoy::config::core::v3::{
        Address, Pipe, SocketAddress, address, socket_address,
    };
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest as PbHttp, Peer, Request, TlsSession,
    };
    let header_name = prop_oneof![
        Just(":authority".to_owned()),
        Just(":path".to_owned()),
        Just("x-request-id".to_owned()),
        "[a-z-]{1,8}",
    ];
    let headers = proptest::collection::vec((header_name, nasty()), 0..4);
    let address = prop_oneof![
        Just(None),
        any::<u32>().prop_map(|port| Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "127.0.0.1".into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port % 70_000)),
                ..Default::default()
            })),
        })),
        Just(Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                port_specifier: Some(socket_address::PortSpecifier::NamedPort("https".into())),
                ..Default::default()
            })),
        })),
        Just(Some(Address {
            address: Some(address::Address::Pipe(Pipe {
                path: "/sock".into(),
                mode: 0
            })),
        })),
    ];
    let http = (nasty(), nasty(), nasty(), headers, any::<bool>()).prop_map(
        |(host, method, path, headers, raw)| {
            let mut http = PbHttp {
                host,
                method,
                path,
                ..Default::default()
            };
            if raw {
                http.header_map = Some(raw_header_map(headers));
            } else {
                http.headers = headers.into_iter().collect();
            }
            http
        },
    );
    (
        nasty(),
        nasty(),
        proptest::option::of(nasty()),
        address,
        proptest::option::of(http),
    )
        .prop_map(|(principal, service, sni, address, http)| CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer {
                    principal,
                    ..Default::default()
                }),
                destination: Some(Peer {
                    service,
                    address,
                    ..Default::default()
                }),
                request: http.map(|http| Request {
                    http: Some(http),
                    ..Default::default()
                }),
                tls_session: sni.map(|sni| TlsSession { sni }),
                ..Default::default()
            }),
        })
        .boxed()
}

/// The wire reader's fields equal what the adapter reads from the prost-decoded message, with
/// `header_map` (Envoy's raw-headers encoding) read like `headers`: the last entry for a name wins.
fn assert_wire_reader_agrees(check: &CheckRequest, fields: &CheckFields<'_>) {
    let request = egress_request(check);
    // `raw_value` is bytes, so header values compare as lossy text; string fields are UTF-8 already.
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    assert_eq!(text(fields.principal), request.principal);
    assert_eq!(
        text(fields.destination_service),
        request.destination_service
    );
    assert_eq!(text(fields.sni), request.sni);
    assert_eq!(fields.port, request.port);
    let pb_http = check
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    match (fields.http, pb_http) {
        (Some(wire), Some(http)) => {
            let header = |name: &str| -> String {
                if let Some(value) = http.headers.get(name) {
                    return value.clone();
                }
                http.header_map
                    .iter()
                    .flat_map(|m| &m.headers)
                    .rfind(|h| h.key == name)
                    .map(|h| {
                        if h.raw_value.is_empty() {
                            h.value.clone()
                        } else {
                            text(&h.raw_value)
                        }
                    })
                    .unwrap_or_default()
            };
            let or_header = |field: &str, name: &str| {
                if field.is_empty() {
                    header(name)
                } else {
                    field.to_owned()
                }
            };
            assert_eq!(text(wire.method), http.method);
            assert_eq!(text(wire.authority), or_header(&http.host, ":authority"));
            assert_eq!(text(wire.path), or_header(&http.path, ":path"));
            assert_eq!(text(wire.request_id), header("x-request-id"));
        }
        (None, None) => {}
        (wire, prost) => panic!("HTTP or not: wire {wire:?}, prost {prost:?}"),
    }
}

fn authz_service() -> AuthzService {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, RULES).unwrap();
    let metrics = egress_authz::metrics::Metrics::disabled();
    let store = RuleStore::new(path.clone(), load_policy(&path).unwrap(), metrics.clone());
    AuthzService::new(Arc::new(store), Arc::new(DecisionLog::disabled()), metrics)
}

fn policy() -> egress_authz::policy::Policy {
    compile(&[SourceFile {
        name: "rules.yaml".into(),
        text: RULES.into(),
    }])
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_request_fields_get_a_decision(
        principal in nasty(), authority in nasty(), sni in nasty(), service in nasty(),
        method in nasty(), path in nasty(), port in proptest::option::of(any::<u16>()), is_http in any::<bool>(),
    ) {
        let policy = policy();
        let request = EgressRequest {
            http: is_http.then(|| HttpRequest { authority: &authority, method: &method, path: &path }),
            principal: &principal,
            destination_service: &service,
            sni: &sni,
            port,
        };
        let decision = policy.decide(&request);
        let explanation = policy.explain(&request);
        prop_assert_eq!(explanation.decision, decision);
        let response = to_check_response(&decision, request.protocol());
        let code = response.status.as_ref().map(|s| s.code);
        prop_assert_eq!(code, Some(if decision.verdict == Verdict::Allow { 0 } else { 7 }));
    }

    #[test]
    fn any_bytes_as_a_check_request_are_answered(bytes in check_request_bytes()) {
        // Every input is answered with an explicit allow or deny, never an error.
        let response = authz_service().decide_message(&bytes);
        let code = response.status.as_ref().map(|s| s.code);
        prop_assert!(code == Some(0) || code == Some(7), "{code:?}");
        // Whatever prost can decode, the wire reader reads the same way.
        if let Ok(check) = CheckRequest::decode(bytes.as_slice()) {
            let fields = read_check_request(&bytes);
            prop_assert!(fields.is_ok(), "prost decoded what the wire reader refused: {fields:?}");
            assert_wire_reader_agrees(&check, &fields.unwrap());
        }
    }

    #[test]
    fn the_wire_reader_reads_what_envoy_encodes(check in any_check_request()) {
        let bytes = check.encode_to_vec();
        let fields = read_check_request(&bytes).unwrap();
        assert_wire_reader_agrees(&check, &fields);
    }

    #[test]
    fn any_rule_file_text_compiles_or_reports_located_errors(text in ".{0,300}") {
        let file = SourceFile { name: "fuzz.yaml".into(), text };
        if let Err(errors) = compile(&[file]) {
            prop_assert!(!errors.is_empty());
            for error in errors {
                prop_assert!(error.location.line >= 1 && error.location.column >= 1);
                prop_assert!(error.to_string().starts_with("fuzz.yaml:"));
            }
        }
    }

    #[test]
    fn mutated_valid_rule_files_never_panic(cut in 0usize..RULES.len(), insert in nasty()) {
        // Splice arbitrary text into a valid file at every position: half-written and corrupted files.
        let mut text = RULES.to_owned();
        let at = (0..=cut).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.insert_str(at, &insert);
        let _ = compile(&[SourceFile { name: "rules.yaml".into(), text: text.clone() }]);
        text.truncate(at);
        let _ = compile(&[SourceFile { name: "rules.yaml".into(), text }]);
    }
}

/// Hosts built from the characters that matter to the parsers, plus some near-miss shapes.
fn host_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._-]{0,30}",
        "[0-9.]{0,20}",
        "\\[?[0-9a-fA-F:.]{0,30}\\]?",
        "([a-z]{1,3}\\.){0,4}[a-zA-Z0-9-]{0,70}\\.?",
        nasty(),
    ]
}

fn spiffe_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "spiffe://[a-z0-9.:@_-]{0,12}/(ns|sa|x)/[a-zA-Z0-9.%_-]{0,8}/(sa|ns)/[a-zA-Z0-9./_-]{0,8}",
        "spiffe://[a-zA-Z.]{0,5}(/[a-z.]{0,3}){0,6}",
        nasty(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

    #[test]
    fn fast_host_normalisation_agrees_with_the_reference(raw in host_like()) {
        let mut scratch = None;
        let fast = normalize_host(&raw, &mut scratch).map(str::to_owned);
        prop_assert_eq!(&fast, &reference_normalize_host(&raw), "{:?}", raw);
        prop_assert_eq!(
            NormalizedHost::parse(&raw).map(|h| h.as_str().to_owned()),
            fast
        );
        let name = raw.strip_suffix('.').unwrap_or(&raw);
        prop_assert_eq!(is_valid_dns_name(name), reference_dns_name(name), "{:?}", name);
    }

    #[test]
    fn authority_shortcut_agrees_with_the_general_path(
        host in host_like(),
        port in prop_oneof![Just(String::new()), "[0-9]{0,6}", "[a-z0-9:@]{0,4}"],
        with_port in any::<bool>(),
    ) {
        let authority = if with_port { format!("{host}:{port}") } else { host };
        let mut general_scratch = None;
        let general = authority_host(&authority)
            .and_then(|h| normalize_host(h, &mut general_scratch))
            .map(str::to_owned);
        let mut scratch = None;
        prop_assert_eq!(
            normalize_authority(&authority, &mut scratch).map(str::to_owned),
            general,
            "{:?}",
            authority
        );
    }

    #[test]
    fn fast_spiffe_parsing_agrees_with_the_reference(id in spiffe_like()) {
        let fast = parse_spiffe_id(&id).map(|i| {
            prop_assert_eq!(Some(i.principal), id.strip_prefix("spiffe://"));
            Ok((i.trust_domain.to_owned(), i.namespace.to_owned(), i.service_account.to_owned()))
        });
        let fast = fast.transpose()?;
        prop_assert_eq!(fast, reference_spiffe(&id), "{:?}", id);
    }
}

/// How one number of an IPv4 spelling is written.
#[derive(Clone, Copy, Debug)]
enum Radix {
    Decimal,
    Octal {
        extra_zeros: usize,
    },
    Hex {
        upper_prefix: bool,
        upper_digits: bool,
        extra_zeros: usize,
    },
}

fn radix() -> impl Strategy<Value = Radix> {
    prop_oneof![
        Just(Radix::Decimal),
        (0usize..4).prop_map(|extra_zeros| Radix::Octal { extra_zeros }),
        (any::<bool>(), any::<bool>(), 0usize..4).prop_map(
            |(upper_prefix, upper_digits, extra_zeros)| Radix::Hex {
                upper_prefix,
                upper_digits,
                extra_zeros,
            }
        ),
    ]
}

fn spell(value: u32, radix: Radix) -> String {
    match radix {
        Radix::Decimal => value.to_string(),
        Radix::Octal { extra_zeros } => format!("0{}{value:o}", "0".repeat(extra_zeros)),
        Radix::Hex {
            upper_prefix,
            upper_digits,
            extra_zeros,
        } => {
            let prefix = if upper_prefix { "0X" } else { "0x" };
            let zeros = "0".repeat(extra_zeros);
            if upper_digits {
                format!("{prefix}{zeros}{value:X}")
            } else {
                format!("{prefix}{zeros}{value:x}")
            }
        }
    }
}

/// An address written as `parts` numbers (the last filling the remaining bytes), each in its radix.
fn spelled_address() -> impl Strategy<Value = (std::net::Ipv4Addr, String)> {
    (
        any::<u32>(),
        prop::collection::vec(radix(), 1..=4),
        any::<bool>(),
    )
        .prop_map(|(address, radixes, trailing_dot)| {
            let leading = radixes.len() - 1;
            let mut numbers: Vec<u32> = (0..leading)
                .map(|i| (address >> (24 - 8 * i)) & 0xff)
                .collect();
            let last_bits = 32 - 8 * leading;
            numbers.push(if last_bits == 32 {
                address
            } else {
                address & ((1 << last_bits) - 1)
            });
            let mut spelling: Vec<String> = numbers
                .iter()
                .zip(&radixes)
                .map(|(&n, &r)| spell(n, r))
                .collect();
            if trailing_dot {
                spelling.push(String::new());
            }
            (std::net::Ipv4Addr::from(address), spelling.join("."))
        })
}

/// Strings of digits, hex letters, `x` and dots, biased towards number-like shapes.
fn digits_dots_and_x() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-fA-FxX.]{0,24}",
        "[0-9.]{0,24}",
        "((0[xX]?)?[0-9a-fA-F]{0,12}\\.){0,5}(0[xX]?)?[0-9a-fA-F]{0,12}\\.?",
        "[0-9]{1,70}(\\.[0-9]{1,3}){0,3}",
        "[a-z]{1,4}\\.(0[xX])?[0-9]{1,4}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

    #[test]
    fn every_spelling_of_an_ipv4_address_is_that_address((address, spelling) in spelled_address()) {
        prop_assert_eq!(reference_inet_aton(&spelling), Some(address), "the reference: {:?}", spelling);
        let mut scratch = None;
        let ours = normalize_host(&spelling, &mut scratch).map(str::to_owned);
        prop_assert_eq!(ours, Some(address.to_string()), "{:?}", spelling);
    }

    #[test]
    fn number_like_hosts_are_the_reference_address_or_refused(raw in digits_dots_and_x()) {
        let mut scratch = None;
        let ours = normalize_host(&raw, &mut scratch).map(str::to_owned);
        let name = raw.strip_suffix('.').unwrap_or(&raw);
        let ends_in_number = reference_is_number(name.rsplit('.').next().unwrap_or_default());
        match (&ours, reference_inet_aton(&raw)) {
            // Never another address, never a name for an address.
            (Some(host), Some(address)) => prop_assert_eq!(host, &address.to_string(), "{:?}", raw),
            // Not an address to the reference: then a DNS name, and one no other parser reads as a
            // number either.
            (Some(host), None) => {
                prop_assert!(!ends_in_number, "{:?} became {:?}", raw, host);
                prop_assert!(host.parse::<std::net::Ipv4Addr>().is_err(), "{:?} became {:?}", raw, host);
            }
            // Refused although the reference reads an address: only for DNS's length limits.
            (None, Some(_)) => prop_assert!(
                name.len() > 253 || name.split('.').any(|label| label.len() > 63),
                "{:?} refused",
                raw
            ),
            (None, None) => {}
        }
    }
}
