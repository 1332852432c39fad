//! The seed corpora in `seeds/<target>/`, built from the project's fixtures: captured Envoy checks
//! (encoded to protobuf, plus the shapes Envoy sends in other configurations), the example, deployed and
//! invalid rule files, and the hosts and SPIFFE IDs the unit tests use. Committed, so a fuzz run starts
//! from realistic inputs without building anything first; this test fails when they are out of date.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::config::core::v3::{
    Address, Pipe, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::TlsSession;
use prost::Message as _;
use testkit::check::{attributes_of, envoy_sample, http_of, raw_header_map};

fn project() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn destination_socket(check: &mut CheckRequest) -> &mut SocketAddress {
    let address = attributes_of(check)
        .destination
        .get_or_insert_with(Default::default)
        .address
        .get_or_insert_with(Default::default);
    if !matches!(address.address, Some(address::Address::SocketAddress(_))) {
        address.address = Some(address::Address::SocketAddress(SocketAddress::default()));
    }
    match &mut address.address {
        Some(address::Address::SocketAddress(socket)) => socket,
        _ => unreachable!("set just above"),
    }
}

fn check_request_seeds() -> Vec<Seed> {
    let http_check = envoy_sample("http");
    let tcp_check = envoy_sample("tcp");
    let mut seeds = vec![
        ("envoy-1.40-http".to_owned(), http_check.clone()),
        ("envoy-1.40-tcp".to_owned(), tcp_check.clone()),
        ("empty".to_owned(), CheckRequest::default()),
    ];

    // `encode_raw_headers: true`: the headers travel in `header_map` with `raw_value`, and Envoy leaves
    // `host` and `path` empty.
    let mut raw = http_check.clone();
    let http_raw = http_of(&mut raw);
    let headers = std::mem::take(&mut http_raw.headers);
    http_raw.host.clear();
    http_raw.path.clear();
    http_raw.header_map = Some(raw_header_map(
        headers.into_iter().collect::<BTreeMap<_, _>>(),
    ));
    seeds.push(("http-raw-header-map".to_owned(), raw));

    // No `host`: the authority comes from the `:authority` header, here with a port and an IPv4 spelling.
    let mut no_host = http_check.clone();
    let http_no_host = http_of(&mut no_host);
    http_no_host.host.clear();
    http_no_host
        .headers
        .insert(":authority".to_owned(), "0x7f.1:18080".to_owned());
    seeds.push(("http-authority-header".to_owned(), no_host));

    // A caller from the second trust domain, to an IPv6 literal.
    let mut partner = http_check.clone();
    attributes_of(&mut partner)
        .source
        .get_or_insert_with(Default::default)
        .principal = "spiffe://partner.example/ns/ops/sa/backup".to_owned();
    http_of(&mut partner).host = "[2001:DB8::1]:443".to_owned();
    attributes_of(&mut partner).tls_session = None;
    seeds.push(("http-partner-ipv6".to_owned(), partner));

    let mut named_port = tcp_check.clone();
    destination_socket(&mut named_port).port_specifier =
        Some(socket_address::PortSpecifier::NamedPort("https".to_owned()));
    seeds.push(("tcp-named-port".to_owned(), named_port));

    let mut pipe = tcp_check.clone();
    attributes_of(&mut pipe)
        .destination
        .get_or_insert_with(Default::default)
        .address = Some(Address {
        address: Some(address::Address::Pipe(Pipe {
            path: "/var/run/gateway.sock".to_owned(),
            mode: 0,
        })),
    });
    seeds.push(("tcp-pipe-address".to_owned(), pipe));

    // An Istio cluster SNI, which is skipped in favour of `destination.service`.
    let mut cluster_sni = tcp_check;
    attributes_of(&mut cluster_sni).tls_session = Some(TlsSession {
        sni: "outbound_.443_._.istio-egressgateway.istio-system.svc.cluster.local".to_owned(),
    });
    seeds.push(("tcp-istio-cluster-sni".to_owned(), cluster_sni));

    seeds
        .into_iter()
        .map(|(name, check)| (format!("{name}.pb"), check.encode_to_vec()))
        .collect()
}

/// Every rule file the project ships or tests with, valid and invalid.
fn rule_file_seeds() -> Vec<Seed> {
    let mut seeds = Vec::new();
    for (dir, prefix) in [
        ("examples/rules", "example"),
        ("deploy/rules", "deploy"),
        ("tests/fixtures/invalid", "invalid"),
        ("fuzz/src", "fuzz"),
    ] {
        let dir = project().join(dir);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.ends_with(".yaml") || name.ends_with(".yml") {
                seeds.push((format!("{prefix}-{name}"), read(&path)));
            }
        }
    }
    seeds
}

/// Hosts, authorities and SNIs from the unit and property tests: names in every case, every IPv4
/// spelling, IPv6 literals, near misses and things that are no host.
const HOSTS: &[&str] = &[
    "developers.google.com",
    "Developers.Google.COM.",
    "api.allowed.example.com:443",
    "developers.google.com..",
    "127.0.0.1",
    "127.1",
    "2130706433",
    "0X7F000001",
    "0x7F.0x0.0X0.0x1",
    "0177.0.0.1",
    "00000000000000177.0.0.1",
    "1.2.65535",
    "4294967295",
    "1.2.3.4.5",
    "256.0.0.1",
    "08.0.0.1",
    "0x.0.0.1",
    "example.0x10",
    "1.2.3.4a",
    "10.0.0.1.example.com",
    "[0:0::1]",
    "2001:DB8::1",
    "[::ffff:10.0.0.1]:8443",
    "[::1",
    "a..b",
    "-a.com",
    "a_b.example",
    "exa%6dple.com",
    "*.a.com",
    "é.com:443",
    "user@a.com",
    "a.com:https",
    "outbound_.443_._.istio-egressgateway.istio-system.svc.cluster.local",
    "outbound_.9080_.v1_.reviews.default.svc.cluster.local",
];

/// SPIFFE IDs from the identity tests: well-formed ones and every way of being almost one.
const SPIFFE_IDS: &[&str] = &[
    "spiffe://cluster.local/ns/otherns/sa/sleep-google",
    "spiffe://cluster.local/ns/team-a/sa/billing",
    "spiffe://partner.example/ns/ops/sa/Backup_1.x",
    "cluster.local/ns/default/sa/sleep",
    "SPIFFE://cluster.local/ns/default/sa/sleep",
    "spiffe://Cluster.local/ns/default/sa/sleep",
    "spiffe:///ns/default/sa/sleep",
    "spiffe://cluster.local/ns/default/sa/",
    "spiffe://cluster.local/ns//sa/sleep",
    "spiffe://cluster.local/ns/default/sa/sleep/extra",
    "spiffe://cluster.local/sa/sleep/ns/default",
    "spiffe://cluster.local/ns/../sa/sleep",
    "spiffe://cluster.local/ns/./sa/..",
    "spiffe://cluster.local/ns/def%61ult/sa/sleep",
    "spiffe://cluster.local:443/ns/default/sa/sleep",
    "spiffe://user@cluster.local/ns/default/sa/sleep",
    "spiffe://cluster.local/ns/default/sa/sleep?x=1",
    "spiffe://cluster.local/ns/default/sa/sl eep",
];

fn text_seeds(texts: &[&str]) -> Vec<Seed> {
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| (format!("seed-{i:02}"), text.as_bytes().to_vec()))
        .collect()
}

/// A seed's file name and contents.
type Seed = (String, Vec<u8>);

fn all_seeds() -> Vec<(&'static str, Vec<Seed>)> {
    vec![
        ("check_request_bytes", check_request_seeds()),
        ("rule_file", rule_file_seeds()),
        ("host", text_seeds(HOSTS)),
        ("spiffe", text_seeds(SPIFFE_IDS)),
    ]
}

#[test]
fn seeds_are_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let write = std::env::var_os("WRITE_SEEDS").is_some();
    for (target, seeds) in all_seeds() {
        let dir = root.join(target);
        let wanted: BTreeMap<_, _> = seeds.into_iter().collect();
        if write {
            // Start empty, so seeds whose source is gone do not linger.
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create the seed directory");
            for (name, bytes) in &wanted {
                std::fs::write(dir.join(name), bytes).expect("write a seed");
            }
            continue;
        }
        let present: BTreeMap<String, Vec<u8>> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .map(|entry| {
                let path = entry.expect("a directory entry").path();
                let name = path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                (name, read(&path))
            })
            .collect();
        let same = |(name, bytes): (&String, &Vec<u8>),
                    (other_name, other): (&String, &Vec<u8>)| {
            // `headers` is a map, which prost encodes in hash order: compare the messages.
            name == other_name
                && if name.ends_with(".pb") {
                    CheckRequest::decode(bytes.as_slice()).ok()
                        == CheckRequest::decode(other.as_slice()).ok()
                } else {
                    bytes == other
                }
        };
        assert!(
            present.len() == wanted.len() && present.iter().zip(&wanted).all(|(a, b)| same(a, b)),
            "seeds/{target} is out of date; rewrite it with `WRITE_SEEDS=1 cargo test --lib` in fuzz/"
        );
    }
}
