//! Writes the generated benchmark rule set (testkit/src/rules.rs) to stdout:
//! `cargo run --release --example gen_rules -- 10000 > rules-10k.yaml`; a second argument `flow` or
//! `json` writes the same rules in that style (block style otherwise).

use testkit::rules;

use std::io::Write as _;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().unwrap_or_else(|| "10000".into()).parse()?;
    let text = match args.next().as_deref() {
        None | Some("block") => rules::generate_rules(n),
        Some("flow") => rules::generate_rules_flow(n),
        Some("json") => rules::generate_rules_json(n),
        Some(other) => anyhow::bail!("unknown style {other:?}: block, flow or json"),
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}
