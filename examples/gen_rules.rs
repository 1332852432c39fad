//! Writes the generated benchmark rule set (benches/support/rules.rs) to stdout:
//! `cargo run --release --example gen_rules -- 10000 > rules-10k.yaml`.

#[path = "../benches/support/rules.rs"]
mod rules;

use std::io::Write as _;

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "10000".into())
        .parse()?;
    std::io::stdout()
        .lock()
        .write_all(rules::generate_rules(n).as_bytes())?;
    Ok(())
}
