//! The symbolic comparison: which callers gain or lose which destinations, without traffic.
//!
//! It decides representative (witness) requests under both rule sets. The witnesses come from the
//! patterns of both: every exact host, and for each wildcard domain `d` one host a label under it and
//! one two labels under it, plus one host under no pattern (a host's match set depends only on the
//! longest wildcard domain it is under, its depth below it, and whether it is an exact host); callers
//! from the namespace, service-account and principal patterns (the exact value, the prefix or suffix
//! completed with a fresh string, a fresh value, and no identity); the ports named (one other, and none);
//! the methods and paths named (and one other of each); HTTP and TCP. The fresh string appears in no
//! pattern, so a completed value matches no more patterns than its own.
//!
//! Only witnesses some changed rule matches (in either version) can decide differently, unless a
//! top-level setting changed; the others are skipped. Each change is reported under the changed rule
//! it is due to, described by that rule's patterns, with how many of the witnesses it matches changed
//! that way: a region is never claimed whole unless all its witnesses changed.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::probe::{Outcome, Probe};
use super::structural::{
    StructuralDiff, host_pattern, path_pattern, service_account, string_pattern,
};
use crate::policy::{
    HostPattern, HttpInput, MatchInput, PathPattern, Policy, Rule, StringPattern, parse_spiffe_id,
};

/// Most witnesses decided; past it the comparison stops and says it is incomplete.
pub const MAX_WITNESSES: usize = 200_000;

/// Examples kept per region.
const MAX_EXAMPLES: usize = 3;

/// Ports tried, in order, for "a port no rule names".
const OTHER_PORTS: [u16; 4] = [443, 8443, 80, 8080];

/// Methods tried, in order, for "a method no rule names".
const OTHER_METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// A set of requests whose decision changed the same way for the same cause.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Region {
    /// What the change is due to: `rule <name> (added|removed|changed)`, or the settings that changed.
    pub cause: String,
    /// Who: "callers in namespace payments", "service account a/b", "any caller", "callers without
    /// identity", or (for a settings change) the witness caller with `*` for the fresh part.
    pub callers: String,
    /// Where: the rule's host pattern and port, "any host", or the witness host.
    pub destination: String,
    /// Which requests: "any request", "HTTP methods GET paths /admin*", "TCP connections"…
    pub requests: String,
    /// Witnesses in this region whose decision changed this way.
    pub changed: usize,
    /// Witnesses in this region: when more than `changed`, the change holds for part of it only.
    pub witnesses: usize,
    /// Up to three of the changed witnesses, as requests.
    pub examples: Vec<String>,
}

impl Region {
    /// True when some witnesses of the region did not change this way.
    pub fn is_partial(&self) -> bool {
        self.changed < self.witnesses
    }
}

/// What the witnesses show.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SymbolicDiff {
    /// Witness requests decided under both rule sets.
    pub witnesses: usize,
    /// True when [`MAX_WITNESSES`] was reached: the regions below are then incomplete.
    pub truncated: bool,
    /// Regions denied before and allowed after.
    pub newly_allowed: Vec<Region>,
    /// Regions allowed before and denied after.
    pub newly_denied: Vec<Region>,
}

/// A changed rule in one of its versions.
#[derive(Clone, Copy, Debug)]
struct Changed<'p> {
    rule: &'p Rule,
    policy: &'p Policy,
    /// `added`, `removed` or `changed`.
    how: &'static str,
}

/// Both rule sets and how each decided a witness.
#[derive(Clone, Copy, Debug)]
struct Outcomes<'a> {
    old: &'a Policy,
    new: &'a Policy,
    before: &'a Outcome,
    after: &'a Outcome,
}

/// Where one witness falls for one rule: the region key.
type RegionKey = (String, String, String, String);

pub(super) fn compare(old: &Policy, new: &Policy, structural: &StructuralDiff) -> SymbolicDiff {
    let names: BTreeSet<&str> = structural.rules_affecting_decisions().into_iter().collect();
    let settings_changed = !structural.settings.is_empty();
    if names.is_empty() && !settings_changed {
        return SymbolicDiff::default();
    }
    let how = |name: &str| {
        if structural.added.iter().any(|r| r.name == name) {
            "added"
        } else if structural.removed.iter().any(|r| r.name == name) {
            "removed"
        } else {
            "changed"
        }
    };
    let mut changed: Vec<Changed<'_>> = Vec::new();
    for policy in [old, new] {
        for rule in policy.rules() {
            if names.contains(rule.name.as_str()) {
                changed.push(Changed {
                    rule,
                    policy,
                    how: how(&rule.name),
                });
            }
        }
    }
    let witnesses = Witnesses::new(old, new);
    let mut collector = Collector::default();
    let mut diff = SymbolicDiff::default();
    'all: for caller in &witnesses.callers {
        for host in &witnesses.hosts {
            for &port in &witnesses.ports {
                for shape in &witnesses.shapes {
                    let probe = Probe {
                        principal: caller.clone().unwrap_or_default(),
                        http: shape.http.is_some(),
                        host: host.clone(),
                        port,
                        method: shape.http.as_ref().map(|h| h.0.clone()).unwrap_or_default(),
                        path: shape.http.as_ref().map(|h| h.1.clone()).unwrap_or_default(),
                        sni_mismatch: shape.sni_mismatch,
                    };
                    let matching: Vec<Changed<'_>> = changed
                        .iter()
                        .copied()
                        .filter(|c| matches(c, &probe))
                        .collect();
                    if matching.is_empty() && !settings_changed {
                        continue;
                    }
                    if diff.witnesses == MAX_WITNESSES {
                        diff.truncated = true;
                        break 'all;
                    }
                    diff.witnesses += 1;
                    let before = probe.decide(old);
                    let after = probe.decide(new);
                    let outcomes = Outcomes {
                        old,
                        new,
                        before: &before,
                        after: &after,
                    };
                    collector.add(&witnesses, &probe, &matching, &outcomes, structural);
                }
            }
        }
    }
    (diff.newly_allowed, diff.newly_denied) = collector.finish();
    diff
}

/// True when the changed rule matches the probe as its policy reads the caller.
fn matches(changed: &Changed<'_>, probe: &Probe) -> bool {
    let identity = parse_spiffe_id(&probe.principal).filter(|id| {
        changed
            .policy
            .settings()
            .trust_domains
            .iter()
            .any(|td| td == id.trust_domain)
    });
    let input = MatchInput {
        identity,
        host: &probe.host,
        port: probe.port,
        http: probe.http.then_some(HttpInput {
            method: &probe.method,
            path: &probe.path,
        }),
    };
    changed.rule.check(&input).is_ok()
}

/// The values of each dimension.
#[derive(Debug)]
struct Witnesses {
    /// A string in no pattern: completes prefixes and suffixes, and makes values no pattern names.
    fresh: String,
    /// Full principals (`spiffe://…`); `None` for no identity.
    callers: Vec<Option<String>>,
    hosts: Vec<String>,
    /// Witness hosts that stand for hosts under a wildcard domain, with how to say so.
    host_labels: BTreeMap<String, String>,
    ports: Vec<Option<u16>>,
    shapes: Vec<Shape>,
}

/// HTTP with a method and path, or TCP; and whether the SNI names another host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Shape {
    http: Option<(String, String)>,
    sni_mismatch: bool,
}

impl Witnesses {
    fn new(old: &Policy, new: &Policy) -> Self {
        let rules: Vec<&Rule> = old.rules().iter().chain(new.rules()).collect();
        let fresh = fresh_string(&rules);
        let mut hosts = BTreeSet::new();
        let mut host_labels = BTreeMap::new();
        let mut namespaces = BTreeSet::from([fresh.clone()]);
        let mut accounts = BTreeSet::from([fresh.clone()]);
        let mut principals = BTreeSet::new();
        let mut ports = BTreeSet::new();
        let mut methods = BTreeSet::new();
        let mut paths = BTreeSet::new();
        let trust_domains: BTreeSet<&str> = [old, new]
            .iter()
            .flat_map(|p| p.settings().trust_domains.iter().map(String::as_str))
            .collect();
        let value = |pattern: &StringPattern| match pattern {
            StringPattern::Any => fresh.clone(),
            StringPattern::Exact(value) => value.clone(),
            StringPattern::Prefix(prefix) => format!("{prefix}{fresh}"),
            StringPattern::Suffix(suffix) => format!("{fresh}{suffix}"),
        };
        for rule in &rules {
            if let Some(from) = &rule.from {
                for p in from.namespaces.iter().chain(&from.not_namespaces) {
                    namespaces.insert(value(p));
                }
                for p in from
                    .service_accounts
                    .iter()
                    .chain(&from.not_service_accounts)
                {
                    namespaces.insert(value(&p.namespace));
                    accounts.insert(value(&p.name));
                }
                for p in from.principals.iter().chain(&from.not_principals) {
                    principals.extend(principal_witnesses(p, &fresh, &trust_domains));
                }
            }
            if let Some(to) = &rule.to {
                for pattern in to.hosts.iter().chain(&to.not_hosts) {
                    match pattern {
                        HostPattern::Any => {}
                        HostPattern::Exact(host) => {
                            hosts.insert(host.clone());
                        }
                        HostPattern::OneLabel(suffix) | HostPattern::AnyLabels(suffix) => {
                            let one = format!("{fresh}{suffix}");
                            let two = format!("{fresh}.{fresh}{suffix}");
                            host_labels.insert(one.clone(), format!("*{suffix}"));
                            host_labels.insert(two.clone(), format!("*.*{suffix} and deeper"));
                            hosts.insert(one);
                            hosts.insert(two);
                        }
                    }
                }
                ports.extend(to.ports.iter().copied());
                methods.extend(to.methods.iter().cloned());
                for pattern in &to.paths {
                    match pattern {
                        PathPattern::Any => {}
                        PathPattern::Exact(path) => {
                            paths.insert(path.clone());
                        }
                        PathPattern::Prefix(prefix) => {
                            paths.insert(format!("{prefix}{fresh}"));
                        }
                    }
                }
            }
        }
        let unrelated = format!("{fresh}.{fresh}");
        host_labels.insert(unrelated.clone(), "any other host".to_owned());
        hosts.insert(unrelated);

        // The callers: every namespace with every service account, in each trust domain when the
        // trust domains changed (else in the first, the one that decides like all trusted ones).
        let settings_differ = old.settings().trust_domains != new.settings().trust_domains;
        let domains: Vec<&str> = if settings_differ {
            trust_domains.iter().copied().collect()
        } else {
            old.settings()
                .trust_domains
                .first()
                .map(String::as_str)
                .into_iter()
                .collect()
        };
        let mut callers: BTreeSet<Option<String>> = BTreeSet::from([None]);
        for td in &domains {
            for ns in &namespaces {
                for sa in &accounts {
                    let principal = format!("spiffe://{td}/ns/{ns}/sa/{sa}");
                    if parse_spiffe_id(&principal).is_some() {
                        callers.insert(Some(principal));
                    }
                }
            }
        }
        callers.extend(principals.into_iter().map(Some));

        let mut port_values: Vec<Option<u16>> = Vec::new();
        if let Some(other) = OTHER_PORTS.into_iter().find(|p| !ports.contains(p)) {
            port_values.push(Some(other));
        }
        if !ports.is_empty() {
            port_values.extend(ports.iter().copied().map(Some));
            // A check without a port fails every ALLOW rule that names ports.
            port_values.push(None);
        }
        port_values.sort_unstable();
        port_values.dedup();

        let mut method_values: Vec<String> = methods.iter().cloned().collect();
        if let Some(other) = OTHER_METHODS.into_iter().find(|m| !methods.contains(*m)) {
            method_values.push(other.to_owned());
        }
        let mut path_values: Vec<String> = paths.into_iter().collect();
        path_values.push(format!("/{fresh}"));
        let mut shapes = vec![Shape {
            http: None,
            sni_mismatch: false,
        }];
        for method in &method_values {
            for path in &path_values {
                shapes.push(Shape {
                    http: Some((method.clone(), path.clone())),
                    sni_mismatch: false,
                });
            }
        }
        if old.settings().require_sni_matches_host != new.settings().require_sni_matches_host {
            let with_sni: Vec<Shape> = shapes
                .iter()
                .filter(|s| s.http.is_some())
                .map(|s| Shape {
                    http: s.http.clone(),
                    sni_mismatch: true,
                })
                .collect();
            shapes.extend(with_sni);
        }
        Self {
            fresh,
            callers: callers.into_iter().collect(),
            hosts: hosts.into_iter().collect(),
            host_labels,
            ports: port_values,
            shapes,
        }
    }

    /// A witness caller described as the class it stands for: the fresh part written `*`.
    fn caller_label(&self, probe: &Probe) -> String {
        if probe.principal.is_empty() {
            "callers without identity".to_owned()
        } else {
            probe.principal.replace(&self.fresh, "*")
        }
    }

    fn host_label(&self, probe: &Probe) -> String {
        let host = self
            .host_labels
            .get(&probe.host)
            .cloned()
            .unwrap_or_else(|| probe.host.clone());
        match probe.port {
            Some(port) if self.ports.len() > 1 => format!("{host}:{port}"),
            _ => host,
        }
    }
}

/// Principals that stand for a principal pattern: the exact one, or a prefix or suffix completed into
/// a SPIFFE ID, in each trust domain where the pattern leaves it open.
fn principal_witnesses(
    pattern: &StringPattern,
    fresh: &str,
    trust_domains: &BTreeSet<&str>,
) -> Vec<String> {
    let candidates: Vec<String> = match pattern {
        StringPattern::Any => Vec::new(),
        StringPattern::Exact(principal) => vec![principal.clone()],
        StringPattern::Prefix(prefix) => [
            format!("{prefix}{fresh}"),
            format!("{prefix}{fresh}/sa/{fresh}"),
            format!("{prefix}/sa/{fresh}"),
            format!("{prefix}sa/{fresh}"),
            format!("{prefix}{fresh}/ns/{fresh}/sa/{fresh}"),
            format!("{prefix}/ns/{fresh}/sa/{fresh}"),
            format!("{prefix}ns/{fresh}/sa/{fresh}"),
        ]
        .into(),
        StringPattern::Suffix(suffix) => trust_domains
            .iter()
            .flat_map(|td| {
                [
                    format!("{td}/ns/{fresh}/sa/{fresh}{suffix}"),
                    format!("{td}/ns/{fresh}/sa/{suffix}"),
                    format!("{td}/ns/{fresh}/sa{suffix}"),
                    format!("{td}/ns/{fresh}{suffix}"),
                    format!("{td}/ns/{suffix}"),
                    format!("{td}{suffix}"),
                ]
            })
            .collect(),
    };
    let valid = candidates
        .into_iter()
        .map(|principal| format!("spiffe://{principal}"))
        .filter(|principal| {
            parse_spiffe_id(principal).is_some() && pattern.matches(&principal[9..])
        });
    match pattern {
        // One completion of a prefix is enough; a suffix needs one per trust domain.
        StringPattern::Prefix(_) => valid.take(1).collect(),
        _ => {
            let mut per_domain: BTreeMap<String, String> = BTreeMap::new();
            for principal in valid {
                let td = parse_spiffe_id(&principal)
                    .map(|id| id.trust_domain.to_owned())
                    .unwrap_or_default();
                per_domain.entry(td).or_insert(principal);
            }
            per_domain.into_values().collect()
        }
    }
}

/// `other`, or `other2`, `other3`… : the first that no pattern of any rule contains, so that it
/// completes a prefix or suffix without matching another pattern.
fn fresh_string(rules: &[&Rule]) -> String {
    let mut texts: Vec<String> = Vec::new();
    for rule in rules {
        if let Some(from) = &rule.from {
            let strings = from
                .namespaces
                .iter()
                .chain(&from.not_namespaces)
                .chain(&from.principals)
                .chain(&from.not_principals)
                .map(string_pattern);
            texts.extend(strings);
            texts.extend(
                from.service_accounts
                    .iter()
                    .chain(&from.not_service_accounts)
                    .map(service_account),
            );
        }
        if let Some(to) = &rule.to {
            texts.extend(to.hosts.iter().chain(&to.not_hosts).map(host_pattern));
            texts.extend(to.paths.iter().map(path_pattern));
        }
    }
    (1..)
        .map(|n: u32| {
            if n == 1 {
                "other".to_owned()
            } else {
                format!("other{n}")
            }
        })
        .find(|candidate| !texts.iter().any(|text| text.contains(candidate.as_str())))
        .unwrap_or_else(|| "other".to_owned())
}

/// Sorts each witness into the regions of the changed rules that match it, and each change into the
/// region of the rule it is due to.
#[derive(Debug, Default)]
struct Collector {
    /// Witnesses per region (any outcome).
    totals: BTreeMap<RegionKey, usize>,
    /// Changed witnesses per (newly allowed?, region), with examples.
    changes: BTreeMap<(bool, RegionKey), (usize, Vec<String>)>,
}

impl Collector {
    fn add(
        &mut self,
        witnesses: &Witnesses,
        probe: &Probe,
        matching: &[Changed<'_>],
        outcomes: &Outcomes<'_>,
        structural: &StructuralDiff,
    ) {
        for changed in matching {
            *self.totals.entry(rule_region(changed, probe)).or_insert(0) += 1;
        }
        let Outcomes {
            old,
            new,
            before,
            after,
        } = *outcomes;
        if before.is_allow() == after.is_allow() {
            return;
        }
        // Due to the changed rule that decides now, else the one that decided before, else the first
        // changed rule the witness matches; with none, to the settings.
        let deciding = |outcome: &Outcome, policy: &Policy| {
            matching.iter().find(|c| {
                std::ptr::eq(c.policy, policy) && Some(&c.rule.name) == outcome.rule.as_ref()
            })
        };
        let cause = deciding(after, new)
            .or_else(|| deciding(before, old))
            .or_else(|| matching.first());
        let key = match cause {
            Some(changed) => rule_region(changed, probe),
            None => {
                let settings: Vec<&str> = structural.settings.iter().map(|s| s.field).collect();
                let key = (
                    format!("setting {}", settings.join(", ")),
                    witnesses.caller_label(probe),
                    witnesses.host_label(probe),
                    request_label(probe, &witnesses.fresh),
                );
                *self.totals.entry(key.clone()).or_insert(0) += 1;
                key
            }
        };
        let entry = self
            .changes
            .entry((after.is_allow(), key))
            .or_insert((0, Vec::new()));
        entry.0 += 1;
        if entry.1.len() < MAX_EXAMPLES {
            entry.1.push(probe.describe());
        }
    }

    fn finish(self) -> (Vec<Region>, Vec<Region>) {
        let mut allowed = Vec::new();
        let mut denied = Vec::new();
        for ((newly_allowed, key), (changed, examples)) in self.changes {
            let witnesses = self
                .totals
                .get(&key)
                .copied()
                .unwrap_or(changed)
                .max(changed);
            let (cause, callers, destination, requests) = key;
            let region = Region {
                cause,
                callers,
                destination,
                requests,
                changed,
                witnesses,
                examples,
            };
            if newly_allowed {
                allowed.push(region);
            } else {
                denied.push(region);
            }
        }
        (allowed, denied)
    }
}

/// The region a witness falls in for a changed rule, described by the rule's patterns.
fn rule_region(changed: &Changed<'_>, probe: &Probe) -> RegionKey {
    let rule = changed.rule;
    let cause = format!("rule {} ({})", rule.name, changed.how);
    let identity = parse_spiffe_id(&probe.principal);
    let callers = match (&rule.from, identity) {
        (_, None) => "callers without identity".to_owned(),
        (None, Some(_)) => "any caller".to_owned(),
        (Some(from), Some(id)) => {
            let mut parts = Vec::new();
            if let Some(p) = from.namespaces.iter().find(|p| p.matches(id.namespace)) {
                parts.push(format!("callers in namespace {}", string_pattern(p)));
            }
            if let Some(p) = from
                .service_accounts
                .iter()
                .find(|p| p.matches(id.namespace, id.service_account))
            {
                parts.push(format!("service account {}", service_account(p)));
            }
            if let Some(p) = from.principals.iter().find(|p| p.matches(id.principal)) {
                parts.push(format!("principal {}", string_pattern(p)));
            }
            if parts.is_empty() {
                parts.push("any caller".to_owned());
            }
            let not = |name: &str, values: Vec<String>| {
                (!values.is_empty()).then(|| format!("not {name} {}", values.join("|")))
            };
            parts.extend(not(
                "namespace",
                from.not_namespaces.iter().map(string_pattern).collect(),
            ));
            parts.extend(not(
                "service account",
                from.not_service_accounts
                    .iter()
                    .map(service_account)
                    .collect(),
            ));
            parts.extend(not(
                "principal",
                from.not_principals.iter().map(string_pattern).collect(),
            ));
            parts.join(", ")
        }
    };
    let to = rule.to.clone().unwrap_or_default();
    let mut destination = match to.hosts.iter().find(|p| p.matches(&probe.host)) {
        Some(pattern) => host_pattern(pattern),
        None => "any host".to_owned(),
    };
    if !to.not_hosts.is_empty() {
        let not: Vec<String> = to.not_hosts.iter().map(host_pattern).collect();
        destination.push_str(&format!(" except {}", not.join("|")));
    }
    if !to.ports.is_empty() {
        match probe.port {
            Some(port) => destination.push_str(&format!(":{port}")),
            None => destination.push_str(" (no port)"),
        }
    }
    let mut requests = if to.methods.is_empty() && to.paths.is_empty() {
        "any request".to_owned()
    } else if !probe.http {
        // Only a DENY rule matches TCP despite naming methods or paths (it cannot check them).
        "TCP connections (methods and paths unknown)".to_owned()
    } else {
        let mut text = "HTTP".to_owned();
        if let Some(m) = to
            .methods
            .iter()
            .find(|m| m.eq_ignore_ascii_case(&probe.method))
        {
            text.push_str(&format!(" method {m}"));
        }
        if let Some(p) = to.paths.iter().find(|p| p.matches(&probe.path)) {
            text.push_str(&format!(" paths {}", path_pattern(p)));
        }
        text
    };
    if probe.sni_mismatch {
        requests.push_str(", with an SNI naming another host");
    }
    (cause, callers, destination, requests)
}

/// A witness's protocol, method and path as a region's `requests`.
fn request_label(probe: &Probe, fresh: &str) -> String {
    let mut text = if probe.http {
        format!("HTTP {} {}", probe.method, probe.path.replace(fresh, "*"))
    } else {
        "TCP connections".to_owned()
    };
    if probe.sni_mismatch {
        text.push_str(", with an SNI naming another host");
    }
    text
}
