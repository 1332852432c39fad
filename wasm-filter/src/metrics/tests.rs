use std::cell::RefCell;
use std::collections::BTreeMap;

use egress_authz_policy::{EgressRequest, HttpRequest, Policy, SourceFile, compile};

use super::*;

/// Counters by name, as Envoy would show them.
#[derive(Debug, Default)]
struct FakeHost {
    defines: std::cell::Cell<usize>,
    names: RefCell<Vec<String>>,
    values: RefCell<BTreeMap<String, u64>>,
}

impl StatHost for &FakeHost {
    fn define_counter(&self, name: &str) -> Option<u32> {
        self.defines.set(self.defines.get() + 1);
        let mut names = self.names.borrow_mut();
        let id = names.iter().position(|n| n == name).unwrap_or_else(|| {
            names.push(name.to_owned());
            names.len() - 1
        });
        self.values.borrow_mut().entry(name.to_owned()).or_insert(0);
        u32::try_from(id).ok()
    }

    fn increment(&self, id: u32) {
        let name = self.names.borrow()[id as usize].clone();
        *self.values.borrow_mut().get_mut(&name).unwrap() += 1;
    }
}

impl FakeHost {
    fn value(&self, name: &str) -> Option<u64> {
        self.values.borrow().get(name).copied()
    }

    fn nonzero(&self) -> BTreeMap<String, u64> {
        self.values
            .borrow()
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

fn policy() -> Policy {
    compile(&[SourceFile {
        name: "rules.yaml".to_owned(),
        text: "defaultAction: DENY\nrules:\n  - name: allow.google\n    action: ALLOW\n    to:\n      hosts: [developers.google.com]\n  - name: try-deny-google\n    action: DENY\n    dryRun: true\n    to:\n      hosts: [developers.google.com]\n".to_owned(),
    }])
    .unwrap()
}

#[test]
fn every_check_counter_starts_at_zero() {
    let host = FakeHost::default();
    let _stats = Stats::new(&host);
    assert_eq!(host.names.borrow().len(), 2 * FilterReason::COUNT + 2);
    assert_eq!(host.value("egress_authz.configurations.rejected"), Some(0));
    assert_eq!(
        host.value("egress_authz.checks.tcp.deny.invalid_configuration"),
        Some(0)
    );
    assert_eq!(
        host.value("egress_authz.checks.http.allow.allowed_by_rule"),
        Some(0)
    );
}

#[test]
fn a_decision_counts_its_check_rules_and_dry_run_disagreement() {
    let host = FakeHost::default();
    let stats = Stats::new(&host);
    let policy = policy();
    let request = EgressRequest {
        http: Some(HttpRequest {
            authority: "developers.google.com",
            method: "GET",
            path: "/",
        }),
        ..EgressRequest::default()
    };
    let decision = policy.decide(&request);
    stats.record(&Outcome::decided(&decision), Protocol::Http);
    let defined = host.defines.get();
    stats.record(&Outcome::decided(&decision), Protocol::Http);
    assert_eq!(
        host.defines.get(),
        defined,
        "a rule's counters are defined once"
    );
    stats.record(&Outcome::invalid_configuration(), Protocol::Tcp);
    assert_eq!(
        host.nonzero(),
        BTreeMap::from([
            (
                "egress_authz.checks.http.allow.allowed_by_rule".to_owned(),
                2
            ),
            (
                "egress_authz.checks.tcp.deny.invalid_configuration".to_owned(),
                1
            ),
            (
                "egress_authz.rule_matches.allow.enforced.allow.google".to_owned(),
                2
            ),
            (
                "egress_authz.rule_matches.deny.dry_run.try-deny-google".to_owned(),
                2
            ),
            (
                "egress_authz.dry_run_disagreements.deny.try-deny-google".to_owned(),
                2
            ),
        ])
    );
}

#[test]
fn configurations_are_counted_by_result() {
    let host = FakeHost::default();
    let stats = Stats::new(&host);
    stats.record_configuration(true);
    stats.record_configuration(false);
    stats.record_configuration(false);
    assert_eq!(host.value("egress_authz.configurations.accepted"), Some(1));
    assert_eq!(host.value("egress_authz.configurations.rejected"), Some(2));
}

#[test]
fn a_rule_name_back_with_another_action_gets_that_actions_counter() {
    let host = FakeHost::default();
    let stats = Stats::new(&host);
    let request = EgressRequest {
        http: Some(HttpRequest {
            authority: "developers.google.com",
            method: "GET",
            path: "/",
        }),
        ..EgressRequest::default()
    };
    for action in ["ALLOW", "DENY"] {
        let policy = compile(&[SourceFile {
            name: "rules.yaml".to_owned(),
            text: format!("rules:\n  - name: google\n    action: {action}\n    to:\n      hosts: [developers.google.com]\n"),
        }])
        .unwrap();
        stats.record(&Outcome::decided(&policy.decide(&request)), Protocol::Http);
    }
    assert_eq!(
        host.value("egress_authz.rule_matches.allow.enforced.google"),
        Some(1)
    );
    assert_eq!(
        host.value("egress_authz.rule_matches.deny.enforced.google"),
        Some(1)
    );
}
