//! `rule_memory` with mimalloc as the global allocator: what switching the server's allocator would do
//! to its resident memory. `cargo run --release --example rule_memory_mimalloc -- rules-100k.yaml`.

#[path = "support/rule_memory.rs"]
mod support;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    support::run(None, "mimalloc")
}
