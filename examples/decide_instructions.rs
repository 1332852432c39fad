//! Instructions per `Policy::decide` on the benchmark's generated rule sets, for counting under callgrind.
//! Instruction counts do not depend on what else the machine is doing, so they show the effect of a
//! change where wall-clock medians on a shared machine drift by 2x. `scripts/decide-instructions.sh` runs
//! this under `valgrind --tool=callgrind`, collecting only inside the
//! `measure_<kind>` functions, one per request kind.
//!
//! `cargo run --release --example decide_instructions -- RULES ITERATIONS` prints the request kinds in the
//! order they are measured.
#![allow(clippy::print_stdout)]

use testkit::rules;

use std::hint::black_box;

use egress_authz::policy::{EgressRequest, Policy, SourceFile, compile};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().unwrap_or_else(|| "10000".into()).parse()?;
    let iterations: u32 = args.next().unwrap_or_else(|| "1000".into()).parse()?;
    let policy = compile(&[SourceFile {
        name: format!("generated-{n}.yaml"),
        text: rules::generate_rules(n),
    }])
    .map_err(|e| anyhow::anyhow!("generated rules do not compile: {e:?}"))?;
    for sample in rules::sample_requests(n) {
        let request = sample.egress();
        let allowed = policy.decide(&request).verdict.as_str() == "allow";
        anyhow::ensure!(allowed == sample.allowed, "{} decided wrongly", sample.kind);
        // Warm up outside the measured calls, so the count is the steady state's.
        black_box(policy.decide(&request));
        let measure = match sample.kind {
            "allow_exact_tcp" => measure_allow_exact_tcp,
            "allow_wildcard_http" => measure_allow_wildcard_http,
            "deny_wildcard_http" => measure_deny_wildcard_http,
            "allow_path_http" => measure_allow_path_http,
            "no_match_tcp" => measure_no_match_tcp,
            other => anyhow::bail!("no measuring function for request kind {other}"),
        };
        measure(&policy, &request, iterations);
        println!("{}", sample.kind);
    }
    Ok(())
}

/// Defines the functions callgrind collects in: one per request kind, named after it, so each kind's
/// count is reported on its own line.
macro_rules! measuring_functions {
    ($($name:ident),* $(,)?) => {$(
        #[inline(never)]
        fn $name(policy: &Policy, request: &EgressRequest<'_>, iterations: u32) {
            // A body of its own, or the linker folds the identical functions into one.
            black_box(stringify!($name));
            for _ in 0..iterations {
                black_box(policy.decide(black_box(request)));
            }
        }
    )*};
}

measuring_functions!(
    measure_allow_exact_tcp,
    measure_allow_wildcard_http,
    measure_deny_wildcard_http,
    measure_allow_path_http,
    measure_no_match_tcp,
);
