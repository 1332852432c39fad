//! What a rule change changes (`egress-authz diff`): structurally (rules added, removed and changed,
//! settings changed), on recorded traffic (flows replayed under both rule sets), and symbolically
//! (representative requests decided under both).
//!
//! Pure: the two policies and the recorded traffic (already read into [`RecordedFile`]s) are handed
//! in and a [`DiffReport`] comes back, which [`render`] turns into text or Markdown and serde into
//! JSON; `commands::diff` reads the files and prints. This module uses only `policy`, `traffic` and
//! `decision_log` (for the name of the decision events' target).

mod probe;
mod recorded;
pub mod render;
mod structural;
mod symbolic;
#[cfg(test)]
mod tests;

use serde::Serialize;

use crate::policy::Policy;

pub use probe::Outcome;
pub use recorded::{
    ChangedFlow, FlowGroup, RecordedDiff, RecordedError, RecordedFile, RecordedKind, SourceSummary,
    read_recorded,
};
pub use structural::{FieldChange, RuleChange, RuleRef, StructuralDiff};
pub use symbolic::{MAX_WITNESSES, Region, SymbolicDiff};

/// Exit code: no decision changes.
pub const EXIT_UNCHANGED: u8 = 0;
/// Exit code: something is newly allowed, nothing newly denied.
pub const EXIT_NEWLY_ALLOWED: u8 = 3;
/// Exit code: something is newly denied (wins over newly allowed: it breaks someone).
pub const EXIT_NEWLY_DENIED: u8 = 4;

/// One side of the comparison: a policy and the name it is shown under (its path as given).
#[derive(Clone, Copy, Debug)]
pub struct Side<'a> {
    /// How the rule set was named on the command line.
    pub name: &'a str,
    /// The compiled rules.
    pub policy: &'a Policy,
}

/// Everything a diff is made from.
#[derive(Clone, Copy, Debug)]
pub struct DiffInput<'a> {
    /// `--old`.
    pub old: Side<'a>,
    /// `--new`.
    pub new: Side<'a>,
    /// `--against`, read; `None` when not given.
    pub recorded: Option<&'a [RecordedFile]>,
}

/// A rule set as the report names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleSetSummary {
    /// The path as given.
    pub path: String,
    /// The rule set's digest (`validate` prints the same).
    pub sha256: String,
    /// Number of rules.
    pub rules: usize,
}

/// The counts the headline and the exit code are made of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Rules added, removed or changed, plus settings changed.
    pub structural_changes: usize,
    /// Recorded flows allowed before and denied after.
    pub newly_denied_flows: usize,
    /// Recorded flows denied before and allowed after.
    pub newly_allowed_flows: usize,
    /// Recorded flows decided alike by another rule.
    pub rule_changed_flows: usize,
    /// Symbolic regions newly denied.
    pub newly_denied_regions: usize,
    /// Symbolic regions newly allowed.
    pub newly_allowed_regions: usize,
    /// 0, 3 or 4 (see the `EXIT_*` constants).
    pub exit_code: u8,
}

/// The whole comparison.
#[derive(Clone, Debug, Serialize)]
pub struct DiffReport {
    /// The rules before.
    pub old: RuleSetSummary,
    /// The rules after.
    pub new: RuleSetSummary,
    /// Counts and the exit code.
    pub summary: Summary,
    /// Rules and settings, by name.
    pub structural: StructuralDiff,
    /// Recorded traffic replayed; `null` without `--against`.
    pub recorded: Option<RecordedDiff>,
    /// Representative requests decided under both.
    pub symbolic: SymbolicDiff,
}

/// Compares the two rule sets. Deterministic: the same input gives the same report.
pub fn diff(input: &DiffInput<'_>) -> DiffReport {
    let (old, new) = (input.old.policy, input.new.policy);
    let structural = structural::compare(old, new);
    let recorded = input
        .recorded
        .map(|files| recorded::replay(files, old, new));
    let symbolic = symbolic::compare(old, new, &structural);
    let newly_denied_flows = recorded.as_ref().map_or(0, |r| r.newly_denied.flows);
    let newly_allowed_flows = recorded.as_ref().map_or(0, |r| r.newly_allowed.flows);
    let newly_denied = newly_denied_flows > 0 || !symbolic.newly_denied.is_empty();
    let newly_allowed = newly_allowed_flows > 0 || !symbolic.newly_allowed.is_empty();
    let exit_code = if newly_denied {
        EXIT_NEWLY_DENIED
    } else if newly_allowed {
        EXIT_NEWLY_ALLOWED
    } else {
        EXIT_UNCHANGED
    };
    let summary = Summary {
        structural_changes: structural.count(),
        newly_denied_flows,
        newly_allowed_flows,
        rule_changed_flows: recorded.as_ref().map_or(0, |r| r.rule_changed.flows),
        newly_denied_regions: symbolic.newly_denied.len(),
        newly_allowed_regions: symbolic.newly_allowed.len(),
        exit_code,
    };
    DiffReport {
        old: summarize(input.old),
        new: summarize(input.new),
        summary,
        structural,
        recorded,
        symbolic,
    }
}

fn summarize(side: Side<'_>) -> RuleSetSummary {
    RuleSetSummary {
        path: side.name.to_owned(),
        sha256: side.policy.digest().to_owned(),
        rules: side.policy.rules().len(),
    }
}
