//! `Policy::decide` allocates nothing on the common path: principal parsing, host normalisation, the
//! index lookups and matching all borrow or use inline buffers. Proven under a counting global allocator
//! (`stats_alloc`, so this crate needs no `unsafe`). One test per file: the counter is process-wide.

use testkit::rules;

use std::alloc::System;

use egress_authz::policy::{EgressRequest, HttpRequest, SourceFile, compile};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn decide_does_not_allocate() {
    let mut text = rules::generate_rules(2_000);
    // A dry-run rule, so the dry-run pass is covered too.
    text.push_str(
        "- name: dry-run-any\n  dryRun: true\n  action: DENY\n  from:\n    namespaces: [\"*\"]\n",
    );
    let policy = compile(&[SourceFile {
        name: "rules.yaml".into(),
        text,
    }])
    .unwrap();
    let mut requests: Vec<EgressRequest<'_>> = Vec::new();
    let samples = rules::sample_requests(2_000);
    requests.extend(samples.iter().map(rules::SampleRequest::egress));
    // The uncommon paths too: IP literals (formatted into an inline buffer), refused requests.
    let odd = [
        EgressRequest {
            destination_service: "[2001:DB8::1]",
            principal: "spiffe://x/ns/a/sa/b",
            ..Default::default()
        },
        EgressRequest {
            destination_service: "10.0.0.1",
            ..Default::default()
        },
        // An IPv4 address in a short hex spelling: parsed and rewritten inline too.
        EgressRequest {
            http: Some(HttpRequest {
                authority: "0x7f.1:8080",
                method: "GET",
                path: "/",
            }),
            ..Default::default()
        },
        EgressRequest {
            destination_service: "not a host",
            ..Default::default()
        },
        EgressRequest {
            http: Some(HttpRequest {
                authority: "Developers.Google.com.:443",
                method: "GET",
                path: "/",
            }),
            sni: "evil.example.com",
            principal: "garbage",
            ..Default::default()
        },
    ];
    requests.extend(odd);

    // Warm up (lazy statics, if any), then count.
    for r in &requests {
        std::hint::black_box(policy.decide(r));
    }
    let region = Region::new(GLOBAL);
    let mut decided = 0;
    for _ in 0..100 {
        for r in &requests {
            std::hint::black_box(policy.decide(std::hint::black_box(r)));
            decided += 1;
        }
    }
    let stats = region.change();
    assert!(decided > 0);
    assert_eq!(
        (
            stats.allocations,
            stats.reallocations,
            stats.bytes_allocated
        ),
        (0, 0, 0),
        "decide allocated over {decided} decisions: {stats:?}"
    );
}
