//! Heap bytes per flow key of the traffic inventory:
//! `cargo run --release --example traffic_memory -- 100000`.
//!
//! Records N distinct flows (200 namespaces of 5 service accounts each, each calling its own hosts on 443,
//! decided by a real rule set so that about half the keys name a rule) and reports the live heap the
//! inventory holds, per key, from a counting allocator.

#![allow(clippy::print_stdout)] // a measuring tool: its output is the point

use std::sync::Arc;

use egress_authz::metrics::Metrics;
use egress_authz::policy::{EgressRequest, HttpRequest, SourceFile, compile};
use egress_authz::traffic::TrafficInventory;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const RULES: &str = "defaultAction: DENY\nrules:\n- name: allow-partner-apis\n  to:\n    hosts: ['**.partner-api.com']\n";

fn main() -> anyhow::Result<()> {
    let flows: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(100_000);
    let policy = compile(&[SourceFile {
        name: "rules.yaml".into(),
        text: RULES.into(),
    }])
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let requests: Vec<(String, String)> = (0..flows)
        .map(|i| {
            let caller = format!(
                "spiffe://cluster.local/ns/team-{:03}/sa/service-{}",
                i % 200,
                (i / 200) % 5
            );
            let domain = if i % 2 == 0 {
                "partner-api.com"
            } else {
                "example.org"
            };
            (caller, format!("endpoint-{i}.{domain}"))
        })
        .collect();
    let region = Region::new(GLOBAL);
    let inventory = Arc::new(TrafficInventory::new(flows, Metrics::disabled()));
    for (principal, host) in &requests {
        let request = EgressRequest {
            principal,
            http: Some(HttpRequest {
                authority: host,
                method: "GET",
                path: "/",
            }),
            port: Some(443),
            ..EgressRequest::default()
        };
        inventory.record(&policy.decide(&request), request.protocol());
    }
    let stats = region.change();
    let live = stats.bytes_allocated as i64 - stats.bytes_deallocated as i64
        + stats.bytes_reallocated as i64;
    println!(
        "{} flow keys: live heap {:.1} MiB, {:.0} bytes per key",
        inventory.len(),
        live as f64 / (1024.0 * 1024.0),
        live as f64 / inventory.len() as f64
    );
    Ok(())
}
