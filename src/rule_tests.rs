//! Policy unit tests (`egress-authz test`): test files of requests and expected decisions, run against a
//! rule set, with which rules no case exercised.
//!
//! Pure: the test files' text and the compiled policies are handed in, and results, coverage and JUnit
//! XML come back; `commands::test` reads the files, loads the rules and prints. This module uses only
//! `policy`.
//!
//! A case's request is built exactly as `explain` builds one from its flags, and decided with
//! [`Policy::explain`], so a failure can show each rule's outcome. A rule is *covered* when some case
//! had it as the deciding rule, or, for a dry-run rule, as the dry-run rule the decision reported.

mod junit;
mod spec;
#[cfg(test)]
mod tests;

use crate::policy::{EgressRequest, Explanation, HttpRequest, Policy, Protocol, Rule};

pub use junit::to_junit_xml;
pub use spec::{DEFAULT_METHOD, DEFAULT_PATH, Expectation, InvalidTestFile, TestCase, TestFile};

/// A case the rule set does not decide as expected: one part that differs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// Expected allow, got deny, or the other way round.
    Decision,
    /// The reason code differs.
    Reason,
    /// Another rule decided, or none did (`""` expected, or a rule expected and none decided).
    Rule,
}

/// One case run.
#[derive(Clone, Debug)]
pub struct CaseResult<'a> {
    /// The case.
    pub case: &'a TestCase,
    /// HTTP or TCP, as the case's request was sent.
    pub protocol: Protocol,
    /// The decision and each rule's outcome.
    pub explanation: Explanation<'a>,
    /// What differs from the expectation, in the order decision, reason, rule; empty when it passed.
    pub mismatches: Vec<Mismatch>,
}

impl CaseResult<'_> {
    /// True when the decision is as expected.
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }

    /// The deciding rule's name, `""` when none decided (as `expect.rule` spells it).
    pub fn actual_rule(&self) -> &str {
        self.explanation
            .decision
            .rule
            .map_or("", |rule| rule.name.as_str())
    }

    /// One line per mismatch: `decision: expected allow, got deny`.
    pub fn differences(&self) -> Vec<String> {
        let expect = &self.case.expect;
        let decision = &self.explanation.decision;
        let shown = |rule: &str| {
            if rule.is_empty() {
                "no rule".to_owned()
            } else {
                format!("rule {rule}")
            }
        };
        self.mismatches
            .iter()
            .map(|mismatch| match mismatch {
                Mismatch::Decision => format!(
                    "decision: expected {}, got {}",
                    expect.decision.as_str(),
                    decision.verdict.as_str()
                ),
                Mismatch::Reason => format!(
                    "reason: expected {}, got {}",
                    expect.reason.map_or("-", |r| r.as_str()),
                    decision.reason.as_str()
                ),
                Mismatch::Rule => format!(
                    "rule: expected {}, got {}",
                    shown(expect.rule.as_deref().unwrap_or_default()),
                    shown(self.actual_rule())
                ),
            })
            .collect()
    }
}

/// The request a case describes, built as `explain` builds it from its flags: `host` is the HTTP
/// `:authority` unless `tcp`; `sni` alone is a TCP check; `host` and `sni` on HTTP is the SNI an HTTP
/// check carries (so `requireSniMatchesHost` applies).
pub fn request_of(case: &TestCase) -> EgressRequest<'_> {
    let sni = case.sni.as_deref().unwrap_or_default();
    let tcp = case.tcp || case.host.is_none();
    EgressRequest {
        http: (!tcp).then(|| HttpRequest {
            authority: case.host.as_deref().unwrap_or_default(),
            method: case.method.as_deref().unwrap_or(DEFAULT_METHOD),
            path: case.path.as_deref().unwrap_or(DEFAULT_PATH),
        }),
        principal: &case.principal,
        destination_service: if tcp {
            case.host.as_deref().unwrap_or(sni)
        } else {
            ""
        },
        sni,
        port: case.port,
    }
}

/// Runs one case against `policy`.
pub fn run_case<'a>(policy: &'a Policy, case: &'a TestCase) -> CaseResult<'a> {
    let request = request_of(case);
    let explanation = policy.explain(&request);
    let decision = &explanation.decision;
    let expect = &case.expect;
    let actual_rule = decision.rule.map_or("", |rule| rule.name.as_str());
    let mismatches = [
        (decision.verdict != expect.decision).then_some(Mismatch::Decision),
        expect
            .reason
            .filter(|reason| *reason != decision.reason)
            .map(|_| Mismatch::Reason),
        expect
            .rule
            .as_deref()
            .filter(|rule| *rule != actual_rule)
            .map(|_| Mismatch::Rule),
    ]
    .into_iter()
    .flatten()
    .collect();
    CaseResult {
        case,
        protocol: request.protocol(),
        explanation,
        mismatches,
    }
}

/// Runs every case of `file` against `policy`, in file order.
pub fn run_file<'a>(policy: &'a Policy, file: &'a TestFile) -> Vec<CaseResult<'a>> {
    file.cases
        .iter()
        .map(|case| run_case(policy, case))
        .collect()
}

/// Expectations that can never hold against `policy`: a rule name it does not have, a dry-run rule
/// (which never decides), or a rule whose action is not the expected decision. Located at the case.
pub fn check_expectations(policy: &Policy, file: &TestFile) -> Vec<InvalidTestFile> {
    file.cases
        .iter()
        .filter_map(|case| {
            let expected = case
                .expect
                .rule
                .as_deref()
                .filter(|rule| !rule.is_empty())?;
            let why = match policy.rules().iter().find(|rule| rule.name == expected) {
                None => "is not a rule of the rule set".to_owned(),
                Some(rule) if rule.dry_run => {
                    "is a dry-run rule, which never decides (it is reported beside the decision)"
                        .to_owned()
                }
                Some(rule) if rule.action != case.expect.decision => format!(
                    "has action {}, so it never decides {}",
                    rule.action.as_rule_str(),
                    case.expect.decision.as_str()
                ),
                Some(_) => return None,
            };
            Some(InvalidTestFile {
                location: case.location.clone(),
                message: format!("case {:?}: expected rule {expected:?} {why}", case.name),
            })
        })
        .collect()
}

/// Which rules of one rule set the cases run against it exercised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coverage<'p> {
    /// Rules that decided a case, or were a case's reported dry-run rule; in rule order.
    pub covered: Vec<&'p Rule>,
    /// The other rules, in rule order.
    pub uncovered: Vec<&'p Rule>,
}

/// The coverage of `policy` by `results`, which must all have been run against it (rules of another
/// policy are not counted).
pub fn coverage<'p: 'r, 'r>(
    policy: &'p Policy,
    results: impl IntoIterator<Item = &'r CaseResult<'p>>,
) -> Coverage<'p> {
    let mut hit = vec![false; policy.rules().len()];
    for result in results {
        let decision = &result.explanation.decision;
        let dry_run = decision.dry_run.map(|d| d.rule);
        for rule in decision.rule.into_iter().chain(dry_run) {
            if let Some(slot) = policy.rule_position(rule).and_then(|i| hit.get_mut(i)) {
                *slot = true;
            }
        }
    }
    let (covered, uncovered) = policy
        .rules()
        .iter()
        .zip(hit)
        .partition::<Vec<_>, _>(|(_, hit)| *hit);
    let rules = |pairs: Vec<(&'p Rule, bool)>| pairs.into_iter().map(|(rule, _)| rule).collect();
    Coverage {
        covered: rules(covered),
        uncovered: rules(uncovered),
    }
}

/// The file `rule` is written in (its line is `rule.origin.line`).
pub fn rule_file<'p>(policy: &'p Policy, rule: &Rule) -> &'p str {
    policy
        .files()
        .get(rule.origin.file)
        .map_or("", String::as_str)
}
