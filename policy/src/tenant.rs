//! Tenant rule files: one namespace's own rules, confined to that namespace and held within the
//! platform's guardrails, then composed with the platform rules into the one policy that decides.
//!
//! The file name says which namespace a file belongs to (`<namespace>.yaml`), and the server, not a
//! code review, makes sure its rules cannot reach beyond it: a caller condition naming another
//! namespace is an error, `from.namespaces` is implied, and every ALLOW rule must lie within the
//! guardrail ([`super::guardrail`]). Rule names are stored as `<namespace>/<rule>`, so everything that
//! reports a rule (header, metadata, metrics, logs, explain) names its owner, and two teams may use
//! the same name (platform rule names cannot contain `/`).
//!
//! Like the rest of `policy`, this is pure: the caller hands in file contents.

use std::path::Path;

use super::compile::{
    Collected, CompileError, CompileErrorKind, RuleErrors, compile_rules, parse_file,
};
use super::decision::Policy;
use super::guardrail::{Guardrail, Guardrails, violation_kind};
use super::matcher::StringPattern;
use super::rule::{FromConditions, Rule};
use super::source::{Location, Locator, SourceFile, digest};
use super::spec::{FromSpec, RuleFile};

/// Longest Kubernetes namespace name (an RFC 1123 label).
const MAX_NAMESPACE_LEN: usize = 63;

const NAMESPACE_HINT: &str = "; from.namespaces is implied, leave it out";
const SERVICE_ACCOUNT_HINT: &str = "; write '<namespace>/<name>' or just '<name>'";
const PRINCIPAL_HINT: &str = "; write '<trust-domain>/ns/<namespace>/sa/<name>'";

/// True for a valid Kubernetes namespace name: an RFC 1123 label (lower-case letters, digits and
/// `-`, starting and ending with a letter or digit), at most 63 characters.
pub fn is_valid_namespace(name: &str) -> bool {
    let inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    name.len() <= MAX_NAMESPACE_LEN
        && match name.as_bytes() {
            [] => false,
            [only] => edge(only),
            [first, middle @ .., last] => edge(first) && edge(last) && middle.iter().all(inner),
        }
}

/// The namespace a tenant file belongs to, from its base name `<namespace>.yaml` or
/// `<namespace>.yml`; `None` when that is not a valid namespace name.
pub fn namespace_of_file(name: &str) -> Option<&str> {
    let base = Path::new(name).file_name()?.to_str()?;
    let stem = base
        .strip_suffix(".yaml")
        .or_else(|| base.strip_suffix(".yml"))?;
    is_valid_namespace(stem).then_some(stem)
}

/// One tenant file, compiled: its rules are named `<namespace>/<rule>` and confined to the namespace.
#[derive(Clone, Debug)]
pub struct TenantRules {
    namespace: String,
    file: String,
    digest: String,
    rules: Vec<Rule>,
}

// === impl TenantRules ===

impl TenantRules {
    /// The namespace the file belongs to.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The file's name, as given.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// SHA-256 over the file's base name and contents.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The compiled rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

/// What a tenant rule is confined to while it is compiled.
#[derive(Debug)]
pub(super) struct TenantScope<'a> {
    namespace: &'a str,
    guardrail: &'a Guardrail,
}

// === impl TenantScope ===

impl TenantScope<'_> {
    /// Checks the caller conditions as written, before they are compiled (errors are located by the
    /// values as written), and completes a bare service-account name with the namespace.
    pub(super) fn scope_from(&self, from: &mut Option<FromSpec>, errors: &mut RuleErrors) {
        let Some(from) = from else { return };
        let FromSpec {
            namespaces,
            service_accounts,
            principals,
            not_namespaces,
            not_service_accounts,
            not_principals,
        } = from;
        for (field, values) in [
            ("from.namespaces", &*namespaces),
            ("from.notNamespaces", &*not_namespaces),
        ] {
            for value in values.iter().filter(|value| *value != self.namespace) {
                errors.push(self.other_namespace(field, value, NAMESPACE_HINT));
            }
        }
        for (field, values) in [
            ("from.serviceAccounts", service_accounts),
            ("from.notServiceAccounts", not_service_accounts),
        ] {
            for value in values.iter_mut() {
                match value.split_once('/') {
                    None => *value = format!("{}/{value}", self.namespace),
                    Some((namespace, _)) if namespace == self.namespace => {}
                    Some(_) => {
                        errors.push(self.other_namespace(field, value, SERVICE_ACCOUNT_HINT))
                    }
                }
            }
        }
        for (field, values) in [
            ("from.principals", &*principals),
            ("from.notPrincipals", &*not_principals),
        ] {
            for value in values.iter().filter(|value| !self.is_own_principal(value)) {
                errors.push(self.other_namespace(field, value, PRINCIPAL_HINT));
            }
        }
    }

    /// A principal pattern written `<td>/ns/<namespace>/sa/<sa>` (optionally with `spiffe://`) with
    /// exactly this namespace: wildcards may stand for the trust domain or the service account, never
    /// for the namespace.
    fn is_own_principal(&self, raw: &str) -> bool {
        let raw = raw.strip_prefix("spiffe://").unwrap_or(raw);
        let parts: Vec<&str> = raw.split('/').collect();
        matches!(
            parts.as_slice(),
            [td, "ns", namespace, "sa", sa]
                if !td.is_empty() && !sa.is_empty() && *namespace == self.namespace
        )
    }

    fn other_namespace(
        &self,
        field: &'static str,
        value: &str,
        hint: &'static str,
    ) -> (CompileErrorKind, Option<String>) {
        (
            CompileErrorKind::OtherNamespace {
                field,
                value: value.to_owned(),
                namespace: self.namespace.to_owned(),
                hint,
            },
            Some(value.to_owned()),
        )
    }

    /// Confines a compiled rule to the namespace, checks it against the guardrail, and names it
    /// `<namespace>/<rule>`.
    pub(super) fn finish_rule(&self, rule: &mut Rule, errors: &mut RuleErrors) {
        errors.extend(
            self.guardrail
                .violations(rule)
                .into_iter()
                .map(|violation| violation_kind(violation, self.guardrail, self.namespace)),
        );
        let own = || Box::new([StringPattern::Exact(self.namespace.to_owned())]) as Box<[_]>;
        match &mut rule.from {
            Some(from) if from.namespaces.is_empty() => from.namespaces = own(),
            Some(_) => {}
            None => {
                rule.from = Some(FromConditions {
                    namespaces: own(),
                    ..FromConditions::default()
                });
            }
        }
        rule.name = format!("{}/{}", self.namespace, rule.name);
    }
}

/// Compiles one tenant file under the platform's `guardrails`, or returns every error found, located.
pub fn compile_tenant(
    file: &SourceFile,
    guardrails: &Guardrails,
) -> Result<TenantRules, Vec<CompileError>> {
    let at_start = |kind| {
        vec![CompileError {
            location: Location {
                file: file.name.clone(),
                line: 1,
                column: 1,
            },
            rule: None,
            kind,
        }]
    };
    let Some(namespace) = namespace_of_file(&file.name) else {
        return Err(at_start(CompileErrorKind::InvalidTenantFileName));
    };
    let Some(guardrail) = guardrails.for_namespace(namespace) else {
        return Err(at_start(CompileErrorKind::NoGuardrail(
            namespace.to_owned(),
        )));
    };
    let mut collected = Collected::default();
    let Some(parsed) = parse_file(file, &mut collected.errors) else {
        return Err(collected.errors);
    };
    let locator = Locator::new(file);
    // Exhaustive destructuring: a new top-level setting is refused in tenant files until it is
    // handled here.
    let RuleFile {
        default_action,
        trust_domains,
        require_sni_matches_host,
        tenants,
        rules,
    } = parsed;
    for (setting, present) in [
        ("defaultAction", default_action.is_some()),
        ("trustDomains", trust_domains.is_some()),
        ("requireSniMatchesHost", require_sni_matches_host.is_some()),
        ("tenants", tenants.is_some()),
    ] {
        if present {
            collected.errors.push(CompileError {
                location: locator.key(setting),
                rule: None,
                kind: CompileErrorKind::SettingInTenantFile(setting),
            });
        }
    }
    if let Some(max) = guardrail.max_rules
        && rules.len() > max
    {
        collected.errors.push(CompileError {
            location: locator.key("rules"),
            rule: None,
            kind: CompileErrorKind::TooManyRules {
                count: rules.len(),
                max,
            },
        });
    }
    let scope = TenantScope {
        namespace,
        guardrail: &guardrail,
    };
    compile_rules(file, &locator, 0, rules, Some(&scope), &mut collected);
    if !collected.errors.is_empty() {
        return Err(collected.errors);
    }
    Ok(TenantRules {
        namespace: namespace.to_owned(),
        file: file.name.clone(),
        digest: digest(std::slice::from_ref(file)),
        rules: collected.rules,
    })
}

// === impl Policy (composition) ===

impl Policy {
    /// This (platform) policy with the tenants' rules after its own, in namespace order: one policy,
    /// so deciding costs what it did, and precedence (DENY > ALLOW > default) holds over the whole set.
    /// Without tenants, the digest is the platform's; with them, it covers every part.
    pub fn with_tenants<'t>(&self, tenants: impl IntoIterator<Item = &'t TenantRules>) -> Self {
        let mut tenants: Vec<&TenantRules> = tenants.into_iter().collect();
        tenants.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        let mut files = self.files().to_vec();
        let mut rules = self.rules().to_vec();
        let mut parts = vec![SourceFile {
            name: "platform".to_owned(),
            text: self.digest().to_owned(),
        }];
        for tenant in &tenants {
            let file_index = files.len();
            files.push(tenant.file.clone());
            rules.extend(tenant.rules.iter().cloned().map(|mut rule| {
                rule.origin.file = file_index;
                rule
            }));
            parts.push(SourceFile {
                name: tenant.namespace.clone(),
                text: tenant.digest.clone(),
            });
        }
        let digest = if tenants.is_empty() {
            self.digest().to_owned()
        } else {
            digest(&parts)
        };
        Self::new(self.settings().clone(), rules, files, digest)
    }
}

#[cfg(test)]
mod tests;
