//! Loading rule files from disk and publishing the live rule set.
//!
//! `load_policy` reads, parses and compiles with no side effects; `validate`, `explain`, startup and
//! every reload call it. `RuleStore` publishes a new policy with one atomic pointer swap, only after the
//! whole rule set compiled: checks in flight keep the rule set they started with, and the hot path
//! never takes a lock.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::metrics::Metrics;
use crate::policy::{
    CompileError, CompileErrorKind, Limit, Location, Policy, SourceFile, compile,
    compile_with_digest,
};

/// Largest rule file read, in bytes. The 100k-rule benchmark file is 11 MiB in block style, and the
/// server is sized for about 100k rules (64 MiB resident), so 32 MiB leaves ample room (about 280k such
/// rules) while bounding what one file makes the parser build: it keeps a few dozen bytes of events per
/// byte of input before any rule is compiled.
pub const MAX_RULE_FILE_BYTES: u64 = 32 * 1024 * 1024;

/// Why a rule path could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file or directory could not be read (missing, permission denied, not UTF-8…).
    #[error("{}: {source}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The path, or a `*.yaml`/`*.yml` entry of the directory, is neither a regular file nor a directory
    /// (a FIFO, a socket, a device): reading it could block the reloader forever.
    #[error("{}: not a regular file", path.display())]
    NotAFile {
        /// The offending path.
        path: PathBuf,
    },
    /// A `*.yaml`/`*.yml` entry of the directory is a symlink to nothing. It stands for a rule file
    /// that cannot be read, which may be a DENY list: loading the others without it could widen access.
    #[error("{}: symlink to a missing file ({}); No such file or directory", path.display(), target.display())]
    DanglingSymlink {
        /// The symlink.
        path: PathBuf,
        /// Where it points.
        target: PathBuf,
    },
    /// A directory without any `*.yaml`/`*.yml` file: almost certainly a wrong mount, not "no rules".
    #[error("{}: no *.yaml or *.yml rule files in this directory", path.display())]
    NoRuleFiles {
        /// The directory.
        path: PathBuf,
    },
    /// The files were read but are not a valid rule set.
    #[error("{} error(s) in rule files; first: {}", .0.len(), .0.first().map(ToString::to_string).unwrap_or_default())]
    Invalid(Vec<CompileError>),
}

/// A directory entry that looks like a rule file but is not read: a warning, not an error, because the
/// entry is not part of the rule set by the rules of naming (and a stray `notes.YAML` must not stop every
/// reload), yet its author most likely meant it to be.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: warning: not read as a rule file: {reason}", path.display())]
pub struct LoadWarning {
    /// The entry.
    pub path: PathBuf,
    /// Why it is skipped.
    pub reason: &'static str,
}

/// Reads a rule file, or every `*.yaml`/`*.yml` in a directory (sorted by name; hidden entries such as a
/// ConfigMap's `..data` are skipped), and compiles them into one policy.
pub fn load_policy(path: &Path) -> Result<Policy, LoadError> {
    load_policy_with_warnings(path).0
}

/// [`load_policy`], and the directory entries skipped with a warning (reported even when loading fails:
/// a `rules.YAML` is likely why a directory has no rule files).
pub(crate) fn load_policy_with_warnings(
    path: &Path,
) -> (Result<Policy, LoadError>, Vec<LoadWarning>) {
    let (files, warnings) = read_rule_files(path);
    (
        files.and_then(|files| compile(&files).map_err(LoadError::Invalid)),
        warnings,
    )
}

/// The rule files a path stands for, read into memory, and the directory entries skipped with a warning.
fn read_rule_files(path: &Path) -> (Result<Vec<SourceFile>, LoadError>, Vec<LoadWarning>) {
    let (paths, warnings) = rule_file_paths(path);
    let files = paths.and_then(|paths| paths.iter().map(|p| read_rule_file(p)).collect());
    (files, warnings)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LoadError + use<> {
    let path = path.to_path_buf();
    move |source| LoadError::Io { path, source }
}

/// The files a rules path stands for, and the directory entries skipped with a warning.
///
/// An entry named `*.yaml`/`*.yml` is part of the rule set, so one that cannot be read (dangling symlink,
/// directory, FIFO, no permission) fails the whole load: dropping it silently could drop a DENY list and
/// widen access, so the last good rules keep serving instead. An entry that only looks like a rule file
/// (`rules.YAML`, `rules.yaml ` with a trailing space, `rules.json`) is not part of it, by the naming
/// rule, and is reported as a warning.
fn rule_file_paths(path: &Path) -> (Result<Vec<PathBuf>, LoadError>, Vec<LoadWarning>) {
    let mut warnings = Vec::new();
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) => return (Err(io_error(path)(error)), warnings),
    };
    if metadata.is_file() {
        return (Ok(vec![path.to_path_buf()]), warnings);
    }
    if !metadata.is_dir() {
        let error = LoadError::NotAFile {
            path: path.to_path_buf(),
        };
        return (Err(error), warnings);
    }
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(error) => return (Err(io_error(path)(error)), warnings),
    };
    let mut paths = Vec::new();
    // Every entry is looked at even after a failure, so that the warnings are complete.
    let mut first_error = None;
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                first_error.get_or_insert(io_error(path)(error));
                continue;
            }
        };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Hidden entries are never rule files: a ConfigMap's `..data` and `..2026_…` internals, editors'
        // swap and lock files.
        if name.starts_with('.') {
            continue;
        }
        if !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            if let Some(reason) = near_miss(&name) {
                warnings.push(LoadWarning {
                    path: entry.path(),
                    reason,
                });
            }
            continue;
        }
        // Follows symlinks (ConfigMap keys are symlinks into `..data`), so this is the target's type.
        let problem = match std::fs::metadata(entry.path()) {
            Ok(target) if target.is_file() => {
                paths.push(entry.path());
                None
            }
            Ok(_) => Some(LoadError::NotAFile { path: entry.path() }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Some(match std::fs::read_link(entry.path()) {
                    Ok(target) => LoadError::DanglingSymlink {
                        path: entry.path(),
                        target,
                    },
                    // Removed between the listing and now: a file that is gone is not a rule file.
                    Err(_) => continue,
                })
            }
            Err(error) => Some(io_error(&entry.path())(error)),
        };
        if let Some(problem) = problem {
            first_error.get_or_insert(problem);
        }
    }
    warnings.sort_by(|a, b| a.path.cmp(&b.path));
    if let Some(error) = first_error {
        return (Err(error), warnings);
    }
    paths.sort();
    if paths.is_empty() {
        let error = LoadError::NoRuleFiles {
            path: path.to_path_buf(),
        };
        return (Err(error), warnings);
    }
    (Ok(paths), warnings)
}

/// Why a name that is not `*.yaml`/`*.yml` still looks like a rule file, if it does.
fn near_miss(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    let trimmed = lower.trim_end_matches(|c: char| c.is_whitespace() || c == '.');
    if trimmed.ends_with(".yaml") || trimmed.ends_with(".yml") {
        Some("the name must end exactly in .yaml or .yml (lower case, nothing after it)")
    } else if trimmed.ends_with(".json") {
        Some("rule files are named *.yaml or *.yml, also when they hold JSON")
    } else {
        None
    }
}

/// Reads one rule file, refusing one over [`MAX_RULE_FILE_BYTES`]. The read itself is bounded, so a file
/// that grows while it is read cannot make us hold more.
fn read_rule_file(path: &Path) -> Result<SourceFile, LoadError> {
    use std::io::Read as _;
    let name = path.display().to_string();
    let too_large = || {
        LoadError::Invalid(vec![CompileError {
            location: Location {
                file: name.clone(),
                line: 1,
                column: 1,
            },
            rule: None,
            kind: CompileErrorKind::LimitExceeded(Limit::FileBytes(MAX_RULE_FILE_BYTES)),
        }])
    };
    let file = std::fs::File::open(path).map_err(io_error(path))?;
    if file
        .metadata()
        .is_ok_and(|metadata| metadata.len() > MAX_RULE_FILE_BYTES)
    {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(MAX_RULE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error(path))?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_RULE_FILE_BYTES {
        return Err(too_large());
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        io_error(path)(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })?;
    Ok(SourceFile { name, text })
}

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
    /// The compiled rules.
    pub policy: Policy,
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
}

/// What the newest reads of the rules path found wrong. Kept beside the live rules rather than in
/// them: a rejected reload, or a stray file next to the rules, changes these but must not publish a
/// rule set.
#[derive(Debug, Default)]
struct Problems {
    last_error: Option<String>,
    warnings: Vec<String>,
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
    metrics: Metrics,
}

impl RuleStore {
    /// A store serving `policy`, which was loaded from `path`, recording reloads in `metrics`.
    pub fn new(path: PathBuf, policy: Policy, metrics: Metrics) -> Self {
        let live = LiveRules {
            policy,
            loaded_at: SystemTime::now(),
        };
        metrics.record_rule_set(live.policy.rules().len(), live.loaded_at);
        let store = Self {
            path,
            live: ArcSwap::from_pointee(live),
            problems: Mutex::default(),
            last_rejected: Mutex::new(None),
            metrics,
        };
        // Listing the directory again is cheap, and spares every caller from passing the warnings of
        // the load that made `policy`.
        let (_, warnings) = rule_file_paths(&store.path);
        store.note_warnings(&warnings);
        store
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
            warnings: problems.warnings.clone(),
        }
    }

    /// Records a reload that ended without an outcome (its thread panicked or could not start): the
    /// rules in force stay, and the failure shows in `/rules` and the reload metrics like any other.
    pub(crate) fn record_failed_reload(&self, why: &str) {
        self.metrics.record_reload(false);
        self.problems().last_error = Some(why.to_owned());
    }

    /// Re-reads the rules path and swaps the result in if it is valid and different.
    pub fn reload(&self) -> ReloadOutcome {
        let outcome = match self.load_if_changed() {
            Ok(None) => ReloadOutcome::Unchanged,
            Ok(Some(policy)) => {
                let (digest, rules) = (policy.digest().to_owned(), policy.rules().len());
                let loaded_at = SystemTime::now();
                let mut problems = self.problems();
                let previous = self.live.swap(Arc::new(LiveRules { policy, loaded_at }));
                problems.last_error = None;
                drop(problems);
                self.metrics.record_rule_set(rules, loaded_at);
                release_on_this_thread(previous);
                ReloadOutcome::Applied { digest, rules }
            }
            Err(error) => {
                self.problems().last_error = Some(error.to_string());
                ReloadOutcome::Failed(error)
            }
        };
        match &outcome {
            ReloadOutcome::Applied { digest, rules } => {
                // Last, after the rule-set gauges: a scraper that sees the counter move sees the new set.
                self.metrics.record_reload(true);
                tracing::info!(rules_sha256 = %digest, rules, path = %self.path.display(), "Applied new rules");
            }
            ReloadOutcome::Unchanged => {
                tracing::debug!(path = %self.path.display(), "Rules unchanged");
            }
            ReloadOutcome::Failed(error) => {
                self.metrics.record_reload(false);
                log_rejected(error, &self.path);
            }
        }
        outcome
    }
}

// === impl RuleStore (loading) ===

impl RuleStore {
    /// Reads the files and compiles them only if they differ from both the live rules and the newest
    /// rejected files: hashing is cheap, compiling a large rule set is not.
    fn load_if_changed(&self) -> Result<Option<Policy>, LoadError> {
        let rejected = |fingerprint: String, error: LoadError| {
            let mut last = self.last_rejected.lock().unwrap_or_else(|p| p.into_inner());
            if last.as_deref() == Some(fingerprint.as_str()) {
                return Ok(None);
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
        if digest == self.current().policy.digest() {
            // Back to the live rules (a rejected edit was reverted, or nothing changed): nothing is wrong.
            *self.last_rejected.lock().unwrap_or_else(|p| p.into_inner()) = None;
            self.problems().last_error = None;
            return Ok(None);
        }
        match compile_with_digest(&files, digest.clone()) {
            Ok(policy) => {
                *self.last_rejected.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Ok(Some(policy))
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
