//! Which observed flows become rules ([`select`]), and the rules they become ([`to_rules`]).

use std::collections::{BTreeMap, BTreeSet};

use super::collapse::collapse;
use super::{Grouping, SuggestInput, SuggestOptions};
use crate::policy::{
    EgressRequest, HttpRequest, NormalizedHost, Policy, Protocol, Reason, Verdict, parse_spiffe_id,
};
use crate::traffic::FlowEntry;
use crate::traffic::document::merge_entries;

/// Why a flow got no rule. The order is the summary's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Skip {
    NoTrustedIdentity,
    NoValidHost,
    SniHostMismatch,
    DeniedByRule,
    DeniedByCurrentRule,
    AlreadyAllowed,
    BelowMinCount,
}

impl Skip {
    /// How the summary says it.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::NoTrustedIdentity => "no trusted identity",
            Self::NoValidHost => "no valid host",
            Self::SniHostMismatch => "SNI/Host mismatch, domain fronting",
            Self::DeniedByRule => "denied by a DENY rule",
            Self::DeniedByCurrentRule => "denied by a DENY rule of the current rules",
            Self::AlreadyAllowed => "already allowed by the current rules",
            Self::BelowMinCount => "below --min-count",
        }
    }
}

/// Who a rule is for: a namespace, or a service account in it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct CallerGroup {
    pub(super) namespace: String,
    /// `None` when grouping by namespace.
    pub(super) service_account: Option<String>,
}

/// A caller group, a normalised host and a port: the unit a rule allows.
type FlowKey = (CallerGroup, String, Option<u16>);

/// Flows and the checks they counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Tally {
    pub(super) flows: u64,
    pub(super) checks: u64,
}

impl Tally {
    fn add(&mut self, entry: &FlowEntry) {
        self.flows += 1;
        self.checks = self.checks.saturating_add(entry.count);
    }
}

/// What the entries behind a rule (or a host) say: how often, when, over which protocols.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Stats {
    pub(super) checks: u64,
    pub(super) first_seen: String,
    pub(super) last_seen: String,
    pub(super) protocols: BTreeSet<String>,
}

impl Stats {
    fn add(&mut self, entry: &FlowEntry) {
        self.merge(&Self {
            checks: entry.count,
            first_seen: entry.first_seen.clone(),
            last_seen: entry.last_seen.clone(),
            protocols: BTreeSet::from([entry.protocol.clone()]),
        });
    }

    fn merge(&mut self, other: &Self) {
        if other.checks == 0 {
            return;
        }
        if self.checks == 0 {
            self.clone_from(other);
            return;
        }
        self.checks = self.checks.saturating_add(other.checks);
        // RFC 3339 UTC strings of one shape (the document checks it) order as the times do.
        if other.first_seen < self.first_seen {
            self.first_seen.clone_from(&other.first_seen);
        }
        if other.last_seen > self.last_seen {
            self.last_seen.clone_from(&other.last_seen);
        }
        self.protocols.extend(other.protocols.iter().cloned());
    }
}

/// The ports a rule names: a list, or any port when a check carried none (a rule cannot name "no
/// port", and one with `ports` would not match such a check).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Ports {
    Listed(BTreeSet<u16>),
    Any,
}

impl Ports {
    fn add(&mut self, port: Option<u16>) {
        match (self, port) {
            (Self::Listed(ports), Some(port)) => {
                ports.insert(port);
            }
            (this, None) => *this = Self::Any,
            (Self::Any, Some(_)) => {}
        }
    }

    fn union(&mut self, other: &Self) {
        match other {
            Self::Any => *self = Self::Any,
            Self::Listed(ports) => ports.iter().for_each(|&p| self.add(Some(p))),
        }
    }
}

/// An observed deny the suggestion would allow (listed with `--rules`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct NewlyAllowed {
    pub(super) caller: String,
    pub(super) host: String,
    pub(super) port: Option<u16>,
    pub(super) protocol: String,
    pub(super) checks: u64,
    pub(super) reason: String,
}

/// The flows sorted into rules and skips.
#[derive(Debug, Default)]
pub(super) struct Selection {
    pub(super) read: Tally,
    pub(super) accepted: Tally,
    pub(super) skipped: BTreeMap<Skip, Tally>,
    /// What the rules must allow.
    pub(super) flows: BTreeMap<FlowKey, Stats>,
    /// Per caller group, the hosts a DENY rule denied it: no wildcard may match them.
    pub(super) denied_hosts: BTreeMap<CallerGroup, BTreeSet<String>>,
    pub(super) newly_allowed: Vec<NewlyAllowed>,
}

/// Sorts the merged entries of every document into what needs a rule and what is skipped, and why.
pub(super) fn select(input: &SuggestInput<'_>) -> Selection {
    let merged = merge_entries(input.documents.iter().map(|(_, document)| document));
    let current = input.current.map(|(_, policy)| policy);
    let mut selection = Selection::default();
    let mut candidates: BTreeMap<FlowKey, Vec<&FlowEntry>> = BTreeMap::new();
    let mut denied_keys: BTreeMap<FlowKey, Skip> = BTreeMap::new();
    for entry in &merged {
        selection.read.add(entry);
        match classify(entry, input.options.by, current) {
            Ok(key) => candidates.entry(key).or_default().push(entry),
            Err((skip, key)) => {
                selection.skipped.entry(skip).or_default().add(entry);
                if let Some(key) = key {
                    let (group, host, _) = &key;
                    selection
                        .denied_hosts
                        .entry(group.clone())
                        .or_default()
                        .insert(host.clone());
                    denied_keys.entry(key).or_insert(skip);
                }
            }
        }
    }
    for (key, entries) in candidates {
        let checks = entries
            .iter()
            .fold(0_u64, |sum, e| sum.saturating_add(e.count));
        let skip = denied_keys
            .get(&key)
            .copied()
            .or_else(|| (checks < input.options.min_count).then_some(Skip::BelowMinCount));
        if let Some(skip) = skip {
            let tally = selection.skipped.entry(skip).or_default();
            entries.iter().for_each(|e| tally.add(e));
            continue;
        }
        let stats = selection.flows.entry(key.clone()).or_default();
        for entry in entries {
            stats.add(entry);
            selection.accepted.add(entry);
            if current.is_some() && entry.verdict() == Verdict::Deny {
                selection.newly_allowed.push(NewlyAllowed {
                    caller: format!("{}/{}", entry.namespace, entry.service_account),
                    host: key.1.clone(),
                    port: entry.port,
                    protocol: entry.protocol.clone(),
                    checks: entry.count,
                    reason: entry.reason.clone(),
                });
            }
        }
    }
    selection.newly_allowed.sort();
    selection
}

/// The flow key of an entry that may get a rule, or why it may not (with its key when it was denied,
/// which keeps its caller group, host and port out of every rule).
fn classify(
    entry: &FlowEntry,
    by: Grouping,
    current: Option<&Policy>,
) -> Result<FlowKey, (Skip, Option<FlowKey>)> {
    // What the server writes is a checked SPIFFE identity; anything else (a hand-edited file, a `*`)
    // must not reach a `from` condition, where it could be read as a pattern.
    let Some((namespace, service_account)) = entry.caller().filter(|(ns, sa)| {
        parse_spiffe_id(&format!("spiffe://{DOCUMENT_TD}/ns/{ns}/sa/{sa}")).is_some()
    }) else {
        return Err((Skip::NoTrustedIdentity, None));
    };
    let host = NormalizedHost::parse(&entry.host);
    let (Some(host), Some(protocol)) = (host, entry.protocol_kind()) else {
        return Err((Skip::NoValidHost, None));
    };
    let group = CallerGroup {
        namespace: namespace.to_owned(),
        service_account: (by == Grouping::ServiceAccount).then(|| service_account.to_owned()),
    };
    let key = (group, host.as_str().to_owned(), entry.port);
    match entry.reason_code() {
        Some(Reason::SniHostMismatch) => return Err((Skip::SniHostMismatch, None)),
        Some(Reason::DeniedByRule) => return Err((Skip::DeniedByRule, Some(key))),
        _ => {}
    }
    if let Some(policy) = current {
        match replay(policy, entry, &key.1, protocol) {
            Reason::AllowedByRule => return Err((Skip::AlreadyAllowed, None)),
            Reason::DeniedByRule => return Err((Skip::DeniedByCurrentRule, Some(key))),
            _ => {}
        }
    }
    Ok(key)
}

/// Any valid trust domain, to check a namespace and service account with the SPIFFE parser.
const DOCUMENT_TD: &str = "cluster.local";

/// The reason `policy` gives the flow, replayed as a check from the caller in the policy's first trust
/// domain. The inventory records no method or path, so they are empty (a rule needing them does not
/// match); the host goes in `:authority` (HTTP) or the SNI (TCP), and the port is the flow's.
fn replay(policy: &Policy, entry: &FlowEntry, host: &str, protocol: Protocol) -> Reason {
    let Some(trust_domain) = policy.settings().trust_domains.first() else {
        return Reason::NoMatchingRule;
    };
    let principal = format!(
        "spiffe://{trust_domain}/ns/{}/sa/{}",
        entry.namespace, entry.service_account
    );
    // An IPv6 literal needs its brackets in an authority, or its colons read as a port.
    let authority = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let request = match protocol {
        Protocol::Http => EgressRequest {
            http: Some(HttpRequest {
                authority: &authority,
                method: "",
                path: "",
            }),
            principal: &principal,
            port: entry.port,
            ..EgressRequest::default()
        },
        Protocol::Tcp => EgressRequest {
            principal: &principal,
            sni: host,
            port: entry.port,
            ..EgressRequest::default()
        },
    };
    policy.decide(&request).reason
}

/// A rule before it is named: one caller group, the hosts it reaches on one set of ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RuleDraft {
    pub(super) group: CallerGroup,
    /// Sorted.
    pub(super) hosts: Vec<String>,
    pub(super) ports: Ports,
    pub(super) stats: Stats,
    /// Each wildcard and the observed hosts it stands for.
    pub(super) wildcards: Vec<(String, Vec<String>)>,
}

/// The rules the selected flows need: per caller group, hosts (after collapsing) that share a set of
/// ports share a rule. Ordered by group, then ports.
pub(super) fn to_rules(selection: &Selection, options: &SuggestOptions) -> Vec<RuleDraft> {
    let mut by_group: BTreeMap<&CallerGroup, BTreeMap<&str, (Ports, Stats)>> = BTreeMap::new();
    for ((group, host, port), stats) in &selection.flows {
        let (ports, host_stats) = by_group
            .entry(group)
            .or_default()
            .entry(host)
            .or_insert_with(|| (Ports::Listed(BTreeSet::new()), Stats::default()));
        ports.add(*port);
        host_stats.merge(stats);
    }
    let no_denied = BTreeSet::new();
    let mut rules = Vec::new();
    for (group, hosts) in by_group {
        let names: BTreeSet<&str> = hosts.keys().copied().collect();
        let denied = selection.denied_hosts.get(group).unwrap_or(&no_denied);
        let mut by_ports: BTreeMap<Ports, RuleDraft> = BTreeMap::new();
        for collapsed in collapse(&names, options.collapse, denied) {
            let mut ports = Ports::Listed(BTreeSet::new());
            let mut stats = Stats::default();
            for host in &collapsed.hosts {
                if let Some((host_ports, host_stats)) = hosts.get(host.as_str()) {
                    ports.union(host_ports);
                    stats.merge(host_stats);
                }
            }
            let draft = by_ports.entry(ports.clone()).or_insert_with(|| RuleDraft {
                group: group.clone(),
                hosts: Vec::new(),
                ports,
                stats: Stats::default(),
                wildcards: Vec::new(),
            });
            draft.stats.merge(&stats);
            if collapsed.is_wildcard() {
                draft
                    .wildcards
                    .push((collapsed.pattern.clone(), collapsed.hosts.clone()));
            }
            draft.hosts.push(collapsed.pattern);
        }
        for mut draft in by_ports.into_values() {
            draft.hosts.sort();
            draft.wildcards.sort();
            rules.push(draft);
        }
    }
    rules
}
