//! Load time and resident memory of a rule set, as the server holds it:
//! `cargo run --release --example rule_memory -- rules-100k.yaml` (glibc malloc, as the server ships;
//! `rule_memory_mimalloc` is the same with mimalloc, to compare).
//!
//! Runs `load_policy` (read, parse, validate, compile, index) exactly as `serve` does at startup and on
//! every reload, keeps the policy alive, and reports from /proc/self/status the resident memory before
//! and after (VmRSS) and the peak during the load (VmHWM), plus the live heap (bytes allocated and not
//! freed: the policy itself). Linux only.

#[path = "support/rule_memory.rs"]
mod support;

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

/// Counts heap bytes, to tell the policy's live size from what the allocator keeps after parsing.
#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

fn main() -> anyhow::Result<()> {
    support::run(Some(GLOBAL), "glibc")
}
