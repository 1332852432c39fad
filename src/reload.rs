//! Loading rule files from disk and publishing the live rule set.
//!
//! `load_policy` reads, parses and compiles with no side effects; `validate`, `explain`, startup and
//! every reload call it (`load_policy_with_tenants` adds a tenant directory, strictly, for the one-shot
//! commands). `RuleStore` (in `store`) publishes a new policy with one atomic pointer swap, only after
//! the whole rule set compiled: checks in flight keep the rule set they started with, and the hot path
//! never takes a lock. With `--tenant-rules`, each tenant file is compiled and kept apart (`tenants`),
//! so one team's broken file is rejected alone.

use std::path::{Path, PathBuf};

use crate::policy::{
    CompileError, CompileErrorKind, Guardrails, Limit, Location, Policy, SourceFile, TenantRules,
    compile, compile_tenant,
};

mod store;
mod tenants;

pub use store::{LiveRules, ReloadOutcome, RuleStore, StoreStatus};
pub use tenants::TenantStatus;

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

/// [`load_policy`] for the platform rules at `platform`, composed with every tenant file of `tenants`
/// (when given), for the one-shot commands. Strict, unlike the server: any tenant file that cannot be
/// read or compiled fails the load, with every compile error of every file.
pub fn load_policy_with_tenants(
    platform: &Path,
    tenants: Option<&Path>,
) -> Result<Policy, LoadError> {
    load_policy_with_tenants_and_warnings(platform, tenants).0
}

/// [`load_policy_with_tenants`], and the directory entries skipped with a warning.
pub(crate) fn load_policy_with_tenants_and_warnings(
    platform: &Path,
    tenants: Option<&Path>,
) -> (Result<Policy, LoadError>, Vec<LoadWarning>) {
    let (loaded, mut warnings) = load_policy_with_warnings(platform);
    let Some(dir) = tenants else {
        return (loaded, warnings);
    };
    let composed = loaded.and_then(|policy| {
        let compiled = load_tenants_strictly(dir, &policy.settings().tenants, &mut warnings)?;
        Ok(policy.with_tenants(&compiled))
    });
    (composed, warnings)
}

/// Every tenant file of `dir`, compiled under `guardrails`; the first unreadable entry, or every
/// compile error of every file.
fn load_tenants_strictly(
    dir: &Path,
    guardrails: &Guardrails,
    warnings: &mut Vec<LoadWarning>,
) -> Result<Vec<TenantRules>, LoadError> {
    let mut compiled = Vec::new();
    let mut errors = Vec::new();
    let mut first_by_namespace: std::collections::HashMap<String, String> =
        std::collections::HashMap::new();
    for entry in rule_dir_entries(dir, warnings)? {
        let file = read_rule_file(&entry?)?;
        if let Some(namespace) = crate::policy::namespace_of_file(&file.name) {
            if let Some(other) = first_by_namespace.get(namespace) {
                errors.push(CompileError {
                    location: Location {
                        file: file.name.clone(),
                        line: 1,
                        column: 1,
                    },
                    rule: None,
                    kind: CompileErrorKind::DuplicateTenantFile {
                        namespace: namespace.to_owned(),
                        other: other.clone(),
                    },
                });
                continue;
            }
            first_by_namespace.insert(namespace.to_owned(), file.name.clone());
        }
        match compile_tenant(&file, guardrails) {
            Ok(rules) => compiled.push(rules),
            Err(more) => errors.extend(more),
        }
    }
    if errors.is_empty() {
        Ok(compiled)
    } else {
        Err(LoadError::Invalid(errors))
    }
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
    let entries = match rule_dir_entries(path, &mut warnings) {
        Ok(entries) => entries,
        Err(error) => return (Err(error), warnings),
    };
    let mut paths = Vec::new();
    let mut first_error = None;
    for entry in entries {
        match entry {
            Ok(path) => paths.push(path),
            Err(problem) => {
                first_error.get_or_insert(problem);
            }
        }
    }
    if let Some(error) = first_error {
        return (Err(error), warnings);
    }
    if paths.is_empty() {
        let error = LoadError::NoRuleFiles {
            path: path.to_path_buf(),
        };
        return (Err(error), warnings);
    }
    (Ok(paths), warnings)
}

/// Every `*.yaml`/`*.yml` entry of a rules directory, sorted by path, each either a readable file or
/// why it is not one; near misses go to `warnings`. Hidden entries are skipped. Shared by the platform
/// rules, where any bad entry fails the load, and the tenant directory, where it fails its tenant only.
pub(crate) fn rule_dir_entries(
    dir: &Path,
    warnings: &mut Vec<LoadWarning>,
) -> Result<Vec<Result<PathBuf, LoadError>>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(io_error(dir))?;
    let mut found = Vec::new();
    // Every entry is looked at even after a failure, so that the warnings are complete.
    let mut listing_error = None;
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                listing_error.get_or_insert(io_error(dir)(error));
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
        let outcome = match std::fs::metadata(entry.path()) {
            Ok(target) if target.is_file() => Ok(entry.path()),
            Ok(_) => Err(LoadError::NotAFile { path: entry.path() }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::read_link(entry.path()) {
                    Ok(target) => Err(LoadError::DanglingSymlink {
                        path: entry.path(),
                        target,
                    }),
                    // Removed between the listing and now: a file that is gone is not a rule file.
                    Err(_) => continue,
                }
            }
            Err(error) => Err(io_error(&entry.path())(error)),
        };
        found.push((entry.path(), outcome));
    }
    warnings.sort_by(|a, b| a.path.cmp(&b.path));
    if let Some(error) = listing_error {
        return Err(error);
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found.into_iter().map(|(_, outcome)| outcome).collect())
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
pub(crate) fn read_rule_file(path: &Path) -> Result<SourceFile, LoadError> {
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
