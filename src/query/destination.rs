//! The destination half of a rule as a condition on destinations, and whether two such conditions
//! share a destination.

use crate::policy::{HostPattern, HttpInput, PathPattern, Protocol, ToConditions, Verdict};

use super::text::{host_pattern_text, joined, labelled_list, path_pattern_text};

/// A rule's conditions on port, method and path. Empty lists mean "no condition". On TCP a DENY rule's
/// methods and paths are already gone (it ignores them), and an ALLOW rule that has some never gets
/// here (it cannot match).
#[derive(Clone, Copy, Debug, Default)]
pub struct Restrictions<'p> {
    /// `to.ports`; empty once the query fixed the port.
    pub ports: &'p [u16],
    /// `to.methods` (upper-case).
    pub methods: &'p [String],
    /// `to.paths`.
    pub paths: &'p [PathPattern],
}

impl<'p> Restrictions<'p> {
    /// What is left of `to`'s port, method and path conditions for `protocol`; `None` when the rule can
    /// never match it (an ALLOW rule with methods or paths on TCP, as `Rule::check` says).
    pub(super) fn of(to: &'p ToConditions, action: Verdict, protocol: Protocol) -> Option<Self> {
        let has_http_conditions = !to.methods.is_empty() || !to.paths.is_empty();
        match protocol {
            Protocol::Http => Some(Self {
                ports: &to.ports,
                methods: &to.methods,
                paths: &to.paths,
            }),
            Protocol::Tcp if action == Verdict::Allow && has_http_conditions => None,
            Protocol::Tcp => Some(Self {
                ports: &to.ports,
                ..Self::default()
            }),
        }
    }

    /// With the port known: the port condition settled (`None` when it fails).
    pub(super) fn at_port(self, port: u16) -> Option<Self> {
        (self.ports.is_empty() || self.ports.contains(&port)).then_some(Self { ports: &[], ..self })
    }

    /// True when a request with `port` and `http` (`None` on TCP) satisfies these conditions. A missing
    /// attribute (no port, an empty method or path) fails an ALLOW rule's condition and is ignored by a
    /// DENY rule's, as `Rule::check` says: both fail closed.
    pub fn matches(&self, action: Verdict, port: Option<u16>, http: Option<HttpInput<'_>>) -> bool {
        let method = http.map(|h| h.method).filter(|m| !m.is_empty());
        let path = http.map(|h| h.path).filter(|p| !p.is_empty());
        attribute_matches(self.ports, port, action, |p, v| *p == v)
            && attribute_matches(self.methods, method, action, |m, v| {
                m.eq_ignore_ascii_case(v)
            })
            && attribute_matches(self.paths, path, action, |p, v| p.matches(v))
    }

    /// True when no condition is left.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty() && self.methods.is_empty() && self.paths.is_empty()
    }

    /// True when some request satisfies both: each pair of conditions shares a value.
    fn overlaps(&self, other: &Self) -> bool {
        let ports = self.ports.is_empty()
            || other.ports.is_empty()
            || self.ports.iter().any(|p| other.ports.contains(p));
        let methods = self.methods.is_empty()
            || other.methods.is_empty()
            || self
                .methods
                .iter()
                .any(|m| other.methods.iter().any(|o| m.eq_ignore_ascii_case(o)));
        let paths = self.paths.is_empty()
            || other.paths.is_empty()
            || self
                .paths
                .iter()
                .any(|p| other.paths.iter().any(|o| paths_overlap(p, o)));
        ports && methods && paths
    }

    /// `ports 443, methods GET, paths /v1/*`, the empty ones left out.
    pub fn text_parts(&self) -> Vec<String> {
        [
            labelled_list("port", self.ports, u16::to_string),
            labelled_list("method", self.methods, String::clone),
            labelled_list("path", self.paths, path_pattern_text),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// `{"ports": [...], "methods": [...], "paths": [...]}`; an empty list is no condition.
    pub fn to_json(&self) -> serde_json::Value {
        let paths: Vec<String> = self.paths.iter().map(path_pattern_text).collect();
        serde_json::json!({"ports": self.ports, "methods": self.methods, "paths": paths})
    }
}

/// `attribute_match` of `Rule::check`: an empty list, or a present value that some pattern matches; a
/// missing value satisfies only a DENY rule.
fn attribute_matches<T, V: Copy>(
    patterns: &[T],
    value: Option<V>,
    action: Verdict,
    matches: impl Fn(&T, V) -> bool,
) -> bool {
    match value {
        _ if patterns.is_empty() => true,
        Some(v) => patterns.iter().any(|p| matches(p, v)),
        None => action == Verdict::Deny,
    }
}

fn paths_overlap(a: &PathPattern, b: &PathPattern) -> bool {
    match (a, b) {
        (PathPattern::Any, _) | (_, PathPattern::Any) => true,
        (PathPattern::Exact(x), PathPattern::Exact(y)) => x == y,
        (PathPattern::Exact(path), PathPattern::Prefix(prefix))
        | (PathPattern::Prefix(prefix), PathPattern::Exact(path)) => {
            path.starts_with(prefix.as_str())
        }
        (PathPattern::Prefix(x), PathPattern::Prefix(y)) => {
            x.starts_with(y.as_str()) || y.starts_with(x.as_str())
        }
    }
}

/// A rule's destination conditions, as what-can leaves them once the caller is fixed.
#[derive(Clone, Copy, Debug, Default)]
pub struct DestinationCondition<'p> {
    /// `to.hosts`; empty: any host.
    pub hosts: &'p [HostPattern],
    /// `to.notHosts`.
    pub not_hosts: &'p [HostPattern],
    /// Ports, methods and paths.
    pub restrictions: Restrictions<'p>,
}

impl<'p> DestinationCondition<'p> {
    /// What is left of `to` (`None`: anywhere) for `protocol`; `None` when the rule can never match.
    pub(super) fn of(
        to: Option<&'p ToConditions>,
        action: Verdict,
        protocol: Protocol,
    ) -> Option<Self> {
        let Some(to) = to else {
            return Some(Self::default());
        };
        Some(Self {
            hosts: &to.hosts,
            not_hosts: &to.not_hosts,
            restrictions: Restrictions::of(to, action, protocol)?,
        })
    }

    /// True when a request to the normalised `host` with `port` and `http` satisfies the conditions.
    pub fn matches(
        &self,
        action: Verdict,
        host: &str,
        port: Option<u16>,
        http: Option<HttpInput<'_>>,
    ) -> bool {
        (self.hosts.is_empty() || self.hosts.iter().any(|p| p.matches(host)))
            && !self.not_hosts.iter().any(|p| p.matches(host))
            && self.restrictions.matches(action, port, http)
    }

    /// True when every destination satisfies the conditions.
    pub fn is_everywhere(&self) -> bool {
        (self.hosts.is_empty() || self.hosts.contains(&HostPattern::Any))
            && self.not_hosts.is_empty()
            && self.restrictions.is_empty()
    }

    /// True when no destination satisfies them (`hosts: [a.com]` with `notHosts: ["*.com"]`, say).
    pub fn is_nowhere(&self) -> bool {
        !self.overlaps(self)
    }

    /// True when some destination satisfies both. Exact for hosts: the intersection of two host
    /// patterns is again a pattern (or nothing), and a pattern matching infinitely many hosts is
    /// covered by a finite set of `notHosts` only when one of them covers it alone.
    pub fn overlaps(&self, other: &Self) -> bool {
        let any = [HostPattern::Any];
        let hosts = |c: &Self| {
            if c.hosts.is_empty() {
                &any[..]
            } else {
                c.hosts
            }
        };
        let excluded = |set: &HostSet<'_>| {
            self.not_hosts
                .iter()
                .chain(other.not_hosts)
                .any(|n| set.is_covered_by(n))
        };
        let hosts_overlap = hosts(self).iter().any(|a| {
            hosts(other)
                .iter()
                .any(|b| HostSet::intersection(a, b).is_some_and(|set| !excluded(&set)))
        });
        hosts_overlap && self.restrictions.overlaps(&other.restrictions)
    }

    /// `**.example.com, not evil.example.com, ports 443`.
    pub fn to_text(&self) -> String {
        let mut parts = vec![if self.hosts.is_empty() {
            "any host".to_owned()
        } else {
            joined(self.hosts, host_pattern_text)
        }];
        if !self.not_hosts.is_empty() {
            parts.push(format!("not {}", joined(self.not_hosts, host_pattern_text)));
        }
        parts.extend(self.restrictions.text_parts());
        parts.join(", ")
    }

    /// The restrictions' JSON plus `hosts` (empty: any host) and `not_hosts`.
    pub fn to_json(&self) -> serde_json::Value {
        let hosts = |patterns: &[HostPattern]| -> Vec<String> {
            patterns.iter().map(host_pattern_text).collect()
        };
        let mut json = self.restrictions.to_json();
        json["text"] = self.to_text().into();
        json["hosts"] = hosts(self.hosts).into();
        json["not_hosts"] = hosts(self.not_hosts).into();
        json
    }
}

/// A set of hosts a single pattern describes; suffixes keep their leading dot, as `HostPattern` does.
#[derive(Clone, Copy, Debug)]
enum HostSet<'a> {
    Any,
    Exact(&'a str),
    OneLabel(&'a str),
    AnyLabels(&'a str),
}

impl<'a> HostSet<'a> {
    fn of(pattern: &'a HostPattern) -> Self {
        match pattern {
            HostPattern::Any => Self::Any,
            HostPattern::Exact(host) => Self::Exact(host),
            HostPattern::OneLabel(suffix) => Self::OneLabel(suffix),
            HostPattern::AnyLabels(suffix) => Self::AnyLabels(suffix),
        }
    }

    /// The hosts both patterns match, or `None` when there are none. A suffix with a leading dot ends
    /// another exactly when its domain is the same or a subdomain, so `ends_with` is label-aware here.
    fn intersection(a: &'a HostPattern, b: &'a HostPattern) -> Option<Self> {
        match (Self::of(a), Self::of(b)) {
            (Self::Any, set) | (set, Self::Any) => Some(set),
            (Self::Exact(host), _) => b.matches(host).then_some(Self::Exact(host)),
            (_, Self::Exact(host)) => a.matches(host).then_some(Self::Exact(host)),
            (Self::OneLabel(x), Self::OneLabel(y)) => (x == y).then_some(Self::OneLabel(x)),
            // `label.x` has exactly one label before `x`, so it is under `y` only when `x` is.
            (Self::OneLabel(x), Self::AnyLabels(y)) | (Self::AnyLabels(y), Self::OneLabel(x)) => {
                x.ends_with(y).then_some(Self::OneLabel(x))
            }
            (Self::AnyLabels(x), Self::AnyLabels(y)) if x.ends_with(y) => Some(Self::AnyLabels(x)),
            (Self::AnyLabels(x), Self::AnyLabels(y)) => {
                y.ends_with(x).then_some(Self::AnyLabels(y))
            }
        }
    }

    /// True when `pattern` matches every host of the set. Wildcard sets are infinite, so only a
    /// wildcard at the same or a higher domain covers them.
    fn is_covered_by(&self, pattern: &HostPattern) -> bool {
        match (self, pattern) {
            (Self::Exact(host), _) => pattern.matches(host),
            (_, HostPattern::Any) => true,
            (Self::OneLabel(x), HostPattern::OneLabel(y)) => x == y,
            (Self::OneLabel(x) | Self::AnyLabels(x), HostPattern::AnyLabels(y)) => {
                x.ends_with(y.as_str())
            }
            _ => false,
        }
    }
}
