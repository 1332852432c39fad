//! Building a [`RuleIndex`]: filing every rule under its host patterns, then freezing the lists into
//! [`Postings`] (split by kind and namespace when large). Runs once per rule set, at load and reload.

use super::hash::{KeyMap, child_key, key};
use super::{Keyed, KeyedBuilder, LARGE_BUCKET, LargePostings, Node, Postings, RuleIndex, kind};
use crate::matcher::StringPattern;
use crate::rule::Rule;

// === impl Postings ===

impl Postings {
    pub(super) fn build(list: Vec<u32>, rules: &[Rule], kinds: &[u8]) -> Self {
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
                                let list = keyed.entry(key(ns)).or_default();
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
/// all exact values. Only positive conditions pin a namespace, so a rule that a caller without identity
/// can match (a DENY with only `not*` conditions) is never keyed.
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

// === Builder ===

#[derive(Default)]
pub(super) struct Builder {
    pub(super) exact: KeyMap<Vec<u32>>,
    /// Per tree node, by id: (`*.` rules, `**.` rules).
    pub(super) suffixes: Vec<(Vec<u32>, Vec<u32>)>,
    pub(super) children: KeyMap<u32>,
    pub(super) any_host: Vec<u32>,
}

impl Builder {
    /// The rule lists of the tree node for `suffix` (`.example.com`), created on first use.
    pub(super) fn node(&mut self, suffix: &str) -> &mut (Vec<u32>, Vec<u32>) {
        if self.suffixes.is_empty() {
            self.suffixes.push(Default::default());
        }
        let mut node = 0;
        for label in suffix.rsplit('.').filter(|l| !l.is_empty()) {
            let next = u32::try_from(self.suffixes.len()).expect("fewer than 2^32 suffix labels");
            node = *self
                .children
                .entry(child_key(node, label.as_bytes()))
                .or_insert(next);
            if node == next {
                self.suffixes.push(Default::default());
            }
        }
        &mut self.suffixes[node as usize]
    }

    pub(super) fn finish(self, rules: &[Rule], kinds: Box<[u8]>) -> RuleIndex {
        let build = |list| Postings::build(list, rules, &kinds);
        let mut nodes: Vec<Node> = self
            .suffixes
            .into_iter()
            .map(|(one, any)| Node {
                one_label: build(one),
                any_labels: build(any),
            })
            .collect();
        if nodes.is_empty() {
            nodes.push(Node::default());
        }
        let mut children = self.children;
        children.shrink_to_fit();
        let mut exact: KeyMap<Postings> = self
            .exact
            .into_iter()
            .map(|(host, list)| (host, build(list)))
            .collect();
        exact.shrink_to_fit();
        let any_host = build(self.any_host);
        RuleIndex {
            exact,
            nodes,
            children,
            any_host,
            kinds,
        }
    }
}
