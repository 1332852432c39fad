//! A compiled rule and the one function that decides whether it matches a request.
//!
//! `Rule::check` is shared by the decision path and by `explain`, so what `explain` reports is, by
//! construction, what the server does.

use super::identity::Identity;
use super::matcher::{HostPattern, PathPattern, ServiceAccountPattern, StringPattern};
use super::verdict::Verdict;

/// A validated, normalised rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The rule's unique name.
    pub name: String,
    /// What the rule does when it matches.
    pub action: Verdict,
    /// Evaluated and reported, never enforced.
    pub dry_run: bool,
    /// Conditions on the caller; `None` matches anyone, even without identity. With `from`, a caller
    /// without a trusted identity matches only a DENY rule whose conditions are all `not*` ones.
    pub from: Option<FromConditions>,
    /// Conditions on the destination; `None` matches anywhere.
    pub to: Option<ToConditions>,
    /// Description and owner from the file, kept and reported, never matched. Boxed: most rules have
    /// none, and an absent box costs one word instead of two strings' worth.
    pub metadata: Option<Box<RuleMetadata>>,
    /// Where the rule was written: file index into `Policy::files`, and 1-based line.
    pub origin: RuleOrigin,
}

/// Free-text fields of a rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleMetadata {
    /// Free-text description from the file.
    pub description: Option<String>,
    /// Owner from the file.
    pub owner: Option<String>,
}

/// Where a rule was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleOrigin {
    /// Index into the policy's file list.
    pub file: usize,
    /// 1-based line of the rule's `name:`.
    pub line: usize,
}

/// Compiled caller conditions. Empty lists mean "no condition". Boxed slices, not `Vec`s: a rule set
/// is built once and never grows, and at 100k rules the spare capacity and length words add up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FromConditions {
    /// See `FromSpec::namespaces`.
    pub namespaces: Box<[StringPattern]>,
    /// See `FromSpec::service_accounts`.
    pub service_accounts: Box<[ServiceAccountPattern]>,
    /// See `FromSpec::principals`; stored without the `spiffe://` scheme.
    pub principals: Box<[StringPattern]>,
    /// See `FromSpec::not_namespaces`.
    pub not_namespaces: Box<[StringPattern]>,
    /// See `FromSpec::not_service_accounts`.
    pub not_service_accounts: Box<[ServiceAccountPattern]>,
    /// See `FromSpec::not_principals`.
    pub not_principals: Box<[StringPattern]>,
}

/// Compiled destination conditions. Empty lists mean "no condition".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToConditions {
    /// See `ToSpec::hosts`.
    pub hosts: Box<[HostPattern]>,
    /// See `ToSpec::not_hosts`.
    pub not_hosts: Box<[HostPattern]>,
    /// See `ToSpec::ports`.
    pub ports: Box<[u16]>,
    /// See `ToSpec::methods`; upper-case.
    pub methods: Box<[String]>,
    /// See `ToSpec::paths`.
    pub paths: Box<[PathPattern]>,
}

/// The request as the matcher sees it: already validated and normalised.
#[derive(Clone, Copy, Debug)]
pub struct MatchInput<'a> {
    /// The caller, only when it has a well-formed identity from a trusted domain.
    pub identity: Option<Identity<'a>>,
    /// The normalised destination host.
    pub host: &'a str,
    /// The port the gateway received the request on.
    pub port: Option<u16>,
    /// `Some` for HTTP checks: method and path (without query).
    pub http: Option<HttpInput<'a>>,
}

/// The HTTP part of a request.
#[derive(Clone, Copy, Debug)]
pub struct HttpInput<'a> {
    /// The request method as sent.
    pub method: &'a str,
    /// The path without query string or fragment.
    pub path: &'a str,
}

/// The first condition of a rule that a request failed, as `explain` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Condition {
    /// The rule has `from` and the caller has no trusted identity: an ALLOW rule (whatever its
    /// conditions), or a DENY rule with a positive caller condition.
    Identity,
    /// `from.namespaces`.
    Namespaces,
    /// `from.serviceAccounts`.
    ServiceAccounts,
    /// `from.principals`.
    Principals,
    /// `from.notNamespaces`.
    NotNamespaces,
    /// `from.notServiceAccounts`.
    NotServiceAccounts,
    /// `from.notPrincipals`.
    NotPrincipals,
    /// `to.hosts`.
    Hosts,
    /// `to.notHosts`.
    NotHosts,
    /// `to.ports`.
    Ports,
    /// An ALLOW rule with `methods` or `paths` never matches a TCP check (fail closed, as Istio does).
    HttpOnlyOnTcp,
    /// `to.methods`.
    Methods,
    /// `to.paths`.
    Paths,
}

impl Condition {
    /// The field name as written in the rule file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identity => "from (caller has no trusted identity)",
            Self::Namespaces => "from.namespaces",
            Self::ServiceAccounts => "from.serviceAccounts",
            Self::Principals => "from.principals",
            Self::NotNamespaces => "from.notNamespaces",
            Self::NotServiceAccounts => "from.notServiceAccounts",
            Self::NotPrincipals => "from.notPrincipals",
            Self::Hosts => "to.hosts",
            Self::NotHosts => "to.notHosts",
            Self::Ports => "to.ports",
            Self::HttpOnlyOnTcp => "to.methods/to.paths (HTTP-only on a TCP check)",
            Self::Methods => "to.methods",
            Self::Paths => "to.paths",
        }
    }
}

/// `Ok` when every value fails or the list is empty (a `not*` field).
fn none_match<T>(
    patterns: &[T],
    matches: impl Fn(&T) -> bool,
    failed: Condition,
) -> Result<(), Condition> {
    if patterns.iter().any(matches) {
        Err(failed)
    } else {
        Ok(())
    }
}

/// `Ok` when the list is empty or any value matches.
fn any_match<T>(
    patterns: &[T],
    matches: impl Fn(&T) -> bool,
    failed: Condition,
) -> Result<(), Condition> {
    if patterns.is_empty() || patterns.iter().any(matches) {
        Ok(())
    } else {
        Err(failed)
    }
}

/// A condition on an attribute the check may lack. Present: any value matches (or the list is empty).
/// Absent: an ALLOW rule that names values cannot match, a DENY rule ignores the condition; both fail
/// closed, as Istio does for HTTP-only fields on TCP.
fn attribute_match<T, V: Copy>(
    patterns: &[T],
    value: Option<V>,
    action: Verdict,
    matches: impl Fn(&T, V) -> bool,
    failed: Condition,
) -> Result<(), Condition> {
    match value {
        _ if patterns.is_empty() => Ok(()),
        Some(v) if patterns.iter().any(|p| matches(p, v)) => Ok(()),
        None if action == Verdict::Deny => Ok(()),
        _ => Err(failed),
    }
}

// === impl Rule ===

impl Rule {
    /// `Ok(())` when the rule matches, else the first condition that failed.
    pub fn check(&self, input: &MatchInput<'_>) -> Result<(), Condition> {
        if let Some(from) = &self.from {
            match input.identity {
                Some(id) => from.check(&id)?,
                // Fail closed both ways, as Istio does: a caller without identity is not any listed
                // caller, so it satisfies every `not*` condition of a DENY rule (`notPrincipals: ["*"]`
                // rejects plaintext callers), but never a positive one, and an ALLOW rule never
                // lets a caller in on what it is not.
                None if self.action == Verdict::Deny && !from.has_positive_condition() => {}
                None => return Err(Condition::Identity),
            }
        }
        if let Some(to) = &self.to {
            to.check(self.action, input)?;
        }
        Ok(())
    }
}

// === impl FromConditions ===

impl FromConditions {
    fn check(&self, id: &Identity<'_>) -> Result<(), Condition> {
        any_match(
            &self.namespaces,
            |p| p.matches(id.namespace),
            Condition::Namespaces,
        )?;
        let sa = |p: &ServiceAccountPattern| p.matches(id.namespace, id.service_account);
        any_match(&self.service_accounts, sa, Condition::ServiceAccounts)?;
        any_match(
            &self.principals,
            |p| p.matches(id.principal),
            Condition::Principals,
        )?;
        none_match(
            &self.not_namespaces,
            |p| p.matches(id.namespace),
            Condition::NotNamespaces,
        )?;
        none_match(
            &self.not_service_accounts,
            sa,
            Condition::NotServiceAccounts,
        )?;
        none_match(
            &self.not_principals,
            |p| p.matches(id.principal),
            Condition::NotPrincipals,
        )
    }

    /// True when some field names callers to match (`namespaces`, `serviceAccounts`, `principals`),
    /// which only a caller with a trusted identity can satisfy.
    pub fn has_positive_condition(&self) -> bool {
        !self.namespaces.is_empty()
            || !self.service_accounts.is_empty()
            || !self.principals.is_empty()
    }

    /// True when no field constrains the caller.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.service_accounts.is_empty()
            && self.principals.is_empty()
            && self.not_namespaces.is_empty()
            && self.not_service_accounts.is_empty()
            && self.not_principals.is_empty()
    }
}

// === impl ToConditions ===

impl ToConditions {
    fn check(&self, action: Verdict, input: &MatchInput<'_>) -> Result<(), Condition> {
        any_match(&self.hosts, |p| p.matches(input.host), Condition::Hosts)?;
        none_match(
            &self.not_hosts,
            |p| p.matches(input.host),
            Condition::NotHosts,
        )?;
        // On TCP there is no method or path. An ALLOW rule that needs them cannot be satisfied (fail
        // closed); a DENY rule ignores them and so matches more widely (fail closed too).
        let has_http_conditions = !self.methods.is_empty() || !self.paths.is_empty();
        if input.http.is_none() && has_http_conditions && action == Verdict::Allow {
            return Err(Condition::HttpOnlyOnTcp);
        }
        // The same rule for any attribute a check lacks (no port, an empty method or path).
        let method = input.http.map(|h| h.method).filter(|m| !m.is_empty());
        let path = input.http.map(|h| h.path).filter(|p| !p.is_empty());
        attribute_match(
            &self.ports,
            input.port,
            action,
            |p, v| *p == v,
            Condition::Ports,
        )?;
        attribute_match(
            &self.methods,
            method,
            action,
            |m, v| m.eq_ignore_ascii_case(v),
            Condition::Methods,
        )?;
        attribute_match(
            &self.paths,
            path,
            action,
            |p, v| p.matches(v),
            Condition::Paths,
        )
    }

    /// True when no field constrains the destination.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
            && self.not_hosts.is_empty()
            && self.ports.is_empty()
            && self.methods.is_empty()
            && self.paths.is_empty()
    }
}

#[cfg(test)]
mod tests;
