//! Loading rule files from disk and publishing the live rule set.
//!
//! `load_policy` reads, parses and compiles with no side effects; `validate`, `explain`, startup and
//! every reload call it. `RuleStore` publishes a new policy with one atomic pointer swap, only after the
//! whole rule set compiled: checks in flight keep the `Arc<Policy>` they started with, and the hot path
//! never takes a lock.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::metrics;
use crate::policy::{CompileError, Policy, SourceFile, compile, compile_with_digest};

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

/// Reads a rule file, or every `*.yaml`/`*.yml` in a directory (sorted by name; hidden entries such as a
/// ConfigMap's `..data` are skipped), and compiles them into one policy.
pub fn load_policy(path: &Path) -> Result<Policy, LoadError> {
    let files = read_rule_files(path)?;
    compile(&files).map_err(LoadError::Invalid)
}

/// The rule files a path stands for, read into memory.
pub fn read_rule_files(path: &Path) -> Result<Vec<SourceFile>, LoadError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LoadError::Io { path, source }
    };
    let metadata = std::fs::metadata(path).map_err(io(path))?;
    let paths = if metadata.is_dir() {
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(path).map_err(io(path))? {
            let entry = entry.map_err(io(path))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let is_rule_file = name.ends_with(".yaml") || name.ends_with(".yml");
            if !is_rule_file || name.starts_with('.') {
                continue;
            }
            // Follows symlinks (ConfigMap keys are symlinks into `..data`), so this is the target's type.
            match std::fs::metadata(entry.path()) {
                Ok(target) if target.is_file() => paths.push(entry.path()),
                Ok(_) => return Err(LoadError::NotAFile { path: entry.path() }),
                // A dangling symlink is a removed file: its rules are gone, like a deleted ConfigMap key.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(io(&entry.path())(error)),
            }
        }
        paths.sort();
        if paths.is_empty() {
            return Err(LoadError::NoRuleFiles {
                path: path.to_path_buf(),
            });
        }
        paths
    } else if metadata.is_file() {
        vec![path.to_path_buf()]
    } else {
        return Err(LoadError::NotAFile {
            path: path.to_path_buf(),
        });
    };
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).map_err(io(&p))?;
            Ok(SourceFile {
                name: p.display().to_string(),
                text,
            })
        })
        .collect()
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

/// What `/rules` reports.
#[derive(Clone, Debug)]
pub struct StoreStatus {
    /// Digest of the live rule set.
    pub digest: String,
    /// Rules in the live rule set.
    pub rules: usize,
    /// Files the live rule set was read from.
    pub files: Vec<String>,
    /// When the live rule set was loaded.
    pub loaded_at: SystemTime,
    /// The error of the newest rejected reload, cleared by the next success.
    pub last_error: Option<String>,
}

/// The live rule set.
#[derive(Debug)]
pub struct RuleStore {
    path: PathBuf,
    current: ArcSwap<Policy>,
    status: Mutex<StoreStatus>,
    /// What the newest rejected reload read (content digest, or the I/O error), so the same bad files
    /// seen again by a resync are not rejected, logged and counted once more: unchanged is not a reload.
    last_rejected: Mutex<Option<String>>,
}

impl RuleStore {
    /// A store serving `policy`, which was loaded from `path`.
    pub fn new(path: PathBuf, policy: Policy) -> Self {
        let status = StoreStatus {
            digest: policy.digest().to_owned(),
            rules: policy.rules().len(),
            files: policy.files().to_vec(),
            loaded_at: SystemTime::now(),
            last_error: None,
        };
        metrics::record_rule_set(policy.rules().len(), status.loaded_at);
        Self {
            path,
            current: ArcSwap::from_pointee(policy),
            status: Mutex::new(status),
            last_rejected: Mutex::new(None),
        }
    }

    /// The rules path this store reloads from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The live policy. Lock-free; do not hold the guard across an `.await`.
    pub fn current(&self) -> arc_swap::Guard<Arc<Policy>> {
        self.current.load()
    }

    /// A snapshot of the status for `/rules`.
    pub fn status(&self) -> StoreStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the rules path and swaps the result in if it is valid and different.
    pub fn reload(&self) -> ReloadOutcome {
        let outcome = match self.load_if_changed() {
            Ok(None) => ReloadOutcome::Unchanged,
            Ok(Some(policy)) => {
                let (digest, rules, files) = (
                    policy.digest().to_owned(),
                    policy.rules().len(),
                    policy.files().to_vec(),
                );
                let previous = self.current.swap(Arc::new(policy));
                release_on_this_thread(previous);
                let loaded_at = SystemTime::now();
                metrics::record_rule_set(rules, loaded_at);
                *self.status.lock().unwrap_or_else(|p| p.into_inner()) = StoreStatus {
                    digest: digest.clone(),
                    rules,
                    files,
                    loaded_at,
                    last_error: None,
                };
                ReloadOutcome::Applied { digest, rules }
            }
            Err(error) => {
                self.status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .last_error = Some(error.to_string());
                ReloadOutcome::Failed(error)
            }
        };
        match &outcome {
            ReloadOutcome::Applied { digest, rules } => {
                metrics::record_reload(true);
                tracing::info!(rules_sha256 = %digest, rules, path = %self.path.display(), "Applied new rules");
            }
            ReloadOutcome::Unchanged => {
                tracing::debug!(path = %self.path.display(), "Rules unchanged");
            }
            ReloadOutcome::Failed(error) => {
                metrics::record_reload(false);
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
        let files = match read_rule_files(&self.path) {
            Ok(files) => files,
            Err(error) => return rejected(error.to_string(), error),
        };
        let digest = crate::policy::digest(&files);
        if digest == self.current().digest() {
            // Back to the live rules (a rejected edit was reverted, or nothing changed): nothing is wrong.
            *self.last_rejected.lock().unwrap_or_else(|p| p.into_inner()) = None;
            self.status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .last_error = None;
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
fn release_on_this_thread(previous: Arc<Policy>) {
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
