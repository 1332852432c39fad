//! The structural comparison: rules added, removed and changed by name, each changed field with its
//! value before and after, and the top-level settings that changed. Patterns are compared compiled
//! (normalised) and as sets, since the alternatives of a field are unordered: `[b, a]` is `[a, b]`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::policy::{HostPattern, PathPattern, Policy, Rule, ServiceAccountPattern, StringPattern};

/// A field (of a rule or of the settings) with its value before and after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    /// As written in the rule file: `action`, `dryRun`, `from.namespaces`, `to.hosts`, `defaultAction`…
    pub field: &'static str,
    /// The value before: a string, a boolean, a sorted list of strings, or `null` when unset.
    pub old: Value,
    /// The value after, in the same form.
    pub new: Value,
}

/// A rule that exists on one side only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    /// The rule's name.
    pub name: String,
    /// `ALLOW` or `DENY`.
    pub action: &'static str,
    /// Whether it is a dry-run rule.
    pub dry_run: bool,
}

/// A rule on both sides whose fields differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleChange {
    /// The rule's name.
    pub name: String,
    /// True when a matched or enforced field changed; false when only `description`/`owner` did.
    pub affects_decisions: bool,
    /// Each field that differs, in rule file order.
    pub fields: Vec<FieldChange>,
}

/// Rules and settings compared by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StructuralDiff {
    /// `defaultAction`, `trustDomains`, `requireSniMatchesHost` when they differ.
    pub settings: Vec<FieldChange>,
    /// Rules only in the new rule set, in its order.
    pub added: Vec<RuleRef>,
    /// Rules only in the old rule set, in its order.
    pub removed: Vec<RuleRef>,
    /// Rules in both whose fields differ, in the new rule set's order.
    pub changed: Vec<RuleChange>,
}

impl StructuralDiff {
    /// Settings, added, removed and changed rules, counted together.
    pub fn count(&self) -> usize {
        self.settings.len() + self.added.len() + self.removed.len() + self.changed.len()
    }

    /// True when nothing differs.
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// The names of the rules whose matching or enforcement may differ: added, removed, and changed
    /// in a field other than the free-text ones.
    pub(super) fn rules_affecting_decisions(&self) -> Vec<&str> {
        let added = self.added.iter().map(|r| r.name.as_str());
        let removed = self.removed.iter().map(|r| r.name.as_str());
        let changed = self
            .changed
            .iter()
            .filter(|c| c.affects_decisions)
            .map(|c| c.name.as_str());
        added.chain(removed).chain(changed).collect()
    }
}

/// The fields that never take part in a decision.
const FREE_TEXT_FIELDS: [&str; 2] = ["description", "owner"];

/// Compares two policies by rule name and settings.
pub(super) fn compare(old: &Policy, new: &Policy) -> StructuralDiff {
    let old_by_name: BTreeMap<&str, &Rule> =
        old.rules().iter().map(|r| (r.name.as_str(), r)).collect();
    let new_by_name: BTreeMap<&str, &Rule> =
        new.rules().iter().map(|r| (r.name.as_str(), r)).collect();
    let mut diff = StructuralDiff {
        settings: settings_changes(old, new),
        ..StructuralDiff::default()
    };
    for rule in new.rules() {
        match old_by_name.get(rule.name.as_str()) {
            None => diff.added.push(rule_ref(rule)),
            Some(before) => {
                let fields: Vec<FieldChange> = rule_fields(before)
                    .into_iter()
                    .zip(rule_fields(rule))
                    .filter(|((_, old), (_, new))| old != new)
                    .map(|((field, old), (_, new))| FieldChange { field, old, new })
                    .collect();
                if !fields.is_empty() {
                    diff.changed.push(RuleChange {
                        name: rule.name.clone(),
                        affects_decisions: fields
                            .iter()
                            .any(|f| !FREE_TEXT_FIELDS.contains(&f.field)),
                        fields,
                    });
                }
            }
        }
    }
    diff.removed = old
        .rules()
        .iter()
        .filter(|r| !new_by_name.contains_key(r.name.as_str()))
        .map(rule_ref)
        .collect();
    diff
}

fn rule_ref(rule: &Rule) -> RuleRef {
    RuleRef {
        name: rule.name.clone(),
        action: rule.action.as_rule_str(),
        dry_run: rule.dry_run,
    }
}

fn settings_changes(old: &Policy, new: &Policy) -> Vec<FieldChange> {
    let fields = |policy: &Policy| {
        let settings = policy.settings();
        [
            (
                "defaultAction",
                Value::from(settings.default_action.as_rule_str()),
            ),
            ("trustDomains", Value::from(settings.trust_domains.clone())),
            (
                "requireSniMatchesHost",
                Value::from(settings.require_sni_matches_host),
            ),
        ]
    };
    fields(old)
        .into_iter()
        .zip(fields(new))
        .filter(|((_, old), (_, new))| old != new)
        .map(|((field, old), (_, new))| FieldChange { field, old, new })
        .collect()
}

/// Every field of a rule with its value, in rule file order. Destructured exhaustively so that a new
/// field does not compile until it is compared.
fn rule_fields(rule: &Rule) -> Vec<(&'static str, Value)> {
    let Rule {
        name: _,
        action,
        dry_run,
        from,
        to,
        metadata,
        origin: _,
    } = rule;
    let from = from.clone().unwrap_or_default();
    let to = to.clone().unwrap_or_default();
    let metadata = metadata.as_deref().cloned().unwrap_or_default();
    let list = |values: Vec<String>| {
        let mut values = values;
        values.sort();
        values.dedup();
        Value::from(values)
    };
    let strings = |p: &[StringPattern]| list(p.iter().map(string_pattern).collect());
    let accounts = |p: &[ServiceAccountPattern]| list(p.iter().map(service_account).collect());
    let hosts = |p: &[HostPattern]| list(p.iter().map(host_pattern).collect());
    vec![
        ("action", Value::from(action.as_rule_str())),
        ("dryRun", Value::from(*dry_run)),
        ("from.namespaces", strings(&from.namespaces)),
        ("from.serviceAccounts", accounts(&from.service_accounts)),
        ("from.principals", strings(&from.principals)),
        ("from.notNamespaces", strings(&from.not_namespaces)),
        (
            "from.notServiceAccounts",
            accounts(&from.not_service_accounts),
        ),
        ("from.notPrincipals", strings(&from.not_principals)),
        ("to.hosts", hosts(&to.hosts)),
        ("to.notHosts", hosts(&to.not_hosts)),
        ("to.ports", {
            let mut ports = to.ports.to_vec();
            ports.sort_unstable();
            ports.dedup();
            Value::from(ports)
        }),
        ("to.methods", list(to.methods.to_vec())),
        (
            "to.paths",
            list(to.paths.iter().map(path_pattern).collect()),
        ),
        ("description", Value::from(metadata.description)),
        ("owner", Value::from(metadata.owner)),
    ]
}

/// A value pattern as written: `*`, `prefix*`, `*suffix` or the value.
pub(super) fn string_pattern(pattern: &StringPattern) -> String {
    match pattern {
        StringPattern::Any => "*".to_owned(),
        StringPattern::Exact(value) => value.clone(),
        StringPattern::Prefix(prefix) => format!("{prefix}*"),
        StringPattern::Suffix(suffix) => format!("*{suffix}"),
    }
}

/// `<namespace>/<name>`.
pub(super) fn service_account(pattern: &ServiceAccountPattern) -> String {
    format!(
        "{}/{}",
        string_pattern(&pattern.namespace),
        string_pattern(&pattern.name)
    )
}

/// A host pattern as written (normalised): `*`, `*.d`, `**.d` or the host.
pub(super) fn host_pattern(pattern: &HostPattern) -> String {
    match pattern {
        HostPattern::Any => "*".to_owned(),
        HostPattern::Exact(host) => host.clone(),
        HostPattern::OneLabel(suffix) => format!("*{suffix}"),
        HostPattern::AnyLabels(suffix) => format!("**{suffix}"),
    }
}

/// A path pattern as written: `*`, `/prefix*` or the path.
pub(super) fn path_pattern(pattern: &PathPattern) -> String {
    match pattern {
        PathPattern::Any => "*".to_owned(),
        PathPattern::Exact(path) => path.clone(),
        PathPattern::Prefix(prefix) => format!("{prefix}*"),
    }
}
