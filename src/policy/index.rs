//! The rule index: finds the first matching rule of a kind without scanning every rule.
//!
//! A rule can only match a request whose host its `to.hosts` admits, so rules are filed by host pattern:
//! exact hosts in a hash map, `*.`/`**.` suffixes in a tree of reversed labels, and rules without a host
//! condition (no `to.hosts`, or `*`) in one "any host" bucket. A request gathers the few buckets its host
//! reaches (one exact bucket, one or two per matching suffix, the any-host bucket), merges their sorted rule
//! indexes and runs the existing [`Rule::check`] on each candidate in rule order, stopping at the first
//! match. So "the first matching rule in file order" and every condition's semantics are exactly those of
//! the linear evaluator: the index only skips rules that cannot match the host.
//!
//! Buckets grow with the number of rules sharing one host pattern. A large bucket is split further by rule
//! kind (enforced/dry-run × DENY/ALLOW) and by the namespace a rule requires of its caller (when `from`
//! pins it to exact namespaces, service-account namespaces or principals), so 100,000 rules that all say
//! `hosts: ["*"]` but each name its namespace still cost one lookup. The worst case left is many rules
//! that share a host pattern *and* admit any namespace (e.g. `namespaces: ["team-*"]`): those are checked
//! one by one, as the linear evaluator would.
//!
//! Lookups hash request strings without allocating. The hasher is FxHash-like, not SipHash: keys come only
//! from the operator's rule files, so a request cannot grow a chain, only probe the table it finds.
//! Like the rest of `policy`, this module must not depend on gRPC, files or async code.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::matcher::{HostPattern, StringPattern};
use super::rule::{MatchInput, Rule};
use super::spec::Action;

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
        (false, Action::Deny) => kind::DENY,
        (false, Action::Allow) => kind::ALLOW,
        (true, Action::Deny) => kind::DRY_DENY,
        (true, Action::Allow) => kind::DRY_ALLOW,
    }
}

/// A bucket with more rules than this is split by kind and namespace. Below it, scanning the few
/// entries and skipping other kinds is cheaper than more lookups.
const LARGE_BUCKET: usize = 16;
/// Candidate lists merged on the stack; a request reaching more (a host deep under many wildcard
/// suffixes) has the rest scanned afterwards, bounded by the best match so far. Still exact.
const MERGE_WIDTH: usize = 8;

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;
/// A `Keyed` under construction: (any-namespace rules, rules by required namespace).
type KeyedBuilder = (Vec<u32>, FastMap<Box<str>, Vec<u32>>);

/// Rule indexes filed by host pattern. Built once per rule set; read-only afterwards.
pub(super) struct RuleIndex {
    /// Each rule's kind bit, by rule index.
    kinds: Box<[u8]>,
    exact: FastMap<Box<str>, Postings>,
    /// Reversed-label tree of wildcard suffixes; node 0 is the root (the empty suffix).
    nodes: Vec<Node>,
    any_host: Postings,
}

#[derive(Default)]
struct Node {
    children: FastMap<Box<str>, u32>,
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
    by_namespace: FastMap<Box<str>, Box<[u32]>>,
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
            let hosts = rule.to.as_ref().map_or(&[][..], |to| to.hosts.as_slice());
            if hosts.is_empty() || hosts.contains(&HostPattern::Any) {
                builder.any_host.push(i);
                continue;
            }
            for host in hosts {
                let slot = match host {
                    HostPattern::Any => unreachable!("handled above"),
                    HostPattern::Exact(h) => builder.exact.entry(h.as_str().into()).or_default(),
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

    /// The first rule, in rule order, of a kind in `mask` that matches `input`.
    pub(super) fn first<'p>(
        &self,
        rules: &'p [Rule],
        mask: u8,
        input: &MatchInput<'_>,
    ) -> Option<&'p Rule> {
        let namespace = input.identity.map(|id| id.namespace);
        let mut sources = Sources {
            lists: [&[]; MERGE_WIDTH],
            len: 0,
            overflow: 0,
        };
        self.visit(input.host, namespace, mask, &mut |list| sources.push(list));
        let matches = |i: u32| {
            let i = i as usize;
            self.kinds[i] & mask != 0 && rules[i].check(input).is_ok()
        };
        let mut best = sources.merge(matches);
        if sources.overflow > 0 {
            let mut seen = 0;
            self.visit(input.host, namespace, mask, &mut |list| {
                seen += 1;
                if seen > MERGE_WIDTH {
                    let bound = best.unwrap_or(u32::MAX);
                    if let Some(&i) = list
                        .iter()
                        .take_while(|&&i| i < bound)
                        .find(|&&i| matches(i))
                    {
                        best = Some(i);
                    }
                }
            });
        }
        best.map(|i| &rules[i as usize])
    }

    /// Calls `f` with every non-empty candidate list for a request: its host's buckets, narrowed to the
    /// kinds in `mask` and the caller's namespace where a bucket is split.
    fn visit<'i>(
        &'i self,
        host: &str,
        namespace: Option<&str>,
        mask: u8,
        f: &mut impl FnMut(&'i [u32]),
    ) {
        if let Some(postings) = self.exact.get(host) {
            postings.visit(namespace, mask, f);
        }
        self.any_host.visit(namespace, mask, f);
        // Walk the host's labels from the right. Patterns always name at least one label, and need at
        // least one more in the host, so the host's leftmost label is never looked up.
        let mut node = &self.nodes[0];
        let mut rest = host;
        while let Some((before, label)) = rest.rsplit_once('.') {
            let Some(&child) = node.children.get(label) else {
                return;
            };
            node = &self.nodes[child as usize];
            node.any_labels.visit(namespace, mask, f);
            if !before.contains('.') {
                node.one_label.visit(namespace, mask, f);
            }
            rest = before;
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
                    // Keyed rules all have `from`, so a caller without a trusted identity matches none.
                    if let Some(list) = namespace.and_then(|ns| keyed.by_namespace.get(ns)) {
                        f(list);
                    }
                }
            }
        }
    }

    fn build(list: Vec<u32>, rules: &[Rule], kinds: &[u8]) -> Self {
        match list.as_slice() {
            [] => Self::Empty,
            [one] => Self::One(*one),
            _ if list.len() <= LARGE_BUCKET => Self::Few(list.into_boxed_slice()),
            _ => {
                let mut by_kind: [KeyedBuilder; 4] = Default::default();
                for i in list {
                    let slot = kind::ALL
                        .iter()
                        .position(|&k| k == kinds[i as usize])
                        .unwrap_or(0);
                    let (any, keyed) = &mut by_kind[slot];
                    match required_namespaces(&rules[i as usize]) {
                        Some(namespaces) => {
                            for ns in namespaces {
                                let list = keyed.entry(ns.into()).or_default();
                                if list.last() != Some(&i) {
                                    list.push(i);
                                }
                            }
                        }
                        None => any.push(i),
                    }
                }
                Self::Large(Box::new(LargePostings {
                    by_kind: by_kind.map(|(any, keyed)| Keyed {
                        any_namespace: any.into_boxed_slice(),
                        by_namespace: keyed
                            .into_iter()
                            .map(|(k, v)| (k, v.into_boxed_slice()))
                            .collect(),
                    }),
                }))
            }
        }
    }
}

/// The namespaces a caller must be in for `rule` to match, when `from` pins them exactly; `None` when
/// callers of any namespace might match. One condition is enough (they are ANDed): the first that is
/// all exact values.
fn required_namespaces(rule: &Rule) -> Option<Vec<&str>> {
    fn exact(p: &StringPattern) -> Option<&str> {
        match p {
            StringPattern::Exact(s) => Some(s.as_str()),
            _ => None,
        }
    }
    fn non_empty(values: Option<Vec<&str>>) -> Option<Vec<&str>> {
        values.filter(|v| !v.is_empty())
    }
    let from = rule.from.as_ref()?;
    non_empty(from.namespaces.iter().map(exact).collect())
        .or_else(|| {
            non_empty(
                from.service_accounts
                    .iter()
                    .map(|sa| exact(&sa.namespace))
                    .collect(),
            )
        })
        .or_else(|| {
            non_empty(
                from.principals
                    .iter()
                    .map(|p| exact(p).and_then(principal_namespace))
                    .collect(),
            )
        })
}

/// `<td>/ns/<ns>/sa/<sa>` → `<ns>`; `None` for any other shape (left unkeyed: the index stays exact).
fn principal_namespace(principal: &str) -> Option<&str> {
    let mut parts = principal.split('/');
    let (_td, ns_key, ns, sa_key, _sa) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    (ns_key == "ns" && sa_key == "sa" && parts.next().is_none()).then_some(ns)
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

    /// Visits the union of the lists in ascending order (each index once) until `matches` accepts one.
    fn merge(&mut self, matches: impl Fn(u32) -> bool) -> Option<u32> {
        if let [only] = &self.lists[..self.len] {
            return only.iter().copied().find(|&i| matches(i));
        }
        let lists = &mut self.lists[..self.len];
        let mut last = None;
        loop {
            let (slot, head) = lists
                .iter()
                .enumerate()
                .filter_map(|(slot, list)| list.first().map(|&head| (slot, head)))
                .min_by_key(|&(_, head)| head)?;
            lists[slot] = &lists[slot][1..];
            // The same rule reached through two of its host patterns is checked once.
            if last != Some(head) {
                last = Some(head);
                if matches(head) {
                    return Some(head);
                }
            }
        }
    }
}

// === Builder ===

#[derive(Default)]
struct Builder {
    exact: FastMap<Box<str>, Vec<u32>>,
    /// Per node: (`*.` rules, `**.` rules), parallel to `nodes`.
    suffixes: Vec<(Vec<u32>, Vec<u32>)>,
    nodes: Vec<FastMap<Box<str>, u32>>,
    any_host: Vec<u32>,
}

impl Builder {
    /// The rule lists of the tree node for `suffix` (`.example.com`), created on first use.
    fn node(&mut self, suffix: &str) -> &mut (Vec<u32>, Vec<u32>) {
        if self.nodes.is_empty() {
            self.nodes.push(FastMap::default());
            self.suffixes.push(Default::default());
        }
        let mut node = 0;
        for label in suffix.rsplit('.').filter(|l| !l.is_empty()) {
            node = match self.nodes[node].get(label) {
                Some(&child) => child as usize,
                None => {
                    let child = self.nodes.len();
                    let id = u32::try_from(child).expect("fewer than 2^32 suffix labels");
                    self.nodes[node].insert(label.into(), id);
                    self.nodes.push(FastMap::default());
                    self.suffixes.push(Default::default());
                    child
                }
            };
        }
        &mut self.suffixes[node]
    }

    fn finish(self, rules: &[Rule], kinds: Box<[u8]>) -> RuleIndex {
        let build = |list| Postings::build(list, rules, &kinds);
        let mut nodes: Vec<Node> = self
            .nodes
            .into_iter()
            .zip(self.suffixes)
            .map(|(children, (one, any))| Node {
                children,
                one_label: build(one),
                any_labels: build(any),
            })
            .collect();
        if nodes.is_empty() {
            nodes.push(Node::default());
        }
        let exact = self
            .exact
            .into_iter()
            .map(|(host, list)| (host, build(list)))
            .collect();
        let any_host = build(self.any_host);
        RuleIndex {
            exact,
            nodes,
            any_host,
            kinds,
        }
    }
}

// === FxHasher ===

/// The multiply-rotate hash rustc uses (rustc-hash 2): a few cycles per 8 bytes, no allocation.
#[derive(Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0xf135_7aea_2e62_a9c5;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = self.hash.wrapping_add(word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        // The multiply leaves the low bits weak; hashbrown picks buckets from them.
        self.hash.rotate_left(26)
    }
}
