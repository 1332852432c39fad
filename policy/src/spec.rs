//! The rule file as a person writes it. This is a contract: field names and meanings are documented in
//! the README, and unknown fields are rejected everywhere so a typo (`namespace:`) is an error, not a
//! silently wider rule.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::verdict::Verdict;

/// One YAML rule file. Top-level settings are optional so a directory of files (a ConfigMap with several
/// keys) can set them once; when two files both set one, they must agree.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleFile {
    /// The outcome when no rule matches. Default `DENY`.
    pub default_action: Option<Verdict>,
    /// Trust domains whose identities may match `from` conditions. Default `[cluster.local]`.
    pub trust_domains: Option<Vec<String>>,
    /// Deny an HTTP request whose TLS SNI names another host than its `:authority`. Default `true`.
    pub require_sni_matches_host: Option<bool>,
    /// Guardrails for tenant rule files (`--tenant-rules`), platform files only: `defaults` and one
    /// entry per namespace, whose fields override the defaults' field by field. A namespace with
    /// neither may not have a tenant file. Set in one platform file at most.
    pub tenants: Option<BTreeMap<String, GuardrailSpec>>,
    /// The rules, evaluated as documented in the README ("Decision semantics"). Absent: none (a file
    /// that only sets top-level settings). Written with no value (`rules:` and nothing after it): an
    /// error, since that is what a deny list cut off after its `rules:` line looks like.
    #[serde(default, deserialize_with = "rules_with_a_value")]
    pub rules: Vec<RuleSpec>,
}

/// The message of the error for `rules:` written with no value; the compiler recognises it to locate it
/// at the key (the parser locates a field's error at the mapping that holds the field).
pub(super) const RULES_WITHOUT_VALUE: &str = "rules has no value";

fn rules_with_a_value<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<RuleSpec>, D::Error> {
    Option::<Vec<RuleSpec>>::deserialize(deserializer)?
        .ok_or_else(|| serde::de::Error::custom(RULES_WITHOUT_VALUE))
}

/// `from:` or `to:` written with no value is read as an empty block, which is an error (see
/// `CompileErrorKind::EmptyBlock`), not as an absent one that matches anything: a rule cut off after
/// `to:` must not allow every destination.
fn block_even_if_null<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(
        Option::<T>::deserialize(deserializer)?.unwrap_or_default(),
    ))
}

/// One rule.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleSpec {
    /// Unique across all files; `[a-z0-9]([-a-z0-9.]*[a-z0-9])?`.
    pub name: String,
    /// `ALLOW` (default) or `DENY`.
    pub action: Option<Verdict>,
    /// Evaluated and reported, never enforced. Default `false`.
    pub dry_run: Option<bool>,
    /// Who is calling. Absent: anyone, including callers without an identity.
    #[serde(default, deserialize_with = "block_even_if_null")]
    pub from: Option<FromSpec>,
    /// Where the request goes. Absent: anywhere.
    #[serde(default, deserialize_with = "block_even_if_null")]
    pub to: Option<ToSpec>,
    /// Free text, kept and reported, never matched.
    pub description: Option<String>,
    /// Who to ask about this rule, kept and reported, never matched.
    pub owner: Option<String>,
}

/// Conditions on the caller. Every non-empty field must match; values inside a field are alternatives.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FromSpec {
    /// Caller namespaces: exact, `*`, `prefix*` or `*suffix`.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Caller service accounts as `<namespace>/<name>`, the same wildcards per part.
    #[serde(default)]
    pub service_accounts: Vec<String>,
    /// Caller principals in Istio's form `<td>/ns/<ns>/sa/<sa>` (a `spiffe://` prefix is accepted).
    #[serde(default)]
    pub principals: Vec<String>,
    /// The caller's namespace must match none of these.
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    /// The caller's service account must match none of these.
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
    /// The caller's principal must match none of these.
    #[serde(default)]
    pub not_principals: Vec<String>,
}

/// Conditions on the destination. Every non-empty field must match; values inside a field are alternatives.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ToSpec {
    /// Destination hosts: exact, `*.domain` (one label), `**.domain` (one or more labels) or `*`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The destination host must match none of these.
    #[serde(default)]
    pub not_hosts: Vec<String>,
    /// Ports the gateway received the connection on.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// HTTP methods (HTTP only).
    #[serde(default)]
    pub methods: Vec<String>,
    /// HTTP paths, exact or prefix ending in `*`, matched without the query string (HTTP only).
    #[serde(default)]
    pub paths: Vec<String>,
}

/// What a namespace's tenant file may allow. Each absent field takes the `defaults` entry's value.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GuardrailSpec {
    /// Host patterns every tenant ALLOW rule's hosts must lie within. Absent (here and in `defaults`):
    /// the tenant may write DENY rules only.
    pub allowed_hosts: Option<Vec<String>>,
    /// Ports every tenant ALLOW rule's ports must be among. Absent: any port.
    pub allowed_ports: Option<Vec<u16>>,
    /// Most rules a tenant file may hold. Absent: no limit.
    pub max_rules: Option<usize>,
}
