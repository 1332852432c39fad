//! Platform guardrails on tenant rule files: the `tenants:` section of the platform rules, compiled,
//! and the check that a tenant ALLOW rule stays within what the platform lets its namespace reach.
//!
//! Containment is decided on the patterns, not on sample hosts: a tenant host pattern is accepted only
//! when every host it can match is matched by one allowed pattern ([`HostPattern::is_within`]). A DENY
//! rule is never checked: scoped to the tenant's own namespace, it can only take access away from it.

use std::collections::BTreeMap;

use super::compile::{CompileError, CompileErrorKind};
use super::matcher::{HostPattern, InvalidPattern};
use super::rule::Rule;
use super::source::Locator;
use super::spec::GuardrailSpec;
use super::tenant::is_valid_namespace;

/// The reserved key of the `tenants:` section whose fields apply to every namespace.
pub const DEFAULTS_KEY: &str = "defaults";

/// The `tenants:` section of the platform rules: which namespaces may have a tenant file, and what
/// their rules may allow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Guardrails {
    defaults: Option<Guardrail>,
    namespaces: BTreeMap<String, Guardrail>,
}

/// What one namespace's tenant file may allow (one entry as written, or merged with the defaults).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Guardrail {
    /// Host patterns an ALLOW rule's hosts must lie within; `None` (or empty): DENY rules only.
    pub allowed_hosts: Option<Box<[HostPattern]>>,
    /// Ports an ALLOW rule's ports must be among; `None`: any port.
    pub allowed_ports: Option<Box<[u16]>>,
    /// Most rules the tenant file may hold; `None`: no limit.
    pub max_rules: Option<usize>,
}

/// One way a tenant ALLOW rule reaches beyond its guardrail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Violation {
    /// The namespace has no `allowedHosts`: it may write DENY rules only.
    AllowWithoutAllowedHosts,
    /// The rule has no `to.hosts` (any host), and `*` is not allowed.
    AnyHost,
    /// A host pattern not within any allowed pattern.
    Host(HostPattern),
    /// The rule has no `to.ports` (any port), and the ports are limited.
    AnyPort,
    /// A port not among the allowed ones.
    Port(u16),
}

// === impl Guardrails ===

impl Guardrails {
    /// The guardrail of `namespace`: its own entry, each absent field taken from `defaults`; `None`
    /// when the namespace has neither, and so may not have a tenant file.
    pub fn for_namespace(&self, namespace: &str) -> Option<Guardrail> {
        let own = self.namespaces.get(namespace);
        match (own, &self.defaults) {
            (None, None) => None,
            (Some(only), None) | (None, Some(only)) => Some(only.clone()),
            (Some(own), Some(defaults)) => Some(Guardrail {
                allowed_hosts: own
                    .allowed_hosts
                    .clone()
                    .or_else(|| defaults.allowed_hosts.clone()),
                allowed_ports: own
                    .allowed_ports
                    .clone()
                    .or_else(|| defaults.allowed_ports.clone()),
                max_rules: own.max_rules.or(defaults.max_rules),
            }),
        }
    }

    /// True when no namespace may have a tenant file (no `tenants:` section, or an empty one).
    pub fn is_empty(&self) -> bool {
        self.defaults.is_none() && self.namespaces.is_empty()
    }
}

/// Compiles a `tenants:` section, locating every error in the platform file.
pub(super) fn compile_guardrails(
    spec: &BTreeMap<String, GuardrailSpec>,
    locator: &Locator<'_>,
    errors: &mut Vec<CompileError>,
) -> Guardrails {
    let section = locator.key_offset("tenants").unwrap_or(0);
    let mut guardrails = Guardrails::default();
    for (key, entry) in spec {
        let at_key = locator
            .value_after(section, key)
            .unwrap_or_else(|| locator.at(section));
        let guardrail = compile_guardrail(entry, key, section, locator, errors);
        if key == DEFAULTS_KEY {
            guardrails.defaults = Some(guardrail);
        } else if is_valid_namespace(key) {
            guardrails.namespaces.insert(key.clone(), guardrail);
        } else {
            errors.push(CompileError {
                location: at_key,
                rule: None,
                kind: CompileErrorKind::InvalidTenantNamespace(key.clone()),
            });
        }
    }
    guardrails
}

fn compile_guardrail(
    spec: &GuardrailSpec,
    key: &str,
    section: usize,
    locator: &Locator<'_>,
    errors: &mut Vec<CompileError>,
) -> Guardrail {
    // Exhaustive destructuring: a new guardrail field does not compile until it is handled here.
    let GuardrailSpec {
        allowed_hosts,
        allowed_ports,
        max_rules,
    } = spec;
    let entry = locator.find_after(section, key).unwrap_or(section);
    let mut invalid = |field: &'static str, value: String, source: InvalidPattern| {
        errors.push(CompileError {
            location: locator
                .value_after(entry, &value)
                .unwrap_or_else(|| locator.at(entry)),
            rule: None,
            kind: CompileErrorKind::InvalidValue {
                field,
                value,
                source,
            },
        });
    };
    let allowed_hosts = allowed_hosts.as_ref().map(|hosts| {
        hosts
            .iter()
            .filter_map(|raw| {
                HostPattern::parse(raw)
                    .map_err(|source| invalid("tenants.allowedHosts", raw.clone(), source))
                    .ok()
            })
            .collect()
    });
    if let Some(ports) = allowed_ports
        && ports.contains(&0)
    {
        invalid(
            "tenants.allowedPorts",
            "0".to_owned(),
            InvalidPattern::InvalidPort,
        );
    }
    Guardrail {
        allowed_hosts,
        allowed_ports: allowed_ports.as_ref().map(|p| p.clone().into_boxed_slice()),
        max_rules: *max_rules,
    }
}

// === impl Guardrail ===

impl Guardrail {
    /// Every way `rule` reaches beyond this guardrail; none for a DENY rule. A dry-run ALLOW rule is
    /// checked too: turning its dry run off must never be what widens a tenant's access.
    pub(super) fn violations(&self, rule: &Rule) -> Vec<Violation> {
        if rule.action == super::verdict::Verdict::Deny {
            return Vec::new();
        }
        let mut violations = Vec::new();
        let (hosts, ports) = rule
            .to
            .as_ref()
            .map_or((&[][..], &[][..]), |to| (&to.hosts[..], &to.ports[..]));
        match self.allowed_hosts.as_deref() {
            None | Some([]) => violations.push(Violation::AllowWithoutAllowedHosts),
            Some(allowed) => {
                if hosts.is_empty() {
                    if !allowed.contains(&HostPattern::Any) {
                        violations.push(Violation::AnyHost);
                    }
                } else {
                    violations.extend(
                        hosts
                            .iter()
                            .filter(|host| !allowed.iter().any(|outer| host.is_within(outer)))
                            .map(|host| Violation::Host(host.clone())),
                    );
                }
            }
        }
        if let Some(allowed) = self.allowed_ports.as_deref() {
            if ports.is_empty() {
                violations.push(Violation::AnyPort);
            }
            violations.extend(
                ports
                    .iter()
                    .filter(|port| !allowed.contains(port))
                    .map(|&port| Violation::Port(port)),
            );
        }
        violations
    }

    /// The allowed hosts as written in messages: `[api.x.com, *.y.com]`, or `none`.
    pub(super) fn allowed_hosts_text(&self) -> String {
        match self.allowed_hosts.as_deref() {
            None | Some([]) => "none".to_owned(),
            Some(hosts) => list_text(hosts.iter()),
        }
    }

    /// The allowed ports as written in messages: `[443, 8443]`, or `any`.
    pub(super) fn allowed_ports_text(&self) -> String {
        self.allowed_ports
            .as_deref()
            .map_or_else(|| "any".to_owned(), |ports| list_text(ports.iter()))
    }
}

fn list_text<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let items: Vec<String> = items.map(|item| item.to_string()).collect();
    format!("[{}]", items.join(", "))
}

/// Where a violation is reported: the field and the value as the rule's author wrote it (for locating
/// it), or `None` when the problem is something the rule leaves out.
pub(super) fn violation_kind(
    violation: Violation,
    guardrail: &Guardrail,
    namespace: &str,
) -> (CompileErrorKind, Option<String>) {
    let (field, value, written) = match violation {
        Violation::AllowWithoutAllowedHosts => {
            return (
                CompileErrorKind::DenyOnlyTenant {
                    namespace: namespace.to_owned(),
                },
                None,
            );
        }
        Violation::AnyHost => ("to.hosts", "any host (no to.hosts)".to_owned(), None),
        Violation::Host(host) => ("to.hosts", host.to_string(), Some(host.to_string())),
        Violation::AnyPort => ("to.ports", "any port (no to.ports)".to_owned(), None),
        Violation::Port(port) => ("to.ports", port.to_string(), Some(port.to_string())),
    };
    let allowed = if field == "to.hosts" {
        format!("allowedHosts {}", guardrail.allowed_hosts_text())
    } else {
        format!("allowedPorts {}", guardrail.allowed_ports_text())
    };
    (
        CompileErrorKind::OutsideGuardrail {
            field,
            value,
            namespace: namespace.to_owned(),
            allowed,
        },
        written,
    )
}
