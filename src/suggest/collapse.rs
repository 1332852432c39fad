//! `--collapse N`: sibling hosts of one caller group become a wildcard.
//!
//! The rule, applied until nothing changes: among the parent domains with at least N distinct
//! members strictly below them (a member is an observed host, or a wildcard formed in an earlier
//! step), take the deepest (most labels; on a tie, the first by name) and replace its members with
//! `*.parent` when every member is a host exactly one label deeper, else with `**.parent`. Deepest
//! first keeps wildcards as narrow as the traffic allows: `a.x.example.com`, `b.x.example.com` and
//! `c.example.com` with N = 2 become `*.x.example.com`, and then that and `c.example.com` become
//! `**.example.com`.
//!
//! A parent is refused when
//! - it is a single label, or all of it is a public suffix (ICANN or private section of the Public
//!   Suffix List, or an unknown TLD): `*.com`, `**.co.uk` and `*.s3.amazonaws.com` would allow
//!   anybody's hosts;
//! - a host it would stand for lies under a public suffix that is not above the parent: `**.amazonaws.com`
//!   over `bucket.s3.amazonaws.com` would span other people's buckets;
//! - the wildcard would match a host a DENY rule denied this caller group.
//!
//! IP literals are never collapsed. The parent itself, when observed as a host, stays an exact host.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::policy::HostPattern;

/// A host pattern for a rule, and the observed hosts it stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Collapsed {
    /// An exact host, `*.parent` or `**.parent`.
    pub(super) pattern: String,
    /// The observed hosts, sorted; just the host itself for an exact host.
    pub(super) hosts: Vec<String>,
}

impl Collapsed {
    pub(super) fn is_wildcard(&self) -> bool {
        self.pattern.starts_with('*')
    }
}

/// A member: an exact host (`domain` is the host) or a wildcard (`domain` is its parent).
struct Member {
    collapsed: Collapsed,
    domain: String,
}

/// The hosts of one caller group as rule host patterns, collapsed when `threshold` is set (it is at
/// least 2: the command line refuses less). `denied` are hosts no wildcard may match. Sorted by pattern.
pub(super) fn collapse(
    hosts: &BTreeSet<&str>,
    threshold: Option<usize>,
    denied: &BTreeSet<String>,
) -> Vec<Collapsed> {
    let mut members: Vec<Member> = hosts
        .iter()
        .map(|host| Member {
            collapsed: Collapsed {
                pattern: (*host).to_owned(),
                hosts: vec![(*host).to_owned()],
            },
            domain: (*host).to_owned(),
        })
        .collect();
    if let Some(threshold) = threshold {
        while let Some((parent, indices)) = deepest_parent(&members, threshold.max(2), denied) {
            let merged = merge(&members, &indices, &parent);
            for index in indices.iter().rev() {
                members.remove(*index);
            }
            members.push(merged);
        }
    }
    let mut collapsed: Vec<Collapsed> = members.into_iter().map(|m| m.collapsed).collect();
    collapsed.sort_by(|a, b| a.pattern.cmp(&b.pattern));
    collapsed
}

/// The deepest allowed parent with at least `threshold` members below it, and their indices (ascending).
fn deepest_parent(
    members: &[Member],
    threshold: usize,
    denied: &BTreeSet<String>,
) -> Option<(String, Vec<usize>)> {
    let mut below: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, member) in members.iter().enumerate() {
        if !member.collapsed.is_wildcard() && member.domain.parse::<IpAddr>().is_ok() {
            continue;
        }
        let mut rest = member.domain.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            below.entry(parent).or_default().push(index);
            rest = parent;
        }
    }
    below
        .into_iter()
        .filter(|(parent, indices)| {
            indices.len() >= threshold && may_collapse_at(parent, members, indices, denied)
        })
        // Deepest first; on equal depth the first by name (`max_by` keeps the last maximum, and the
        // map iterates by name, so compare names reversed).
        .max_by(|(a, _), (b, _)| labels(a).cmp(&labels(b)).then_with(|| b.cmp(a)))
        .map(|(parent, indices)| (parent.to_owned(), indices))
}

fn labels(domain: &str) -> usize {
    domain.split('.').count()
}

/// The wildcard standing for the members at `indices`, below `parent`.
fn merge(members: &[Member], indices: &[usize], parent: &str) -> Member {
    let chosen: Vec<&Member> = indices.iter().map(|&i| &members[i]).collect();
    let mut hosts: Vec<String> = chosen
        .iter()
        .flat_map(|m| m.collapsed.hosts.iter().cloned())
        .collect();
    hosts.sort();
    Member {
        collapsed: Collapsed {
            pattern: wildcard(&chosen, parent),
            hosts,
        },
        domain: parent.to_owned(),
    }
}

/// `*.parent` when every member is a host one label below `parent`, else `**.parent`.
fn wildcard(members: &[&Member], parent: &str) -> String {
    let one_label_below = members.iter().all(|m| {
        !m.collapsed.is_wildcard()
            && m.domain
                .strip_suffix(parent)
                .and_then(|label| label.strip_suffix('.'))
                .is_some_and(|label| !label.contains('.'))
    });
    if one_label_below {
        format!("*.{parent}")
    } else {
        format!("**.{parent}")
    }
}

/// False when a wildcard at `parent` over these members is refused (see the module documentation).
fn may_collapse_at(
    parent: &str,
    members: &[Member],
    indices: &[usize],
    denied: &BTreeSet<String>,
) -> bool {
    if !parent.contains('.') || is_public_suffix(parent) {
        return false;
    }
    let chosen: Vec<&Member> = indices.iter().map(|&i| &members[i]).collect();
    let under_a_suffix_below_parent = chosen
        .iter()
        .flat_map(|m| &m.collapsed.hosts)
        .any(|host| public_suffix_len(host).is_none_or(|len| len >= parent.len()));
    if under_a_suffix_below_parent {
        return false;
    }
    let Ok(pattern) = HostPattern::parse(&wildcard(&chosen, parent)) else {
        return false;
    };
    !denied.iter().any(|host| pattern.matches(host))
}

/// True when all of `domain` is a public suffix, known or not (`corp` is one: an unknown TLD).
pub(super) fn is_public_suffix(domain: &str) -> bool {
    public_suffix_len(domain).is_none_or(|len| len >= domain.len())
}

/// The length of the public suffix of `domain`, when it has one.
fn public_suffix_len(domain: &str) -> Option<usize> {
    psl::suffix(domain.as_bytes()).map(|suffix| suffix.trim().as_bytes().len())
}
