//! The in-memory inventory: a count per flow key, updated by every check.
//!
//! Recording sits on the Check path, so it must neither serialise checks behind one lock nor allocate
//! for a flow it has seen. Keys are spread over 64 tables (shards) by hash; a check of a known flow takes
//! its shard's lock for reading (shared with every other check) and bumps atomics, and is looked up by
//! a key borrowed from the decision. Only a new flow takes a shard's write lock and copies its key.
//!
//! Memory is bounded by `max_entries` keys. When full, a new key is counted as overflow and dropped:
//! evicting old keys instead would let a flood of junk hosts erase the record of real flows.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use hashbrown::{DefaultHashBuilder, HashSet, HashTable};

use super::document::{
    FORMAT, FlowEntry, InventoryDocument, NO_CALLER, NO_HOST, PROTOCOL_UNKNOWN, VERSION,
    format_time, now_unix, parse_time,
};
use crate::metrics::Metrics;
use crate::policy::{Decision, NormalizedHost, Protocol, Reason};

/// Tables the keys are spread over: enough that two checks of different flows rarely share a lock,
/// few enough that a snapshot visits them quickly.
const SHARDS: usize = 64;

/// Counts checks by flow key. Cheap to share: clone the `Arc`.
#[derive(Debug)]
pub struct TrafficInventory {
    shards: Box<[RwLock<Shard>]>,
    hasher: DefaultHashBuilder,
    /// Keys held, across shards; never more than `max_entries`.
    entries: AtomicUsize,
    max_entries: usize,
    /// Checks whose new key did not fit.
    overflow: AtomicU64,
    /// One copy of each caller name and rule name, shared by every key that names it: a namespace
    /// appears in thousands of keys. Taken only when a new key is added.
    names: Mutex<HashSet<Arc<str>>>,
    metrics: Metrics,
}

/// One shard's keys and counts.
type Shard = HashTable<(FlowKey, FlowStats)>;

/// A flow key, owned: what the inventory holds.
#[derive(Debug)]
struct FlowKey {
    caller: Option<(Arc<str>, Arc<str>)>,
    protocol: ProtocolKey,
    host: Box<str>,
    port: Option<u16>,
    reason: Reason,
    rule: Option<Arc<str>>,
}

/// A flow key borrowed from a decision, to look the owned one up without copying.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowKeyRef<'a> {
    caller: Option<(&'a str, &'a str)>,
    protocol: ProtocolKey,
    host: &'a str,
    port: Option<u16>,
    reason: Reason,
    rule: Option<&'a str>,
}

/// The protocol of a check, or none when it was refused before it was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ProtocolKey {
    Read(Protocol),
    Unread,
}

/// The counts of one key; atomics, so a check updates them under a shared lock.
#[derive(Debug)]
struct FlowStats {
    count: AtomicU64,
    first_seen: AtomicU64,
    last_seen: AtomicU64,
}

impl FlowKey {
    fn borrowed(&self) -> FlowKeyRef<'_> {
        FlowKeyRef {
            caller: self.caller.as_ref().map(|(ns, sa)| (&**ns, &**sa)),
            protocol: self.protocol,
            host: &self.host,
            port: self.port,
            reason: self.reason,
            rule: self.rule.as_deref(),
        }
    }
}

impl ProtocolKey {
    fn as_str(self) -> &'static str {
        match self {
            Self::Read(protocol) => protocol.as_str(),
            Self::Unread => PROTOCOL_UNKNOWN,
        }
    }
}

impl TrafficInventory {
    /// An empty inventory holding at most `max_entries` keys (at least one), counting overflow in
    /// `metrics`.
    pub fn new(max_entries: usize, metrics: Metrics) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: DefaultHashBuilder::default(),
            entries: AtomicUsize::new(0),
            max_entries: max_entries.max(1),
            overflow: AtomicU64::new(0),
            names: Mutex::default(),
            metrics,
        }
    }

    /// Counts one check that was read and decided.
    pub fn record(&self, decision: &Decision<'_>, protocol: Protocol) {
        let mut scratch: Option<NormalizedHost> = None;
        let host = decision
            .facts
            .normalized_host(&mut scratch)
            .unwrap_or(NO_HOST);
        let key = FlowKeyRef {
            caller: decision
                .facts
                .caller
                .map(|id| (id.namespace, id.service_account)),
            protocol: ProtocolKey::Read(protocol),
            host,
            port: decision.facts.port,
            reason: decision.reason,
            rule: decision.rule.map(|rule| rule.name.as_str()),
        };
        self.count(key, 1, now_unix(), None);
    }

    /// Counts one check refused before its message was read (shed, or an unreadable frame).
    pub fn record_unread(&self, reason: Reason) {
        let key = FlowKeyRef {
            caller: None,
            protocol: ProtocolKey::Unread,
            host: NO_HOST,
            port: None,
            reason,
            rule: None,
        };
        self.count(key, 1, now_unix(), None);
    }

    /// Adds `count` checks under `key`, seen last at `last_seen` (and first at `first_seen`, for a
    /// key restored from a file).
    fn count(&self, key: FlowKeyRef<'_>, count: u64, last_seen: u64, first_seen: Option<u64>) {
        let hash = self.hasher.hash_one(key);
        let shard = &self.shards[shard_of(hash)];
        let same = |(held, _): &(FlowKey, FlowStats)| held.borrowed() == key;
        let bump = |stats: &FlowStats| {
            stats.count.fetch_add(count, Ordering::Relaxed);
            stats.last_seen.fetch_max(last_seen, Ordering::Relaxed);
            if let Some(first) = first_seen {
                stats.first_seen.fetch_min(first, Ordering::Relaxed);
            }
        };
        {
            let table = shard
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((_, stats)) = table.find(hash, same) {
                bump(stats);
                return;
            }
        }
        let mut table = shard
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Another check may have added it between the two locks.
        if let Some((_, stats)) = table.find(hash, same) {
            bump(stats);
            return;
        }
        let admitted = self
            .entries
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < self.max_entries).then_some(held + 1)
            });
        if admitted.is_err() {
            self.overflow.fetch_add(count, Ordering::Relaxed);
            self.metrics.record_traffic_overflow(count);
            return;
        }
        let owned = self.own(key);
        let stats = FlowStats {
            count: AtomicU64::new(count),
            first_seen: AtomicU64::new(first_seen.unwrap_or(last_seen)),
            last_seen: AtomicU64::new(last_seen),
        };
        let hasher = &self.hasher;
        table.insert_unique(hash, (owned, stats), |(held, _)| {
            hasher.hash_one(held.borrowed())
        });
        self.metrics
            .record_traffic_entries(self.entries.load(Ordering::Relaxed));
    }

    /// An owned copy of `key`, sharing the names already held.
    fn own(&self, key: FlowKeyRef<'_>) -> FlowKey {
        let mut names = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut intern = |name: &str| -> Arc<str> {
            if let Some(held) = names.get(name) {
                return Arc::clone(held);
            }
            let held: Arc<str> = Arc::from(name);
            names.insert(Arc::clone(&held));
            held
        };
        FlowKey {
            caller: key.caller.map(|(ns, sa)| (intern(ns), intern(sa))),
            protocol: key.protocol,
            host: key.host.into(),
            port: key.port,
            reason: key.reason,
            rule: key.rule.map(&mut intern),
        }
    }

    /// Restores the entries of a saved document (the `--traffic-file` of a previous run), adding to
    /// what is counted already. Entries that do not fit are counted as overflow, like new keys.
    pub fn restore(&self, document: &InventoryDocument) {
        for entry in &document.entries {
            let protocol = match entry.protocol_kind() {
                Some(protocol) => ProtocolKey::Read(protocol),
                None => ProtocolKey::Unread,
            };
            let (Some(reason), Ok(first), Ok(last)) = (
                entry.reason_code(),
                parse_time(&entry.first_seen),
                parse_time(&entry.last_seen),
            ) else {
                // A parsed document has been checked; nothing to restore otherwise.
                continue;
            };
            let key = FlowKeyRef {
                caller: entry.caller(),
                protocol,
                host: &entry.host,
                port: entry.port,
                reason,
                rule: entry.rule.as_deref(),
            };
            self.count(key, entry.count, last, Some(first));
        }
        self.overflow
            .fetch_add(document.overflow, Ordering::Relaxed);
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// True when no check has been counted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The inventory as a document, entries sorted by key. Shards are read one at a time, so checks
    /// keep being counted while it is taken.
    pub fn snapshot(&self, trust_domains: &[String]) -> InventoryDocument {
        let mut entries = Vec::with_capacity(self.len());
        for shard in &*self.shards {
            let table = shard
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            entries.extend(table.iter().map(|(key, stats)| entry_of(key, stats)));
        }
        entries.sort_unstable_by(|a, b| a.key().cmp(&b.key()));
        InventoryDocument {
            format: FORMAT.to_owned(),
            version: VERSION,
            generated_at: format_time(now_unix()),
            trust_domains: trust_domains.to_vec(),
            max_entries: self.max_entries as u64,
            overflow: self.overflow.load(Ordering::Relaxed),
            entries,
        }
    }
}

fn entry_of(key: &FlowKey, stats: &FlowStats) -> FlowEntry {
    let (namespace, service_account) = key
        .caller
        .as_ref()
        .map_or((NO_CALLER, NO_CALLER), |(ns, sa)| (&**ns, &**sa));
    FlowEntry {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        protocol: key.protocol.as_str().to_owned(),
        host: key.host.to_string(),
        port: key.port,
        decision: key.reason.verdict().as_str().to_owned(),
        reason: key.reason.as_str().to_owned(),
        rule: key.rule.as_deref().map(str::to_owned),
        count: stats.count.load(Ordering::Relaxed),
        first_seen: format_time(stats.first_seen.load(Ordering::Relaxed)),
        last_seen: format_time(stats.last_seen.load(Ordering::Relaxed)),
    }
}

/// The shard a hash belongs to: bits the tables do not use to place keys (they take the low bits for
/// the bucket and the top seven for the tag).
fn shard_of(hash: u64) -> usize {
    (hash >> 32) as usize % SHARDS
}

impl Hash for FlowKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.borrowed().hash(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{EgressRequest, HttpRequest, Policy, SourceFile, compile};

    fn policy() -> Policy {
        let yaml = "defaultAction: DENY\nrules:\n- name: web\n  from: {namespaces: [web]}\n  to: {hosts: ['**.example.com']}\n";
        compile(&[SourceFile {
            name: "rules.yaml".into(),
            text: yaml.into(),
        }])
        .unwrap()
    }

    fn check(policy: &Policy, inventory: &TrafficInventory, principal: &str, host: &str) {
        let request = EgressRequest {
            principal,
            http: Some(HttpRequest {
                authority: host,
                method: "GET",
                path: "/",
            }),
            port: Some(443),
            ..EgressRequest::default()
        };
        inventory.record(&policy.decide(&request), request.protocol());
    }

    const WEB: &str = "spiffe://cluster.local/ns/web/sa/frontend";

    #[test]
    fn checks_are_counted_by_key() {
        let (policy, inventory) = (policy(), TrafficInventory::new(10, Metrics::disabled()));
        check(&policy, &inventory, WEB, "API.example.com");
        check(&policy, &inventory, WEB, "api.example.com.");
        check(&policy, &inventory, WEB, "other.org");
        check(
            &policy,
            &inventory,
            "spiffe://evil.org/ns/web/sa/x",
            "api.example.com",
        );
        check(&policy, &inventory, WEB, "bad host");
        inventory.record_unread(Reason::Overloaded);
        let document = inventory.snapshot(&["cluster.local".to_owned()]);
        let rows: Vec<String> = document
            .entries
            .iter()
            .map(|e| {
                format!(
                    "{}/{} {} {} {:?} {} {} {:?} x{}",
                    e.namespace,
                    e.service_account,
                    e.protocol,
                    e.host,
                    e.port,
                    e.decision,
                    e.reason,
                    e.rule,
                    e.count
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                "<none>/<none> http api.example.com Some(443) deny invalid_principal None x1",
                "<none>/<none> unknown <invalid> None deny overloaded None x1",
                "web/frontend http <invalid> Some(443) deny invalid_host None x1",
                "web/frontend http api.example.com Some(443) allow allowed_by_rule Some(\"web\") x2",
                "web/frontend http other.org Some(443) deny no_matching_rule None x1",
            ]
        );
        assert_eq!(document.trust_domains, ["cluster.local"]);
    }

    #[test]
    fn a_full_inventory_counts_new_keys_as_overflow_and_keeps_the_old_ones() {
        let (policy, inventory) = (policy(), TrafficInventory::new(2, Metrics::disabled()));
        check(&policy, &inventory, WEB, "a.example.com");
        check(&policy, &inventory, WEB, "b.example.com");
        check(&policy, &inventory, WEB, "c.example.com");
        check(&policy, &inventory, WEB, "c.example.com");
        check(&policy, &inventory, WEB, "a.example.com");
        let document = inventory.snapshot(&[]);
        let hosts: Vec<(&str, u64)> = document
            .entries
            .iter()
            .map(|e| (e.host.as_str(), e.count))
            .collect();
        assert_eq!(hosts, [("a.example.com", 2), ("b.example.com", 1)]);
        assert_eq!(document.overflow, 2);
        assert_eq!(inventory.len(), 2);
    }

    #[test]
    fn a_restored_document_adds_to_the_counts() {
        let (policy, first) = (policy(), TrafficInventory::new(10, Metrics::disabled()));
        check(&policy, &first, WEB, "a.example.com");
        check(&policy, &first, WEB, "a.example.com");
        let saved = InventoryDocument::parse(first.snapshot(&[]).to_json().as_bytes()).unwrap();
        let second = TrafficInventory::new(10, Metrics::disabled());
        second.restore(&saved);
        check(&policy, &second, WEB, "a.example.com");
        let document = second.snapshot(&[]);
        assert_eq!(document.entries.len(), 1);
        assert_eq!(document.entries[0].count, 3);
        assert_eq!(document.entries[0].first_seen, saved.entries[0].first_seen);
    }

    #[test]
    fn concurrent_checks_lose_no_count() {
        let policy = policy();
        let inventory = TrafficInventory::new(1000, Metrics::disabled());
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let (policy, inventory) = (&policy, &inventory);
                scope.spawn(move || {
                    for i in 0..2000 {
                        let host = format!("h{}.example.com", (i + thread) % 50);
                        check(policy, inventory, WEB, &host);
                    }
                });
            }
        });
        let document = inventory.snapshot(&[]);
        assert_eq!(document.entries.len(), 50);
        assert_eq!(document.entries.iter().map(|e| e.count).sum::<u64>(), 8000);
    }
}
