//! Shared by the `rule_memory` examples: load a rule set as the server does and report its cost.
#![allow(clippy::print_stdout, dead_code, unreachable_pub)]

use std::alloc::System;
use std::time::Instant;

use anyhow::Context as _;
use egress_authz::reload::load_policy;
use stats_alloc::{Region, StatsAlloc};

fn status_kib(field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/self/status"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("malformed status line")?
        .parse()?)
}

/// Loads the rules named on the command line and prints the figures; `global` counts heap bytes (-1:
/// not counted).
pub fn run(global: Option<&'static StatsAlloc<System>>, allocator: &str) -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .context("usage: rule_memory RULES_PATH")?;
    let before = status_kib("VmRSS:")?;
    let region = global.map(Region::new);
    let started = Instant::now();
    let policy = load_policy(path.as_ref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let load = started.elapsed();
    let after = status_kib("VmRSS:")?;
    let peak = status_kib("VmHWM:")?;
    // Counted only under the instrumented system allocator.
    let live = region.map_or(-1.0, |region| {
        let heap = region.change();
        heap.bytes_allocated.saturating_sub(heap.bytes_deallocated) as f64 / 1048576.0
    });
    println!(
        r#"{{"allocator":"{allocator}","rules":{},"load_ms":{:.0},"rss_before_mib":{:.1},"rss_after_mib":{:.1},"rss_policy_mib":{:.1},"peak_mib":{:.1},"live_heap_mib":{:.1}}}"#,
        policy.rules().len(),
        load.as_secs_f64() * 1000.0,
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        after.saturating_sub(before) as f64 / 1024.0,
        peak as f64 / 1024.0,
        live,
    );
    drop(policy);
    Ok(())
}
