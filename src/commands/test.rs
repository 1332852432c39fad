//! `egress-authz test`: policy test cases against rule files. Reads the test files and the rules, hands
//! them to `rule_tests`, and prints the report in the manner of `cargo test` (or JSON, or JUnit XML).
//!
//! Every test file is read and checked, and every rule set loaded, before any case runs: one bad file
//! stops the whole run (exit 2) with all the errors found, so a CI job never reports a partial pass.
#![allow(clippy::print_stdout)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{explanation_json, explanation_text};
use crate::cli::TestArgs;
use crate::policy::{Location, Policy};
use crate::reload::{LoadError, load_policy_with_tenants};
use crate::rule_tests::{
    CaseResult, Coverage, InvalidTestFile, TestFile, check_expectations, coverage, rule_file,
    run_file, to_junit_xml,
};

/// Exit code when a case failed, or a rule is uncovered under `--require-coverage`.
const EXIT_FAILED: u8 = 1;
/// Exit code when a test file or a rule set cannot be used; no case was run.
const EXIT_INVALID: u8 = 2;

/// The test files and the rule sets they run against, all read and checked.
struct Suite {
    files: Vec<TestFile>,
    /// The rule sets: the path as shown, and the policy.
    rule_sets: Vec<(String, Policy)>,
    /// For each test file, the index of its rule set.
    rule_set_of: Vec<usize>,
}

/// Runs the test files; exit 0 when every case passed, 1 on a failed case (or an uncovered rule with
/// `--require-coverage`), 2 on a bad test file or rule set.
pub fn run(args: &TestArgs) -> ExitCode {
    let suite = match read_suite(args) {
        Ok(suite) => suite,
        Err(errors) => {
            errors.iter().for_each(|error| eprintln!("{error}"));
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let results: Vec<Vec<CaseResult<'_>>> = suite
        .files
        .iter()
        .zip(&suite.rule_set_of)
        .map(|(file, &set)| run_file(&suite.rule_sets[set].1, file))
        .collect();
    let coverages: Vec<Coverage<'_>> = suite
        .rule_sets
        .iter()
        .enumerate()
        .map(|(set, (_, policy))| {
            let of_set = results
                .iter()
                .zip(&suite.rule_set_of)
                .filter(|(_, of)| **of == set)
                .flat_map(|(results, _)| results);
            coverage(policy, of_set)
        })
        .collect();
    let report = Report {
        suite: &suite,
        results: &results,
        coverages: &coverages,
    };
    if args.json {
        println!("{:#}", report.to_json());
    } else {
        report.print(args.require_coverage);
    }
    if let Some(junit) = &args.junit {
        let suites: Vec<(&str, &[CaseResult<'_>])> = suite
            .files
            .iter()
            .zip(&results)
            .map(|(file, results)| (file.name.as_str(), results.as_slice()))
            .collect();
        let xml = to_junit_xml(&suites, failure_text);
        if let Err(error) = std::fs::write(junit, xml) {
            eprintln!(
                "{}: cannot write the JUnit report: {error}",
                junit.display()
            );
            return ExitCode::from(EXIT_INVALID);
        }
    }
    let uncovered = report.uncovered();
    if report.failed() > 0 || (args.require_coverage && uncovered > 0) {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

/// Reads every test file and loads every rule set they name (each once), or returns every error found.
fn read_suite(args: &TestArgs) -> Result<Suite, Vec<String>> {
    let mut errors = Vec::new();
    let mut files = Vec::new();
    let mut rules_paths = Vec::new();
    for path in &args.files {
        let name = path.display().to_string();
        let parsed = std::fs::read_to_string(path)
            .map_err(|error| format!("{name}: cannot read: {error}"))
            .and_then(|text| TestFile::parse(&name, &text).map_err(|e| e.to_string()));
        let file = match parsed {
            Ok(file) => file,
            Err(error) => {
                errors.push(error);
                continue;
            }
        };
        match rules_path(args.rules.as_deref(), path, &file) {
            Ok(rules) => rules_paths.push(rules),
            Err(error) => {
                errors.push(error.to_string());
                continue;
            }
        }
        files.push(file);
    }
    // Each rule set once, in the order first named: files naming the same one share its coverage.
    // The test file that first named it, for an error that the rule files cannot locate.
    let mut distinct: Vec<(PathBuf, &str)> = Vec::new();
    let mut seen = BTreeSet::new();
    for (rules, file) in rules_paths.iter().zip(&files) {
        if seen.insert(same_file_key(rules)) {
            distinct.push((rules.clone(), &file.name));
        }
    }
    let mut rule_sets = Vec::new();
    let mut loaded_keys = Vec::new();
    for (rules, named_by) in distinct {
        match load_policy_with_tenants(&rules, args.tenant_rules.as_deref()) {
            Ok(policy) => {
                loaded_keys.push(same_file_key(&rules));
                rule_sets.push((rules.display().to_string(), policy));
            }
            Err(LoadError::Invalid(compile_errors)) => {
                errors.extend(compile_errors.iter().map(ToString::to_string));
            }
            Err(error) if args.rules.is_some() => {
                errors.push(format!("--rules: cannot load: {error}"));
            }
            Err(error) => errors.push(format!("{named_by}: rules: cannot load: {error}")),
        }
    }
    // A file whose rules failed to load has no rule set; its expectations cannot be checked.
    let rule_set_of: Vec<Option<usize>> = rules_paths
        .iter()
        .map(|rules| {
            let key = same_file_key(rules);
            loaded_keys.iter().position(|k| *k == key)
        })
        .collect();
    for (file, set) in files.iter().zip(&rule_set_of) {
        if let Some((_, policy)) = set.and_then(|set| rule_sets.get(set)) {
            errors.extend(
                check_expectations(policy, file)
                    .iter()
                    .map(ToString::to_string),
            );
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let rule_set_of = rule_set_of.into_iter().flatten().collect();
    Ok(Suite {
        files,
        rule_sets,
        rule_set_of,
    })
}

/// The rules a test file runs against: `--rules`, else its `rules:` relative to its own directory.
fn rules_path(
    flag: Option<&Path>,
    test_file: &Path,
    parsed: &TestFile,
) -> Result<PathBuf, InvalidTestFile> {
    if let Some(rules) = flag {
        return Ok(rules.to_path_buf());
    }
    let Some(rules) = &parsed.rules else {
        return Err(InvalidTestFile {
            location: Location {
                file: parsed.name.clone(),
                line: 1,
                column: 1,
            },
            message: "no `rules:` in the test file, and no --rules given".to_owned(),
        });
    };
    let directory = test_file.parent().unwrap_or_else(|| Path::new(""));
    Ok(directory.join(rules))
}

/// Two spellings of one path (`./a.yaml`, `a.yaml`) name one rule set.
fn same_file_key(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The body of a failed case's report: what differed, then `explain`'s table.
fn failure_text(result: &CaseResult<'_>) -> String {
    let mut text = String::new();
    for difference in result.differences() {
        text.push_str(&difference);
        text.push('\n');
    }
    text.push_str("explanation:\n");
    for line in explanation_text(&result.explanation, result.protocol.as_str()).lines() {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// Everything a run produced, for printing.
struct Report<'r, 'a> {
    suite: &'r Suite,
    results: &'r [Vec<CaseResult<'a>>],
    coverages: &'r [Coverage<'a>],
}

impl Report<'_, '_> {
    fn cases(&self) -> impl Iterator<Item = &CaseResult<'_>> {
        self.results.iter().flatten()
    }

    fn failed(&self) -> usize {
        self.cases().filter(|r| !r.passed()).count()
    }

    fn uncovered(&self) -> usize {
        self.coverages.iter().map(|c| c.uncovered.len()).sum()
    }

    /// `cargo test`'s layout, per test file, then coverage per rule set, then the total.
    fn print(&self, require_coverage: bool) {
        for (file, results) in self.suite.files.iter().zip(self.results) {
            print_file(file, results);
        }
        for ((rules, policy), coverage) in self.suite.rule_sets.iter().zip(self.coverages) {
            let total = policy.rules().len();
            println!(
                "coverage of {rules}: {} of {total} rule(s) decided a case",
                coverage.covered.len()
            );
            if !coverage.uncovered.is_empty() {
                println!("uncovered rules:");
                let width = coverage
                    .uncovered
                    .iter()
                    .map(|r| r.name.len())
                    .max()
                    .unwrap_or(0);
                for rule in &coverage.uncovered {
                    let file = rule_file(policy, rule);
                    println!("  {:width$}  {file}:{}", rule.name, rule.origin.line);
                }
            }
        }
        if self.suite.files.len() > 1 {
            let failed = self.failed();
            let passed = self.cases().count() - failed;
            println!(
                "\ntotal: {}. {passed} passed; {failed} failed ({} files)",
                outcome(failed),
                self.suite.files.len()
            );
        }
        let uncovered = self.uncovered();
        if require_coverage && uncovered > 0 {
            println!("error: {uncovered} rule(s) decided no case (--require-coverage)");
        }
    }

    /// The one JSON document (schema in the README, "Policy tests").
    fn to_json(&self) -> serde_json::Value {
        let files: Vec<_> = self
            .suite
            .files
            .iter()
            .zip(self.results)
            .zip(&self.suite.rule_set_of)
            .map(|((file, results), &set)| {
                let (rules, policy) = &self.suite.rule_sets[set];
                let cases: Vec<_> = results.iter().map(|r| case_json(r, policy)).collect();
                let failed = results.iter().filter(|r| !r.passed()).count();
                serde_json::json!({
                    "file": file.name,
                    "rules": rules,
                    "passed": results.len() - failed,
                    "failed": failed,
                    "cases": cases,
                })
            })
            .collect();
        let entry = |rules: &str, policy: &Policy, rule: &crate::policy::Rule| {
            serde_json::json!({
                "rule": rule.name, "file": rule_file(policy, rule), "line": rule.origin.line, "rules": rules,
            })
        };
        let (mut covered, mut uncovered) = (Vec::new(), Vec::new());
        for ((rules, policy), coverage) in self.suite.rule_sets.iter().zip(self.coverages) {
            covered.extend(coverage.covered.iter().map(|r| entry(rules, policy, r)));
            uncovered.extend(coverage.uncovered.iter().map(|r| entry(rules, policy, r)));
        }
        let failed = self.failed();
        let cases = self.cases().count();
        serde_json::json!({
            "result": outcome(failed),
            "files": files,
            "coverage": { "covered": covered, "uncovered": uncovered },
            "totals": {
                "files": self.suite.files.len(),
                "cases": cases,
                "passed": cases - failed,
                "failed": failed,
                "rules": covered.len() + uncovered.len(),
                "covered": covered.len(),
                "uncovered": uncovered.len(),
            },
        })
    }
}

/// One test file's part of the text report.
fn print_file(file: &TestFile, results: &[CaseResult<'_>]) {
    println!("\nrunning {} case(s) from {}", results.len(), file.name);
    for result in results {
        let status = if result.passed() { "ok" } else { "FAILED" };
        println!("test {} ... {status}", result.case.name);
    }
    let failures: Vec<_> = results.iter().filter(|r| !r.passed()).collect();
    if !failures.is_empty() {
        println!("\nfailures:\n");
        for result in &failures {
            println!("---- {} ({}) ----", result.case.name, result.case.location);
            print!("{}", failure_text(result));
            println!();
        }
        println!("failures:");
        for result in &failures {
            println!("    {}", result.case.name);
        }
    }
    let failed = failures.len();
    println!(
        "\ntest result: {}. {} passed; {failed} failed\n",
        outcome(failed),
        results.len() - failed
    );
}

fn outcome(failed: usize) -> &'static str {
    if failed == 0 { "ok" } else { "FAILED" }
}

/// A case in the JSON document: the explanation only for a failed case, to keep passing runs short.
fn case_json(result: &CaseResult<'_>, policy: &Policy) -> serde_json::Value {
    let expect = &result.case.expect;
    let decision = &result.explanation.decision;
    let explanation = (!result.passed()).then(|| {
        explanation_json(
            &result.explanation,
            result.protocol.as_str(),
            policy.digest(),
        )
    });
    serde_json::json!({
        "name": result.case.name,
        "line": result.case.location.line,
        "passed": result.passed(),
        "expected": {
            "decision": expect.decision.as_str(),
            "reason": expect.reason.map(|r| r.as_str()),
            "rule": expect.rule,
        },
        "actual": {
            "decision": decision.verdict.as_str(),
            "reason": decision.reason.as_str(),
            "rule": decision.rule.map(|rule| &rule.name),
            "dry_run": decision.dry_run.map(|d| serde_json::json!({"rule": d.rule.name, "decision": d.verdict.as_str()})),
        },
        "differences": result.differences(),
        "explanation": explanation,
    })
}
