//! The filter's Envoy stats: names (spelled once, here) and the counting of each outcome. The host is
//! behind [`StatHost`], so what gets counted is tested without Envoy.
//!
//! Envoy stats have no labels; the server's labels become name segments, in a fixed order, with the one
//! unbounded value (a rule name, which may contain dots) last. Envoy shows them under its `wasmcustom.`
//! namespace (`wasmcustom.egress_authz.checks.http.deny.denied_by_rule`); README "The filter's
//! metrics" maps each to the server's metric.

use std::cell::RefCell;
use std::collections::HashMap;

use egress_authz_policy::{Protocol, Verdict};

use crate::answer::{FilterReason, Outcome};

/// `egress_authz.checks.<protocol>.<decision>.<reason>`: the server's `egress_authz_checks_total`.
pub const CHECKS: &str = "egress_authz.checks";
/// `egress_authz.rule_matches.<action>.<enforced|dry_run>.<rule>`: the server's
/// `egress_authz_rule_matches_total`.
pub const RULE_MATCHES: &str = "egress_authz.rule_matches";
/// `egress_authz.dry_run_disagreements.<would>.<rule>`: the server's `egress_authz_dry_run_total`.
pub const DRY_RUN_DISAGREEMENTS: &str = "egress_authz.dry_run_disagreements";
/// `egress_authz.configurations.<accepted|rejected>`: the server's `egress_authz_reloads_total`.
pub const CONFIGURATIONS: &str = "egress_authz.configurations";

/// The protocols, in [`Protocol`] declaration order.
const PROTOCOLS: [Protocol; 2] = [Protocol::Http, Protocol::Tcp];

/// Envoy's stats API: define a counter by name (its id), and add to it.
pub trait StatHost {
    /// The id of the counter `name`, defining it if needed; `None` if the host refused.
    fn define_counter(&self, name: &str) -> Option<u32>;
    /// Adds one to counter `id`.
    fn increment(&self, id: u32);
}

/// The name of the check counter for `reason` over `protocol`.
pub fn check_counter(protocol: Protocol, reason: FilterReason) -> String {
    format!(
        "{CHECKS}.{}.{}.{}",
        protocol.as_str(),
        reason.verdict().as_str(),
        reason.as_str()
    )
}

/// The name of the rule-match counter of `rule`.
pub fn rule_match_counter(rule: &str, action: Verdict, dry_run: bool) -> String {
    let mode = if dry_run { "dry_run" } else { "enforced" };
    format!("{RULE_MATCHES}.{}.{mode}.{rule}", action.as_str())
}

/// The name of the counter of checks where dry-run rule `rule` would have decided `would` instead.
pub fn dry_run_counter(rule: &str, would: Verdict) -> String {
    format!("{DRY_RUN_DISAGREEMENTS}.{}.{rule}", would.as_str())
}

/// The name of the counter of configurations accepted or rejected.
pub fn configuration_counter(accepted: bool) -> String {
    let result = if accepted { "accepted" } else { "rejected" };
    format!("{CONFIGURATIONS}.{result}")
}

/// The filter's counters in one VM. The check counters are defined up front (every reason at zero, as
/// the server pre-registers them); a rule's counters when it first matches, then found by the rule's
/// name, so counting allocates nothing once every rule in use has been seen.
#[derive(Debug)]
pub struct Stats<H> {
    host: H,
    checks: [[Option<u32>; FilterReason::COUNT]; 2],
    configurations: [Option<u32>; 2],
    by_rule: RefCell<HashMap<String, RuleCounters>>,
}

/// One rule's counters, each defined on first use (`None` until then; `Some(None)` if the host
/// refused it). Indexed by `Verdict` declaration order (allow, deny).
#[derive(Debug, Default)]
struct RuleCounters {
    /// By the rule's action, then enforced (0) or dry-run (1): a rule name may come back with another
    /// action in a new configuration.
    matched: [[Option<Option<u32>>; 2]; 2],
    /// By what the dry-run rules would have decided.
    disagreed: [Option<Option<u32>>; 2],
}

impl<H: StatHost> Stats<H> {
    /// Defines the check and configuration counters.
    pub fn new(host: H) -> Self {
        let mut checks = [[None; FilterReason::COUNT]; 2];
        for (protocol, row) in PROTOCOLS.into_iter().zip(checks.iter_mut()) {
            for reason in FilterReason::all() {
                row[reason.index()] = host.define_counter(&check_counter(protocol, reason));
            }
        }
        let configurations =
            [false, true].map(|accepted| host.define_counter(&configuration_counter(accepted)));
        Self {
            host,
            checks,
            configurations,
            by_rule: RefCell::new(HashMap::new()),
        }
    }

    /// Counts one outcome: the check, the rules that matched, and a dry-run disagreement.
    pub fn record(&self, outcome: &Outcome<'_>, protocol: Protocol) {
        // Fieldless enums: the casts are their declaration indexes, within the arrays' bounds.
        if let Some(id) = self.checks[protocol as usize][outcome.reason.index()] {
            self.host.increment(id);
        }
        if let Some(rule) = outcome.rule {
            self.count_rule(&rule.name, |counters| {
                let slot = &mut counters.matched[rule.action as usize][0];
                *slot.get_or_insert_with(|| {
                    self.host
                        .define_counter(&rule_match_counter(&rule.name, rule.action, false))
                })
            });
        }
        if let Some(dry_run) = outcome.dry_run {
            let rule = dry_run.rule;
            self.count_rule(&rule.name, |counters| {
                let slot = &mut counters.matched[rule.action as usize][1];
                *slot.get_or_insert_with(|| {
                    self.host
                        .define_counter(&rule_match_counter(&rule.name, rule.action, true))
                })
            });
            if outcome.dry_run_disagrees() {
                self.count_rule(&rule.name, |counters| {
                    let slot = &mut counters.disagreed[dry_run.verdict as usize];
                    *slot.get_or_insert_with(|| {
                        self.host
                            .define_counter(&dry_run_counter(&rule.name, dry_run.verdict))
                    })
                });
            }
        }
    }

    /// Counts a configuration accepted or rejected.
    pub fn record_configuration(&self, accepted: bool) {
        if let Some(id) = self.configurations[usize::from(accepted)] {
            self.host.increment(id);
        }
    }

    /// Increments the counter `counter` picks (defining it if needed) among `rule`'s.
    fn count_rule(&self, rule: &str, counter: impl FnOnce(&mut RuleCounters) -> Option<u32>) {
        let mut by_rule = self.by_rule.borrow_mut();
        let counters = match by_rule.get_mut(rule) {
            Some(counters) => counters,
            None => by_rule.entry(rule.to_owned()).or_default(),
        };
        if let Some(id) = counter(counters) {
            self.host.increment(id);
        }
    }
}

#[cfg(test)]
mod tests;
