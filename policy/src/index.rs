//! The rule index: finds the first matching rule of a kind without scanning every rule.
//!
//! A rule can only match a request whose host its `to.hosts` admits, so rules are filed by host pattern:
//! exact hosts in a hash map, `*.`/`**.` suffixes in a tree of reversed labels, and rules without a host
//! condition (no `to.hosts`, or `*`) in one "any host" bucket. A request gathers the few buckets its host
//! reaches (one exact bucket, one or two per matching suffix, the any-host bucket), merges their sorted rule
//! indexes (or, when they are few, scans each list up to the best match so far) and runs the existing
//! [`Rule::check`] on the candidates, keeping the lowest rule index that matches. So "the first matching rule
//! in file order" and every condition's semantics are exactly those of the linear evaluator: the index only
//! skips rules that cannot match the host.
//!
//! Buckets grow with the number of rules sharing one host pattern. A large bucket is split further by rule
//! kind (enforced/dry-run × DENY/ALLOW) and by the namespace a rule requires of its caller (when `from`
//! pins it to exact namespaces, service-account namespaces or principals), so 100,000 rules that all say
//! `hosts: ["*"]` but each name its namespace still cost one lookup. The worst case left is many rules
//! that share a host pattern *and* admit any namespace (e.g. `namespaces: ["team-*"]`): those are checked
//! one by one, as the linear evaluator would.
//!
//! Maps are keyed by 64-bit hashes of hosts, labels and namespaces, so lookups hash request strings
//! without allocating and the index keeps no second copy of them. The hash is FxHash-like, not SipHash:
//! keys come only from the operator's rule files, so a request cannot grow a chain, only probe the table
//! it finds, and a collision only adds candidates that `Rule::check` then rejects.
//! Like the rest of `policy`, this module must not depend on gRPC, files or async code.

mod build;
mod hash;

use self::build::Builder;
use self::hash::{KeyMap, child_key, key};
use super::matcher::HostPattern;
use super::rule::{MatchInput, Rule};
use super::verdict::Verdict;

/// Rule kinds as bits, so one pass can ask for several kinds (dry-run evaluation wants e.g. every DENY).
pub(super) mod kind {
    /// Enforced DENY.
    pub(crate) const DENY: u8 = 1;
    /// Enforced ALLOW.
    pub(crate) const ALLOW: u8 = 2;
    /// Dry-run DENY.
    pub(crate) const DRY_DENY: u8 = 4;
    /// Dry-run ALLOW.
    pub(crate) const DRY_ALLOW: u8 = 8;
    /// Every kind in its class-list order (`LargePostings::by_kind`).
    pub(crate) const ALL: [u8; 4] = [DENY, ALLOW, DRY_DENY, DRY_ALLOW];
}

/// The kind bit of a rule.
pub(super) fn kind_of(rule: &Rule) -> u8 {
    match (rule.dry_run, rule.action) {
        (false, Verdict::Deny) => kind::DENY,
        (false, Verdict::Allow) => kind::ALLOW,
        (true, Verdict::Deny) => kind::DRY_DENY,
        (true, Verdict::Allow) => kind::DRY_ALLOW,
    }
}

/// A bucket with more rules than this is split by kind and namespace. Below it, scanning the few
/// entries and skipping other kinds is cheaper than more lookups.
const LARGE_BUCKET: usize = 16;
/// Candidate lists merged on the stack; a request reaching more (a host deep under many wildcard
/// suffixes) has the rest scanned afterwards, bounded by the best match so far. Still exact.
const MERGE_WIDTH: usize = 8;

/// Up to this many candidates in all, lists are scanned one by one rather than merged.
const SHORT_MERGE: usize = 16;

/// Buckets a request's host reaches that are kept for all passes (exact, any-host, three suffix levels).
const MAX_BUCKETS: usize = 8;

/// A `Keyed` under construction: (any-namespace rules, rules by required namespace).
type KeyedBuilder = (Vec<u32>, KeyMap<Vec<u32>>);

/// Rule indexes filed by host pattern. Built once per rule set; read-only afterwards.
pub(super) struct RuleIndex {
    /// Each rule's kind bit, by rule index.
    kinds: Box<[u8]>,
    exact: KeyMap<Postings>,
    /// Reversed-label tree of wildcard suffixes; node 0 is the root (the empty suffix).
    nodes: Vec<Node>,
    /// The tree's edges: [`child_key`] of (parent node, label) → child node.
    children: KeyMap<u32>,
    any_host: Postings,
}

#[derive(Default)]
struct Node {
    /// `*.<suffix>`: hosts with exactly one label before the suffix.
    one_label: Postings,
    /// `**.<suffix>`: hosts with one or more labels before the suffix.
    any_labels: Postings,
}

/// The rules filed under one host pattern, sorted by rule index.
#[derive(Default)]
enum Postings {
    #[default]
    Empty,
    /// Most exact hosts have one rule: no allocation for it.
    One(u32),
    Few(Box<[u32]>),
    Large(Box<LargePostings>),
}

/// A large bucket, split by kind (in `kind::ALL` order), then by the namespace a rule requires.
struct LargePostings {
    by_kind: [Keyed; 4],
}

#[derive(Default)]
struct Keyed {
    /// Rules that may match callers of any namespace (or none, for rules without `from`).
    any_namespace: Box<[u32]>,
    /// Rules that only callers of this namespace can match.
    by_namespace: KeyMap<Box<[u32]>>,
}

/// The buckets one request's host reaches, gathered without allocating.
pub(super) struct Candidates<'i> {
    buckets: [&'i Postings; MAX_BUCKETS],
    len: usize,
    /// More buckets than fit: passes walk the host again instead.
    overflow: bool,
}

/// Sorted candidate lists for one request, gathered without allocating.
struct Sources<'i> {
    lists: [&'i [u32]; MERGE_WIDTH],
    len: usize,
    /// How many lists did not fit and must be scanned afterwards.
    overflow: usize,
}

// === impl RuleIndex ===

impl RuleIndex {
    pub(super) fn new(rules: &[Rule]) -> Self {
        let kinds: Box<[u8]> = rules.iter().map(kind_of).collect();
        let mut builder = Builder::default();
        for (i, rule) in rules.iter().enumerate() {
            let i = u32::try_from(i).expect("a rule set has fewer than 2^32 rules");
            let hosts = rule.to.as_ref().map_or(&[][..], |to| &to.hosts[..]);
            if hosts.is_empty() || hosts.contains(&HostPattern::Any) {
                builder.any_host.push(i);
                continue;
            }
            for host in hosts {
                let slot = match host {
                    HostPattern::Any => unreachable!("handled above"),
                    HostPattern::Exact(h) => builder.exact.entry(key(h)).or_default(),
                    HostPattern::OneLabel(suffix) => &mut builder.node(suffix).0,
                    HostPattern::AnyLabels(suffix) => &mut builder.node(suffix).1,
                };
                // A rule listing a pattern twice is filed once.
                if slot.last() != Some(&i) {
                    slot.push(i);
                }
            }
        }
        builder.finish(rules, kinds)
    }

    /// The buckets a host reaches, looked up once per request and shared by every pass over them.
    pub(super) fn candidates(&self, host: &str) -> Candidates<'_> {
        let mut candidates = Candidates {
            buckets: [&Postings::Empty; MAX_BUCKETS],
            len: 0,
            overflow: false,
        };
        self.buckets(host, &mut |postings| {
            if candidates.len < MAX_BUCKETS {
                candidates.buckets[candidates.len] = postings;
                candidates.len += 1;
            } else {
                candidates.overflow = true;
            }
        });
        candidates
    }

    /// The first rule, in rule order, of a kind in `wanted.primary` that matches `input`, or if none
    /// does, the first of a kind in `wanted.fallback`; among `candidates` (from
    /// [`RuleIndex::candidates`] for `input.host`). One pass serves both, so "first DENY, else first
    /// ALLOW" gathers and walks the candidates once.
    pub(super) fn first<'p>(
        &self,
        candidates: &Candidates<'_>,
        rules: &'p [Rule],
        wanted: Wanted,
        input: &MatchInput<'_>,
    ) -> Option<&'p Rule> {
        let namespace = input.identity.map(|id| id.namespace);
        let mask = wanted.primary | wanted.fallback;
        let mut sources = Sources {
            lists: [&[]; MERGE_WIDTH],
            len: 0,
            overflow: 0,
        };
        self.lists(candidates, input.host, namespace, mask, &mut |list| {
            sources.push(list)
        });
        let mut found = Found {
            wanted,
            kinds: &self.kinds,
            matches: |i: u32| rules[i as usize].check(input).is_ok(),
            primary: None,
            fallback: None,
        };
        sources.search(&mut found);
        if sources.overflow > 0 {
            let mut seen = 0;
            self.lists(candidates, input.host, namespace, mask, &mut |list| {
                seen += 1;
                if seen > MERGE_WIDTH {
                    found.scan(list);
                }
            });
        }
        found.primary.or(found.fallback).map(|i| &rules[i as usize])
    }

    /// Calls `f` with every non-empty candidate list: the candidate buckets (all of the host's, walked
    /// again if they did not fit), narrowed to the kinds in `mask` and the caller's namespace where a
    /// bucket is split.
    fn lists<'i>(
        &'i self,
        candidates: &Candidates<'i>,
        host: &str,
        namespace: Option<&str>,
        mask: u8,
        f: &mut impl FnMut(&'i [u32]),
    ) {
        if candidates.overflow {
            self.buckets(host, &mut |postings| postings.visit(namespace, mask, f));
        } else {
            for postings in &candidates.buckets[..candidates.len] {
                postings.visit(namespace, mask, f);
            }
        }
    }

    /// Calls `f` with every non-empty bucket `host` reaches: its exact host, the any-host bucket, and
    /// the `*.`/`**.` suffixes it falls under.
    fn buckets<'i>(&'i self, host: &str, f: &mut impl FnMut(&'i Postings)) {
        let mut visit = |postings: &'i Postings| {
            if !postings.is_empty() {
                f(postings);
            }
        };
        if let Some(postings) = self.exact.get(&key(host)) {
            visit(postings);
        }
        visit(&self.any_host);
        // Walk the host's labels from the right, in one pass. Patterns always name at least one label,
        // and need at least one more in the host, so the host's leftmost label is never looked up.
        let bytes = host.as_bytes();
        let mut parent = 0;
        let mut label_end = bytes.len();
        // The node of the suffix just looked up: its `*.` rules match only if no dot is left.
        let mut last = None;
        for dot in (0..bytes.len()).rev().filter(|&i| bytes[i] == b'.') {
            let Some(&child) = self
                .children
                .get(&child_key(parent, &bytes[dot + 1..label_end]))
            else {
                return;
            };
            parent = child;
            let node = &self.nodes[child as usize];
            visit(&node.any_labels);
            last = Some(node);
            label_end = dot;
        }
        if let Some(node) = last {
            visit(&node.one_label);
        }
    }

    /// Number of distinct host buckets (exact hosts, suffixes, any-host), for `Debug`.
    fn bucket_count(&self) -> usize {
        self.exact.len()
            + self
                .nodes
                .iter()
                .filter(|n| !n.one_label.is_empty() || !n.any_labels.is_empty())
                .count()
            + usize::from(!self.any_host.is_empty())
    }
}

impl std::fmt::Debug for RuleIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleIndex")
            .field("rules", &self.kinds.len())
            .field("exact_hosts", &self.exact.len())
            .field("suffix_nodes", &self.nodes.len())
            .field("buckets", &self.bucket_count())
            .finish_non_exhaustive()
    }
}

// === impl Postings ===

impl Postings {
    fn is_empty(&self) -> bool {
        matches!(self, Self::Empty)
    }

    fn visit<'i>(&'i self, namespace: Option<&str>, mask: u8, f: &mut impl FnMut(&'i [u32])) {
        match self {
            Self::Empty => {}
            Self::One(i) => f(std::slice::from_ref(i)),
            Self::Few(list) => f(list),
            Self::Large(large) => {
                for (bit, keyed) in kind::ALL.iter().zip(&large.by_kind) {
                    if bit & mask == 0 {
                        continue;
                    }
                    if !keyed.any_namespace.is_empty() {
                        f(&keyed.any_namespace);
                    }
                    // Keyed rules are keyed by a positive caller condition, which a caller without a
                    // trusted identity never satisfies, DENY or ALLOW. DENY rules with only `not*`
                    // conditions, which such a caller does match, are never keyed: they are in
                    // `any_namespace`, visited above.
                    if let Some(list) = namespace.and_then(|ns| keyed.by_namespace.get(&key(ns))) {
                        f(list);
                    }
                }
            }
        }
    }
}

// === impl Sources ===

impl<'i> Sources<'i> {
    fn push(&mut self, list: &'i [u32]) {
        if self.len < MERGE_WIDTH {
            self.lists[self.len] = list;
            self.len += 1;
        } else {
            self.overflow += 1;
        }
    }

    /// Feeds the candidates to `found` until it has its answer: merged into ascending order (each index
    /// once), or, when there are only a few, list by list (each up to the best match so far).
    fn search<F: Fn(u32) -> bool>(&mut self, found: &mut Found<'_, F>) {
        let lists = &mut self.lists[..self.len];
        if let [only] = lists {
            found.scan(only);
            return;
        }
        if lists.iter().map(|list| list.len()).sum::<usize>() <= SHORT_MERGE {
            // Few candidates: scanning each list up to the best match so far costs less than merging.
            // A rule in two lists may be checked twice; the answer is the same.
            for list in lists.iter() {
                found.scan(list);
            }
            return;
        }
        let mut last = None;
        loop {
            let Some((slot, head)) = lists
                .iter()
                .enumerate()
                .filter_map(|(slot, list)| list.first().map(|&head| (slot, head)))
                .min_by_key(|&(_, head)| head)
            else {
                return;
            };
            lists[slot] = &lists[slot][1..];
            // The same rule reached through two of its host patterns is checked once.
            if last != Some(head) {
                last = Some(head);
                if !found.consider(head) {
                    return;
                }
            }
        }
    }
}

/// The kinds a search wants: the first match of `primary` kinds, else the first of `fallback` kinds.
#[derive(Clone, Copy, Debug)]
pub(super) struct Wanted {
    pub(super) primary: u8,
    pub(super) fallback: u8,
}

impl Wanted {
    /// Just the first match of the kinds in `mask`.
    pub(super) fn first_of(mask: u8) -> Self {
        Self {
            primary: mask,
            fallback: 0,
        }
    }
}

/// The state of a search: the lowest matching rule index of each wanted class seen so far.
struct Found<'k, F> {
    wanted: Wanted,
    kinds: &'k [u8],
    matches: F,
    primary: Option<u32>,
    fallback: Option<u32>,
}

impl<F: Fn(u32) -> bool> Found<'_, F> {
    /// Considers candidate `i`. `false` when no candidate from `i` on can change the answer (a primary
    /// match at or before `i` is known), so a walk in ascending order can stop.
    fn consider(&mut self, i: u32) -> bool {
        if self.primary.is_some_and(|p| i >= p) {
            return false;
        }
        let kind = self.kinds[i as usize];
        if kind & self.wanted.primary != 0 {
            if (self.matches)(i) {
                self.primary = Some(i);
                return false;
            }
        } else if kind & self.wanted.fallback != 0
            && self.fallback.is_none_or(|f| i < f)
            && (self.matches)(i)
        {
            self.fallback = Some(i);
        }
        true
    }

    /// Considers one sorted list, stopping where it can no longer change the answer.
    fn scan(&mut self, list: &[u32]) {
        for &i in list {
            if !self.consider(i) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::test_fixtures::*;

    #[test]
    fn the_index_does_not_skip_not_only_deny_rules_for_callers_without_identity() {
        // Enough rules on one host pattern that the bucket is split by namespace: the rules keyed by a
        // namespace cannot match a caller without identity, the `not*`-only DENY still must.
        let mut yaml = String::from("defaultAction: ALLOW\nrules:\n");
        for i in 0..40 {
            yaml.push_str(&format!(
                "- name: deny-ns{i}\n  action: DENY\n  from: {{namespaces: [ns{i}]}}\n  to: {{hosts: [developers.google.com]}}\n"
            ));
        }
        yaml.push_str(
            "- name: require-mtls\n  action: DENY\n  from: {notNamespaces: [ns0]}\n  to: {hosts: [developers.google.com]}\n",
        );
        let policy = mk_policy(&yaml);
        for principal in ANONYMOUS_CALLERS {
            for request in [http(principal, GOOGLE), tcp(principal, GOOGLE)] {
                let indexed = policy.decide(&request);
                assert_eq!(indexed, policy.decide_linear(&request), "{principal:?}");
                assert_eq!(
                    indexed.rule.map(|r| r.name.as_str()),
                    Some("require-mtls"),
                    "{principal:?}"
                );
            }
        }
        let ns3 = "spiffe://cluster.local/ns/ns3/sa/x";
        assert_eq!(
            outcome(&policy, &http(ns3, GOOGLE)).2.as_deref(),
            Some("deny-ns3")
        );
    }
}
