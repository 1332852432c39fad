//! The caller half of a rule as a condition on callers, and the caller a principal names.

use crate::policy::{
    Caller, FromConditions, Identity, Rule, ServiceAccountPattern, Settings, StringPattern, Verdict,
};

use super::text::{labelled_list, service_account_text, string_pattern_text};

/// The identity `decide` sees for `principal`: only a well-formed SPIFFE ID from a trusted domain has
/// one. Missing, malformed and foreign principals are all "no identity".
pub fn trusted_identity<'a>(settings: &Settings, principal: &'a str) -> Option<Identity<'a>> {
    match Caller::parse(principal) {
        Caller::Spiffe(id)
            if settings
                .trust_domains
                .iter()
                .any(|td| td == id.trust_domain) =>
        {
            Some(id)
        }
        _ => None,
    }
}

/// Why `principal` gives no trusted identity, or `None` when it gives one (the wording `explain` uses).
pub fn identity_problem(settings: &Settings, principal: &str) -> Option<&'static str> {
    match Caller::parse(principal) {
        Caller::Missing => Some("no principal (the connection presented no client certificate)"),
        Caller::Malformed => {
            Some("principal is not a SPIFFE ID of the form spiffe://<td>/ns/<ns>/sa/<sa>")
        }
        Caller::Spiffe(_) if trusted_identity(settings, principal).is_none() => {
            Some("trust domain is not in trustDomains")
        }
        Caller::Spiffe(_) => None,
    }
}

/// A rule's `from` together with its action, which decides how a caller without identity fares.
#[derive(Clone, Copy, Debug)]
pub struct CallerCondition<'p> {
    from: Option<&'p FromConditions>,
    action: Verdict,
}

impl<'p> CallerCondition<'p> {
    /// The caller condition of `rule`.
    pub fn of(rule: &'p Rule) -> Self {
        Self {
            from: rule.from.as_ref(),
            action: rule.action,
        }
    }

    /// The rule's `from`; `None` matches every caller.
    pub fn from(&self) -> Option<&'p FromConditions> {
        self.from
    }

    /// True when a caller with `identity` (`None`: no trusted identity) matches, as `Rule::check` says.
    pub fn matches(&self, identity: Option<&Identity<'_>>) -> bool {
        match (self.from, identity) {
            (None, _) => true,
            (Some(from), Some(id)) => identity_matches(from, id),
            (Some(_), None) => self.matches_without_identity(),
        }
    }

    /// True when callers without a trusted identity match: no `from`, or a DENY rule whose `from` has
    /// only `not*` fields (they are none of the listed callers).
    pub fn matches_without_identity(&self) -> bool {
        self.from
            .is_none_or(|from| self.action == Verdict::Deny && !from.has_positive_condition())
    }

    /// True when no caller with a trusted identity matches: some `not*` field lists a pattern every
    /// identity matches (`notPrincipals: ["*"]`), since no identity part is ever empty.
    pub fn excludes_every_identity(&self) -> bool {
        self.from.is_some_and(|from| {
            from.not_namespaces.iter().any(is_universal)
                || from.not_principals.iter().any(is_universal)
                || from.not_service_accounts.iter().any(is_universal_account)
        })
    }

    /// True when no caller at all matches: such a residual can never change a decision.
    pub fn matches_nobody(&self) -> bool {
        !self.matches_without_identity() && self.excludes_every_identity()
    }

    /// True when every caller matches (the rule has no `from`).
    pub fn matches_everybody(&self) -> bool {
        self.from.is_none()
    }

    /// How a person would say who matches, e.g. `namespace default, not service account default/bot`.
    pub fn to_text(&self) -> String {
        let Some(from) = self.from else {
            return "anyone".to_owned();
        };
        if self.excludes_every_identity() {
            return "callers without a trusted identity".to_owned();
        }
        let positive = without_universal;
        let accounts = if from.service_accounts.iter().any(is_universal_account) {
            &[][..]
        } else {
            &from.service_accounts[..]
        };
        let parts: Vec<String> = [
            labelled_list("namespace", positive(&from.namespaces), string_pattern_text),
            labelled_list("service account", accounts, service_account_text),
            labelled_list("principal", positive(&from.principals), string_pattern_text),
            labelled_list("not namespace", &from.not_namespaces, string_pattern_text),
            labelled_list(
                "not service account",
                &from.not_service_accounts,
                service_account_text,
            ),
            labelled_list("not principal", &from.not_principals, string_pattern_text),
        ]
        .into_iter()
        .flatten()
        .collect();
        let has_positive_text = [&from.namespaces, &from.principals]
            .into_iter()
            .any(|field| !positive(field).is_empty())
            || !accounts.is_empty();
        let listed = parts.join(", ");
        match (self.matches_without_identity(), has_positive_text) {
            (true, _) => format!("{listed} (callers without a trusted identity too)"),
            (false, true) => listed,
            (false, false) if listed.is_empty() => "any caller with a trusted identity".to_owned(),
            (false, false) => format!("any caller with a trusted identity, {listed}"),
        }
    }

    /// The condition as JSON: a caller with a trusted identity matches when every non-empty list does
    /// (a positive list when any pattern matches, a `not_*` list when none does); a caller without one
    /// matches exactly when `without_identity` is true.
    pub fn to_json(&self) -> serde_json::Value {
        let strings = |patterns: &[StringPattern]| -> Vec<String> {
            patterns.iter().map(string_pattern_text).collect()
        };
        let accounts = |patterns: &[ServiceAccountPattern]| -> Vec<String> {
            patterns.iter().map(service_account_text).collect()
        };
        let empty = FromConditions::default();
        let from = self.from.unwrap_or(&empty);
        serde_json::json!({
            "text": self.to_text(),
            "without_identity": self.matches_without_identity(),
            "namespaces": strings(&from.namespaces),
            "service_accounts": accounts(&from.service_accounts),
            "principals": strings(&from.principals),
            "not_namespaces": strings(&from.not_namespaces),
            "not_service_accounts": accounts(&from.not_service_accounts),
            "not_principals": strings(&from.not_principals),
        })
    }
}

/// `FromConditions::check` for a trusted identity: every positive field has a match, no `not*` field does.
fn identity_matches(from: &FromConditions, id: &Identity<'_>) -> bool {
    let any = |patterns: &[StringPattern], value: &str| {
        patterns.is_empty() || patterns.iter().any(|p| p.matches(value))
    };
    let none = |patterns: &[StringPattern], value: &str| !patterns.iter().any(|p| p.matches(value));
    let account = |p: &ServiceAccountPattern| p.matches(id.namespace, id.service_account);
    any(&from.namespaces, id.namespace)
        && (from.service_accounts.is_empty() || from.service_accounts.iter().any(account))
        && any(&from.principals, id.principal)
        && none(&from.not_namespaces, id.namespace)
        && !from.not_service_accounts.iter().any(account)
        && none(&from.not_principals, id.principal)
}

/// A positive field that every identity satisfies says only "has an identity": left out of the text.
fn without_universal(patterns: &[StringPattern]) -> &[StringPattern] {
    if patterns.iter().any(is_universal) {
        &[]
    } else {
        patterns
    }
}

/// `*` matches every non-empty value, and no part of an identity is empty.
fn is_universal(pattern: &StringPattern) -> bool {
    *pattern == StringPattern::Any
}

fn is_universal_account(pattern: &ServiceAccountPattern) -> bool {
    is_universal(&pattern.namespace) && is_universal(&pattern.name)
}
