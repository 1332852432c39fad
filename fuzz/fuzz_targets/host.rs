//! Any text as a host, an authority or an SNI. The hand-rolled single-pass normaliser must agree with
//! the straightforward reference the property tests use (split, parse, compare): an odd spelling that
//! the two read differently is how a request would slip past an exact DENY rule.

#![no_main]

use egress_authz::policy::{
    NormalizedHost, authority_host, is_valid_dns_name, normalize_authority, normalize_host,
};
use libfuzzer_sys::fuzz_target;

use testkit::reference::{reference_dns_name, reference_normalize_host};

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    let raw = raw.as_ref();

    let mut scratch = None;
    let host = normalize_host(raw, &mut scratch);
    assert_eq!(
        host,
        reference_normalize_host(raw).as_deref(),
        "host {raw:?}"
    );
    let inline = NormalizedHost::parse(raw);
    assert_eq!(
        inline.as_ref().map(NormalizedHost::as_str),
        host,
        "inline {raw:?}"
    );

    // Normal forms are fixed points: a rule host normalised at compile time meets the same string.
    if let Some(host) = host {
        let mut again = None;
        assert_eq!(normalize_host(host, &mut again), Some(host), "{raw:?}");
    }

    let name = raw.strip_suffix('.').unwrap_or(raw);
    assert_eq!(
        is_valid_dns_name(name),
        reference_dns_name(name),
        "name {name:?}"
    );

    // The authority shortcut must give exactly what splitting off the port and normalising gives.
    let mut general_scratch = None;
    let general = authority_host(raw).and_then(|host| normalize_host(host, &mut general_scratch));
    let mut scratch = None;
    assert_eq!(
        normalize_authority(raw, &mut scratch),
        general,
        "authority {raw:?}"
    );
});
