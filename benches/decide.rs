//! `cargo bench --bench decide`: `Policy::decide` at 10, 1k, 10k and 100k generated rules, the linear
//! evaluator as the in-run baseline (at sizes where it finishes quickly), and compiling 100k rules.
//! Sample sizes and times are kept small so the whole run takes a few minutes on 2 cores.

use testkit::rules;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use egress_authz::policy::{Policy, SourceFile, compile};
use rules::{generate_rules, sample_requests};

const SIZES: [usize; 4] = [10, 1_000, 10_000, 100_000];
/// The linear evaluator is timed up to this size; beyond, it is just proportionally slower.
const LINEAR_UP_TO: usize = 10_000;

fn mk_policy(n: usize) -> Policy {
    let files = [SourceFile {
        name: format!("generated-{n}.yaml"),
        text: generate_rules(n),
    }];
    compile(&files).unwrap_or_else(|e| panic!("generated rules compile: {e:?}"))
}

fn decide(c: &mut Criterion) {
    for n in SIZES {
        let policy = mk_policy(n);
        let requests = sample_requests(n);
        let mut group = c.benchmark_group(format!("decide/{n}"));
        group
            .sample_size(30)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        for req in &requests {
            let request = req.egress();
            let expected = policy.decide_linear(&request);
            assert_eq!(policy.decide(&request), expected, "{}", req.kind);
            assert_eq!(
                expected.verdict.as_str() == "allow",
                req.allowed,
                "{} at {n}: {expected:?}",
                req.kind
            );
            group.bench_function(BenchmarkId::new("indexed", req.kind), |b| {
                b.iter(|| black_box(policy.decide(black_box(&request))));
            });
            if n <= LINEAR_UP_TO {
                group.bench_function(BenchmarkId::new("linear", req.kind), |b| {
                    b.iter(|| black_box(policy.decide_linear(black_box(&request))));
                });
            }
        }
        group.finish();
    }
}

fn compile_rules(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(8));
    for n in [10_000, 100_000] {
        let files = [SourceFile {
            name: format!("generated-{n}.yaml"),
            text: generate_rules(n),
        }];
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_with_large_drop(|| compile(black_box(&files)).map_err(|e| e.len()));
        });
    }
    group.finish();
}

criterion_group!(benches, decide, compile_rules);
criterion_main!(benches);
