//! Learn mode: traffic inventories in, a rule file for review out (`egress-authz suggest`).
//!
//! Pure: the documents (and, with `--rules`, the current policy) are handed in, and the rule file and
//! the summary come back as text; `commands` reads the files and prints. This module uses only `policy`
//! and `traffic`.
//!
//! The suggestion allows, under `defaultAction: DENY`, exactly the observed flows of callers with a
//! trusted identity, at the granularity the inventory has: caller, host and port (methods and paths
//! are not recorded). What is left out, and why, is counted in the summary:
//! - callers without a trusted identity (a rule cannot name them);
//! - checks without a valid host, and SNI/Host mismatches (domain fronting): never traffic to allow;
//! - flows a DENY rule denied: a deliberate deny is never turned into an allow. The whole
//!   (caller group, host, port) is left out then, since a rule for the group would allow the denied
//!   caller too, and no wildcard is formed that would match a denied host;
//! - with `--rules`, flows the current rules already allow or deny with a DENY rule;
//! - flows seen fewer than `--min-count` times (counted over all entries of the same caller group,
//!   host and port that would need the rule).

mod collapse;
mod flows;
mod render;
#[cfg(test)]
mod tests;

use crate::policy::{Policy, parse_spiffe_id};
use crate::traffic::{InventoryDocument, InventoryError};

/// The default for `--min-count`: every observed flow.
pub const DEFAULT_MIN_COUNT: u64 = 1;

/// Who one rule is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Grouping {
    /// One rule set per namespace: `from.namespaces`.
    Namespace,
    /// One rule set per service account: `from.serviceAccounts` (exact).
    ServiceAccount,
}

impl Grouping {
    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Namespace => "namespace",
            Self::ServiceAccount => "service-account",
        }
    }
}

/// How to turn flows into rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuggestOptions {
    /// Rules per namespace or per service account.
    pub by: Grouping,
    /// Flows seen fewer times than this get no rule.
    pub min_count: u64,
    /// Collapse this many sibling hosts or more into a wildcard; `None` never collapses.
    pub collapse: Option<usize>,
}

impl Default for SuggestOptions {
    fn default() -> Self {
        Self {
            by: Grouping::ServiceAccount,
            min_count: DEFAULT_MIN_COUNT,
            collapse: None,
        }
    }
}

/// Everything a suggestion is made from.
#[derive(Clone, Copy, Debug)]
pub struct SuggestInput<'a> {
    /// The inventories, each with the name it is shown under (its path as given).
    pub documents: &'a [(String, InventoryDocument)],
    /// The flags.
    pub options: &'a SuggestOptions,
    /// `--rules`: the current rules and how they were named on the command line. The suggestion then
    /// proposes only what they do not already allow, and carries no top-level settings.
    pub current: Option<(&'a str, &'a Policy)>,
}

/// The outcome: the rule file (stdout) and the summary (stderr).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suggestion {
    /// The rule file, YAML with comments.
    pub rule_file: String,
    /// What was read, turned into rules and skipped, one line each.
    pub summary: String,
}

/// Checks what a suggestion needs of a document beyond its format: that it records at least one flow,
/// and that its trust domains could be written into a rule file.
pub fn check_document(document: &InventoryDocument) -> Result<(), InventoryError> {
    if document.entries.is_empty() {
        return Err(InventoryError::NoFlows);
    }
    if let Some(bad) = document
        .trust_domains
        .iter()
        .find(|td| parse_spiffe_id(&format!("spiffe://{td}/ns/n/sa/s")).is_none())
    {
        return Err(InventoryError::Invalid(format!(
            "trust_domains: {bad:?} is not a SPIFFE trust domain"
        )));
    }
    Ok(())
}

/// Turns inventories into a suggested rule file. Deterministic: the same documents, in any order,
/// give the same bytes.
pub fn suggest(input: &SuggestInput<'_>) -> Suggestion {
    let selection = flows::select(input);
    let rules = flows::to_rules(&selection, input.options);
    render::render(input, &selection, &rules)
}
