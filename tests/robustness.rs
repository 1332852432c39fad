//! Bad input of every kind must give a decision or a located error, never a panic: arbitrary rule-file
//! text through `compile`, and arbitrary CheckRequest fields through `decide`, `explain` and the gRPC
//! adapter (which must always produce a response with an explicit status).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use egress_authz::grpc::convert::{egress_request, to_check_response};
use egress_authz::policy::{
    EgressRequest, HttpRequest, NormalizedHost, SourceFile, Verdict, authority_host, compile,
    is_valid_dns_name, normalize_authority, normalize_host, parse_spiffe_id,
};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use proptest::prelude::*;
use prost::Message as _;

mod reference;
use reference::{
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
    fn any_bytes_as_a_check_request_are_answered(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let policy = policy();
        // Whatever prost accepts must convert and be decided; whatever it rejects never reaches us.
        if let Ok(check) = CheckRequest::decode(bytes.as_slice()) {
            let request = egress_request(&check);
            let response = to_check_response(&policy.decide(&request), request.protocol());
            prop_assert!(response.status.is_some());
        }
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
