//! `cargo bench --bench compile_styles`: compiling the same 100k generated rules written in block style,
//! in flow style (one rule per line) and as JSON on one line. Locating rules for error messages must be
//! linear in every style: the ratios flow/block and JSON/block, measured in the same run, show it.

use testkit::rules;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use egress_authz::policy::{Policy, SourceFile, compile};
use rules::{generate_rules, generate_rules_flow, generate_rules_json, sample_requests};

const RULES: usize = 100_000;

fn compiled(file: &SourceFile) -> Policy {
    compile(std::slice::from_ref(file))
        .unwrap_or_else(|e| panic!("{} compiles: {:?}", file.name, &e[..e.len().min(3)]))
}

fn compile_styles(c: &mut Criterion) {
    let files = [
        ("block", generate_rules(RULES)),
        ("flow", generate_rules_flow(RULES)),
        ("json", generate_rules_json(RULES)),
    ]
    .map(|(style, text)| {
        (
            style,
            SourceFile {
                name: format!("generated-{RULES}-{style}.yaml"),
                text,
            },
        )
    });
    // The three files are the same rule set: same rules, same decisions (by the same rule; only the
    // line it is on differs).
    let block = compiled(&files[0].1);
    for (style, file) in &files {
        let policy = compiled(file);
        assert_eq!(policy.rules().len(), block.rules().len(), "{style}");
        for request in sample_requests(RULES) {
            let [this, expected] = [&policy, &block].map(|p| {
                let decision = p.decide(&request.egress());
                (
                    decision.verdict,
                    decision.reason,
                    decision.rule.map(|r| r.name.clone()),
                )
            });
            assert_eq!(this, expected, "{style} {}", request.kind);
        }
        eprintln!("{style}: {} bytes", file.text.len());
    }
    let mut group = c.benchmark_group(format!("compile_styles/{RULES}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(8));
    for (style, file) in &files {
        group.bench_function(BenchmarkId::from_parameter(style), |b| {
            b.iter_with_large_drop(|| {
                compile(black_box(std::slice::from_ref(file))).map_err(|e| e.len())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, compile_styles);
criterion_main!(benches);
