//! Load time and resident memory of a rule set, as the server holds it:
//! `cargo run --release --example rule_memory -- rules-100k.yaml`.
//!
//! Runs `load_policy` (read, parse, validate, compile, index) exactly as `serve` does at startup and on
//! every reload, keeps the policy alive, and reports from /proc/self/status the resident memory before
//! and after (VmRSS) and the peak during the load (VmHWM). Linux only.
#![allow(clippy::print_stdout)]

use std::time::Instant;

use anyhow::Context as _;
use egress_authz::reload::load_policy;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

/// Counts heap bytes, to tell the policy's live size from what the allocator keeps after parsing.
#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

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

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .context("usage: rule_memory RULES_PATH")?;
    let before = status_kib("VmRSS:")?;
    let region = Region::new(GLOBAL);
    let started = Instant::now();
    let policy = load_policy(path.as_ref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let load = started.elapsed();
    let after = status_kib("VmRSS:")?;
    let peak = status_kib("VmHWM:")?;
    let heap = region.change();
    let live = heap.bytes_allocated.saturating_sub(heap.bytes_deallocated);
    println!(
        r#"{{"rules":{},"load_ms":{:.0},"rss_before_mib":{:.1},"rss_after_mib":{:.1},"rss_policy_mib":{:.1},"peak_mib":{:.1},"live_heap_mib":{:.1}}}"#,
        policy.rules().len(),
        load.as_secs_f64() * 1000.0,
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        after.saturating_sub(before) as f64 / 1024.0,
        peak as f64 / 1024.0,
        live as f64 / 1048576.0,
    );
    drop(policy);
    Ok(())
}
