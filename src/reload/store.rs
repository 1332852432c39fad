//! The live rule set: [`RuleStore`] publishes the platform rules composed with the tenants' with one
//! atomic pointer swap, only after they compiled, so checks in flight keep the rule set they started
//! with and the hot path never takes a lock. Reading and compiling are the parent module's.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::metrics::Metrics;
use crate::policy::{Policy, compile_with_digest};

use super::tenants::{Refresh, TenantStatus, Tenants};
use super::{LoadError, LoadWarning, read_rule_files, rule_dir_entries, rule_file_paths};

/// What a reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// A new rule set is live.
    Applied {
        /// Its digest.
        digest: String,
        /// Its rule count.
        rules: usize,
    },
    /// The files hash to the live rule set: nothing to do.
    Unchanged,
    /// The files were rejected; the previous rule set keeps serving.
    Failed(LoadError),
}

/// A rule set as published: the compiled rules and when they went live, swapped in together so that
/// what `/rules` and `/metrics` show is always the rule set that decides.
#[derive(Debug)]
pub struct LiveRules {
    /// The compiled rules: the platform's, then the tenants' (shared with the platform rules kept for
    /// recomposing when there are no tenant rules).
    pub policy: Arc<Policy>,
    /// When they went live.
    pub loaded_at: SystemTime,
}

/// What `/rules` reports: the live rule set and what is wrong with the rules path, read together.
#[derive(Clone, Debug)]
pub struct StoreStatus {
    /// The live rule set (its digest, rules and files are the policy's).
    pub live: Arc<LiveRules>,
    /// The error of the newest rejected reload, cleared by the next success.
    pub last_error: Option<String>,
    /// Entries of the rules directory that look like rule files but are not read, as of the newest read.
    pub warnings: Vec<String>,
    /// Each tenant file's state, in namespace order; empty without `--tenant-rules`.
    pub tenants: Vec<TenantStatus>,
    /// Why the tenant directory could not be listed at the newest reload, if it could not.
    pub tenant_dir_error: Option<String>,
}

/// What the newest reads of the rules path found wrong. Kept beside the live rules rather than in
/// them: a rejected reload, or a stray file next to the rules, changes these but must not publish a
/// rule set.
#[derive(Debug, Default)]
struct Problems {
    last_error: Option<String>,
    warnings: Vec<String>,
    tenant_warnings: Vec<String>,
    tenants: Vec<TenantStatus>,
    tenant_dir_error: Option<String>,
}

/// What the live policy is composed of. Only reloads touch it, one at a time.
#[derive(Debug)]
struct Parts {
    /// The platform rules in force.
    platform: Arc<Policy>,
    /// The tenant files, with `--tenant-rules`.
    tenants: Option<Tenants>,
}

/// The live rule set.
#[derive(Debug)]
pub struct RuleStore {
    path: PathBuf,
    live: ArcSwap<LiveRules>,
    /// Locked by every writer, and by [`RuleStore::status`] around its read of `live`, so that a status
    /// never pairs new rules with the error of the reload they replaced.
    problems: Mutex<Problems>,
    /// What the newest rejected reload read (content digest, or the I/O error), so the same bad files
    /// seen again by a resync are not rejected, logged and counted once more: unchanged is not a reload.
    last_rejected: Mutex<Option<String>>,
    /// Held for the whole of a reload: reloads never overlap.
    parts: Mutex<Parts>,
    tenant_dir: Option<PathBuf>,
    metrics: Metrics,
}

impl RuleStore {
    /// A store serving `policy`, which was loaded from `path`, recording reloads in `metrics`.
    pub fn new(path: PathBuf, policy: Policy, metrics: Metrics) -> Self {
        let policy = Arc::new(policy);
        let live = LiveRules {
            policy: Arc::clone(&policy),
            loaded_at: SystemTime::now(),
        };
        metrics.record_rule_set(live.policy.rules().len(), live.loaded_at);
        let store = Self {
            path,
            live: ArcSwap::from_pointee(live),
            problems: Mutex::default(),
            last_rejected: Mutex::new(None),
            parts: Mutex::new(Parts {
                platform: policy,
                tenants: None,
            }),
            tenant_dir: None,
            metrics,
        };
        // Listing the directory again is cheap, and spares every caller from passing the warnings of
        // the load that made `policy`.
        let (_, warnings) = rule_file_paths(&store.path);
        store.note_warnings(&warnings);
        store
    }

    /// A store serving the platform rules `policy` (loaded from `path`) with the tenant files of
    /// `tenant_dir`. A tenant file that fails is rejected alone (logged, counted, reported): the store
    /// starts with the platform and the valid tenants. Fails only when the directory cannot be listed,
    /// which is a wrong flag or mount rather than one team's mistake.
    pub fn with_tenants(
        path: PathBuf,
        policy: Policy,
        tenant_dir: PathBuf,
        metrics: Metrics,
    ) -> Result<Self, LoadError> {
        let mut warnings = Vec::new();
        rule_dir_entries(&tenant_dir, &mut warnings)?;
        let mut store = Self::new(path, policy, metrics);
        store.tenant_dir = Some(tenant_dir.clone());
        {
            let mut parts = store.parts();
            let parts = &mut *parts;
            let mut tenants = Tenants::new(tenant_dir);
            let guardrails = &parts.platform.settings().tenants;
            let refresh = tenants.refresh(guardrails, guardrails);
            parts.tenants = Some(tenants);
            for _ in 0..refresh.rejected {
                store.metrics.record_reload(false);
            }
            store.publish(parts, refresh.changed);
        }
        Ok(store)
    }

    fn parts(&self) -> std::sync::MutexGuard<'_, Parts> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the policy `parts` compose when `changed`, and the tenants' state either way, under
    /// the problems lock so that a status never pairs a rule set with another's tenant list. Returns
    /// the new rule set's digest and size when it published one.
    fn publish(&self, parts: &Parts, changed: bool) -> Option<(String, usize)> {
        let (statuses, dir_error, tenant_warnings) = match &parts.tenants {
            Some(tenants) => (
                tenants.statuses(),
                tenants.dir_error().map(str::to_owned),
                tenants.warnings().iter().map(ToString::to_string).collect(),
            ),
            None => (Vec::new(), None, Vec::new()),
        };
        let next = changed.then(|| {
            let policy = match &parts.tenants {
                Some(tenants) if tenants.serving().next().is_some() => {
                    Arc::new(parts.platform.with_tenants(tenants.serving()))
                }
                _ => Arc::clone(&parts.platform),
            };
            LiveRules {
                policy,
                loaded_at: SystemTime::now(),
            }
        });
        let mut problems = self.problems();
        if changed {
            // A new platform rule set is valid, and an unchanged one already cleared its error.
            problems.last_error = None;
        }
        if problems.tenant_warnings != tenant_warnings {
            for warning in &tenant_warnings {
                tracing::warn!(%warning, "Tenant rules directory entry not read");
            }
            problems.tenant_warnings = tenant_warnings;
        }
        problems.tenants = statuses;
        problems.tenant_dir_error = dir_error;
        let next = next?;
        let published = (next.policy.digest().to_owned(), next.policy.rules().len());
        let loaded_at = next.loaded_at;
        let previous = self.live.swap(Arc::new(next));
        drop(problems);
        self.metrics.record_rule_set(published.1, loaded_at);
        release_on_this_thread(previous);
        Some(published)
    }

    /// The tenant rules directory, with `--tenant-rules`.
    pub fn tenant_dir(&self) -> Option<&Path> {
        self.tenant_dir.as_deref()
    }

    fn problems(&self) -> std::sync::MutexGuard<'_, Problems> {
        self.problems.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the warnings of the newest read for `/rules`, and logs them when they changed: a resync
    /// every few seconds must not repeat the same warnings in the log.
    fn note_warnings(&self, warnings: &[LoadWarning]) {
        let warnings: Vec<String> = warnings.iter().map(ToString::to_string).collect();
        let mut problems = self.problems();
        if problems.warnings == warnings {
            return;
        }
        for warning in &warnings {
            tracing::warn!(%warning, path = %self.path.display(), "Rules directory entry not read");
        }
        problems.warnings = warnings;
    }

    /// The rules path this store reloads from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The live rule set. Lock-free; do not hold the guard across an `.await`.
    pub fn current(&self) -> arc_swap::Guard<Arc<LiveRules>> {
        self.live.load()
    }

    /// A snapshot of the status for `/rules`.
    pub fn status(&self) -> StoreStatus {
        let problems = self.problems();
        StoreStatus {
            live: self.live.load_full(),
            last_error: problems.last_error.clone(),
            warnings: problems
                .warnings
                .iter()
                .chain(&problems.tenant_warnings)
                .cloned()
                .collect(),
            tenants: problems.tenants.clone(),
            tenant_dir_error: problems.tenant_dir_error.clone(),
        }
    }

    /// Records a reload that ended without an outcome (its thread panicked or could not start): the
    /// rules in force stay, and the failure shows in `/rules` and the reload metrics like any other.
    pub(crate) fn record_failed_reload(&self, why: &str) {
        self.metrics.record_reload(false);
        self.problems().last_error = Some(why.to_owned());
    }

    /// Re-reads the rules path (and the tenant directory) and swaps in the composed result if the
    /// platform rules are valid and something changed. An invalid platform rule set rejects the whole
    /// reload; a rejected tenant file is rejected alone (see `reload::tenants`).
    pub fn reload(&self) -> ReloadOutcome {
        let mut parts = self.parts();
        let parts = &mut *parts;
        let platform = match self.load_if_changed(parts.platform.digest()) {
            Ok(PlatformRead::Unchanged) => None,
            Ok(PlatformRead::Changed(next)) => Some(*next),
            // While the platform rules on disk are invalid, the whole reload stays rejected: tenant
            // changes wait too, so what serves is always one state that was valid as a whole.
            Ok(PlatformRead::StillRejected) => {
                tracing::debug!(path = %self.path.display(), still_rejected = true, "Rules unchanged");
                return ReloadOutcome::Unchanged;
            }
            Err(error) => {
                self.problems().last_error = Some(error.to_string());
                self.metrics.record_reload(false);
                log_rejected(&error, &self.path);
                return ReloadOutcome::Failed(error);
            }
        };
        let platform_changed = platform.is_some();
        let previous = platform.map(|next| std::mem::replace(&mut parts.platform, Arc::new(next)));
        let previous_guardrails = previous.as_ref().unwrap_or(&parts.platform);
        let refresh = match &mut parts.tenants {
            Some(tenants) => tenants.refresh(
                &parts.platform.settings().tenants,
                &previous_guardrails.settings().tenants,
            ),
            None => Refresh::default(),
        };
        drop(previous);
        for _ in 0..refresh.rejected {
            self.metrics.record_reload(false);
        }
        match self.publish(parts, platform_changed || refresh.changed) {
            Some((digest, rules)) => {
                // Last, after the rule-set gauges: a scraper that sees the counter move sees the new set.
                self.metrics.record_reload(true);
                tracing::info!(rules_sha256 = %digest, rules, path = %self.path.display(), "Applied new rules");
                ReloadOutcome::Applied { digest, rules }
            }
            None => {
                tracing::debug!(path = %self.path.display(), "Rules unchanged");
                ReloadOutcome::Unchanged
            }
        }
    }
}

// === impl RuleStore (loading) ===

/// What reading the platform rules found.
#[derive(Debug)]
enum PlatformRead {
    /// The same content as the platform rules in force.
    Unchanged,
    /// The same content as the newest rejected read: the reload stays rejected, without another log
    /// line or count.
    StillRejected,
    /// New, valid platform rules.
    Changed(Box<Policy>),
}

impl RuleStore {
    /// Reads the files and compiles them only if they differ from both the live rules and the newest
    /// rejected files: hashing is cheap, compiling a large rule set is not.
    fn load_if_changed(&self, platform_digest: &str) -> Result<PlatformRead, LoadError> {
        let rejected = |fingerprint: String, error: LoadError| {
            let mut last = self.last_rejected.lock().unwrap_or_else(|p| p.into_inner());
            if last.as_deref() == Some(fingerprint.as_str()) {
                return Ok(PlatformRead::StillRejected);
            }
            *last = Some(fingerprint);
            Err(error)
        };
        let (files, warnings) = read_rule_files(&self.path);
        self.note_warnings(&warnings);
        let files = match files {
            Ok(files) => files,
            Err(error) => return rejected(error.to_string(), error),
        };
        let digest = crate::policy::digest(&files);
        if digest == platform_digest {
            // Back to the live rules (a rejected edit was reverted, or nothing changed): nothing is wrong.
            *self.last_rejected.lock().unwrap_or_else(|p| p.into_inner()) = None;
            self.problems().last_error = None;
            return Ok(PlatformRead::Unchanged);
        }
        match compile_with_digest(&files, digest.clone()) {
            Ok(policy) => {
                *self.last_rejected.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Ok(PlatformRead::Changed(Box::new(policy)))
            }
            Err(errors) => rejected(digest, LoadError::Invalid(errors)),
        }
    }
}

/// How long to wait for checks still holding the previous rule set before dropping our reference anyway.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Frees the previous rule set here, on the reload thread, rather than on whichever request thread drops
/// the last reference: freeing 100k rules takes milliseconds that would land in a check's latency. Checks
/// hold a rule set for microseconds, so the wait is short; after `RELEASE_WAIT` we stop waiting.
fn release_on_this_thread(previous: Arc<LiveRules>) {
    let started = std::time::Instant::now();
    while Arc::strong_count(&previous) > 1 && started.elapsed() < RELEASE_WAIT {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    drop(previous);
}

fn log_rejected(error: &LoadError, path: &Path) {
    match error {
        LoadError::Invalid(errors) => {
            for error in errors {
                tracing::warn!(%error, path = %path.display(), "Rejected rule file; keeping previous rules");
            }
        }
        error => {
            tracing::warn!(%error, path = %path.display(), "Rejected rule file; keeping previous rules")
        }
    }
}
