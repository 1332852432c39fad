//! Any text as Envoy's `source.principal`. The single-pass SPIFFE ID parser must accept exactly the IDs
//! the straightforward reference of its grammar accepts (`spiffe://<td>/ns/<ns>/sa/<sa>`, see the
//! reference), split them the same way, and report the principal as the ID without its scheme: a
//! lenient reading is how a crafted certificate would borrow another namespace's rights.

#![no_main]

use egress_authz::policy::{Caller, parse_spiffe_id};
use libfuzzer_sys::fuzz_target;

use testkit::reference::reference_spiffe;

fuzz_target!(|data: &[u8]| {
    let id = String::from_utf8_lossy(data);
    let id = id.as_ref();

    let parsed = parse_spiffe_id(id);
    if let Some(identity) = parsed {
        assert_eq!(
            Some(identity.principal),
            id.strip_prefix("spiffe://"),
            "{id:?}"
        );
    }
    let parts = parsed.map(|i| {
        (
            i.trust_domain.to_owned(),
            i.namespace.to_owned(),
            i.service_account.to_owned(),
        )
    });
    assert_eq!(parts, reference_spiffe(id), "{id:?}");

    let expected = match parsed {
        _ if id.is_empty() => Caller::Missing,
        Some(identity) => Caller::Spiffe(identity),
        None => Caller::Malformed,
    };
    assert_eq!(Caller::parse(id), expected, "{id:?}");
});
