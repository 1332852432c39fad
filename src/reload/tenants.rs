//! The tenant directory (`--tenant-rules`): each `<namespace>.yaml` read, compiled and kept apart, so
//! that one team's broken file never stops the platform or another team.
//!
//! Per tenant, the rules that serve are the last ones that compiled *under the guardrails in force*: a
//! rejected file keeps its tenant's previous rules, but when the platform's guardrails change, those
//! previous rules are checked again from their source, and a tenant whose previous rules no longer fit
//! serves none until its file is fixed (fail closed: rules accepted under wider guardrails must not
//! outlive them). A file that disappears takes its rules with it: deleting a file is a change.
//!
//! This module reads files and keeps state; compiling is `policy`'s, publishing is the store's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::policy::{
    CompileError, Guardrail, Guardrails, SourceFile, TenantRules, compile_tenant, digest,
};

use super::{LoadError, LoadWarning, read_rule_file, rule_dir_entries};

/// What `/rules` and `/metrics` report about one tenant file.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantStatus {
    /// The namespace, from the file name (as written when it is not a valid namespace name).
    pub namespace: String,
    /// The file.
    pub file: PathBuf,
    /// Digest of the rules that serve, if any.
    pub sha256: Option<String>,
    /// Rules that serve.
    pub rules: usize,
    /// Why the file on disk is rejected, if it is.
    pub last_error: Option<String>,
    /// When the rules that serve went live.
    pub last_reload_success: Option<SystemTime>,
}

/// The rules a tenant serves and where they came from.
#[derive(Debug)]
struct Good {
    /// The file as it was read, to check it again when the guardrails change.
    source: SourceFile,
    rules: Arc<TenantRules>,
    since: SystemTime,
}

/// One tenant file's state across reloads.
#[derive(Debug)]
struct Tenant {
    file: PathBuf,
    good: Option<Good>,
    last_error: Option<String>,
    /// What the newest rejection read (content digest, or the read error) and under which guardrail,
    /// so that a resync seeing the same bad file does not log and count it again.
    last_rejected: Option<(String, Option<Guardrail>)>,
}

/// What one refresh of the tenant directory did.
#[derive(Debug, Default)]
pub(crate) struct Refresh {
    /// Some tenant's serving rules changed (applied, dropped or removed): the policy must be recomposed.
    pub(crate) changed: bool,
    /// Distinct new rejections, one per tenant file, each counted once.
    pub(crate) rejected: usize,
}

/// Every tenant file of the directory and its state.
#[derive(Debug)]
pub(crate) struct Tenants {
    dir: PathBuf,
    /// By file stem (the namespace when valid); a `BTreeMap`, so composition is in namespace order.
    tenants: BTreeMap<String, Tenant>,
    /// Why the directory itself cannot be listed, if it cannot: every tenant then keeps its rules.
    dir_error: Option<String>,
    warnings: Vec<LoadWarning>,
}

impl Tenants {
    /// An empty set reading `dir`; nothing is read until [`Tenants::refresh`].
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            tenants: BTreeMap::new(),
            dir_error: None,
            warnings: Vec::new(),
        }
    }

    /// Why the directory could not be listed at the newest refresh, if it could not.
    pub(crate) fn dir_error(&self) -> Option<&str> {
        self.dir_error.as_deref()
    }

    /// Entries of the directory that look like tenant files but are not read, as of the newest refresh.
    pub(crate) fn warnings(&self) -> &[LoadWarning] {
        &self.warnings
    }

    /// The rules that serve, in namespace order.
    pub(crate) fn serving(&self) -> impl Iterator<Item = &TenantRules> {
        self.tenants
            .values()
            .filter_map(|tenant| tenant.good.as_ref().map(|good| good.rules.as_ref()))
    }

    /// Each tenant's status, in namespace order.
    pub(crate) fn statuses(&self) -> Vec<TenantStatus> {
        self.tenants
            .iter()
            .map(|(namespace, tenant)| TenantStatus {
                namespace: namespace.clone(),
                file: tenant.file.clone(),
                sha256: tenant
                    .good
                    .as_ref()
                    .map(|good| good.rules.digest().to_owned()),
                rules: tenant
                    .good
                    .as_ref()
                    .map_or(0, |good| good.rules.rules().len()),
                last_error: tenant.last_error.clone(),
                last_reload_success: tenant.good.as_ref().map(|good| good.since),
            })
            .collect()
    }

    /// Re-reads the directory and recompiles every tenant whose file or guardrail changed, under
    /// `guardrails` (`previous`: the guardrails of the previous refresh, if they may differ). A
    /// directory that cannot be listed changes no file: it is reported (and counted once per distinct
    /// error), and every tenant keeps its rules as far as they fit the guardrails.
    pub(crate) fn refresh(&mut self, guardrails: &Guardrails, previous: &Guardrails) -> Refresh {
        let recheck = |key: &str| guardrails.for_namespace(key) != previous.for_namespace(key);
        let mut refresh = Refresh::default();
        let mut warnings = Vec::new();
        let listed = rule_dir_entries(&self.dir, &mut warnings);
        self.warnings = warnings;
        let entries = match listed {
            Ok(entries) => entries,
            Err(error) => {
                let error = error.to_string();
                if self.dir_error.as_deref() != Some(error.as_str()) {
                    tracing::warn!(%error, dir = %self.dir.display(), "Cannot list the tenant rules directory; keeping every tenant's rules");
                    refresh.rejected += 1;
                }
                self.dir_error = Some(error);
                // Guardrails still apply to what serves, even while the directory cannot be read.
                for (namespace, tenant) in &mut self.tenants {
                    if recheck(namespace) {
                        refresh.changed |= tenant.recheck_good(namespace, guardrails);
                    }
                }
                return refresh;
            }
        };
        self.dir_error = None;
        let mut seen: BTreeMap<String, (PathBuf, Result<SourceFile, LoadError>)> = BTreeMap::new();
        let mut duplicates: BTreeMap<String, PathBuf> = BTreeMap::new();
        for entry in entries {
            let (path, read) = match entry {
                Ok(path) => {
                    let read = read_rule_file(&path);
                    (path, read)
                }
                Err(error) => (problem_path(&error).to_path_buf(), Err(error)),
            };
            let key = stem(&path);
            if let Some((first, _)) = seen.get(&key) {
                duplicates.insert(key.clone(), first.clone());
            }
            seen.insert(key, (path, read));
        }
        let gone: Vec<String> = self
            .tenants
            .keys()
            .filter(|key| !seen.contains_key(*key))
            .cloned()
            .collect();
        for key in gone {
            if let Some(tenant) = self.tenants.remove(&key) {
                tracing::info!(tenant = %key, file = %tenant.file.display(), "Tenant rule file removed; its rules no longer apply");
                refresh.changed |= tenant.good.is_some();
            }
        }
        for (key, (path, read)) in seen {
            let tenant = self.tenants.entry(key.clone()).or_insert_with(|| Tenant {
                file: path.clone(),
                good: None,
                last_error: None,
                last_rejected: None,
            });
            tenant.file = path;
            let read = match duplicates.get(&key) {
                Some(other) => Err(Rejection::Duplicate(other.clone())),
                None => read.map_err(Rejection::Load),
            };
            let outcome = tenant.update(&key, read, guardrails, recheck(&key));
            refresh.changed |= outcome.changed;
            refresh.rejected += usize::from(outcome.newly_rejected);
        }
        refresh
    }
}

/// Why a tenant file was not compiled.
#[derive(Debug)]
enum Rejection {
    Load(LoadError),
    /// Another file has the same stem (`<ns>.yaml` and `<ns>.yml`).
    Duplicate(PathBuf),
}

#[derive(Debug, Default)]
struct Outcome {
    changed: bool,
    newly_rejected: bool,
}

impl Tenant {
    fn update(
        &mut self,
        key: &str,
        read: Result<SourceFile, Rejection>,
        guardrails: &Guardrails,
        recheck: bool,
    ) -> Outcome {
        let guardrail = guardrails.for_namespace(key);
        let (fingerprint, compiled) = match read {
            Ok(source) => {
                let content = digest(std::slice::from_ref(&source));
                let unchanged = self
                    .good
                    .as_ref()
                    .is_some_and(|good| good.rules.digest() == content);
                if unchanged && !recheck {
                    self.last_error = None;
                    self.last_rejected = None;
                    return Outcome::default();
                }
                // The same bad content under the same guardrail: still rejected, nothing to redo.
                let known_bad = self
                    .last_rejected
                    .as_ref()
                    .is_some_and(|(seen, under)| *seen == content && *under == guardrail);
                if known_bad {
                    return Outcome::default();
                }
                let compiled = compile_tenant(&source, guardrails)
                    .map(|rules| (source, rules))
                    .map_err(|errors| invalid_message(&errors));
                (content, compiled)
            }
            Err(Rejection::Load(LoadError::Invalid(errors))) => {
                let message = invalid_message(&errors);
                (message.clone(), Err(message))
            }
            Err(Rejection::Load(error)) => (error.to_string(), Err(error.to_string())),
            Err(Rejection::Duplicate(other)) => {
                let message = format!(
                    "{}: namespace {key:?} also has the tenant file {}; keep one",
                    self.file.display(),
                    other.display()
                );
                (message.clone(), Err(message))
            }
        };
        match compiled {
            Ok((source, rules)) => {
                let same = self
                    .good
                    .as_ref()
                    .is_some_and(|good| good.rules.digest() == rules.digest());
                self.last_error = None;
                self.last_rejected = None;
                if same {
                    // Rechecked under new guardrails and still fine: the same rules keep serving.
                    return Outcome::default();
                }
                tracing::info!(tenant = %key, file = %self.file.display(), rules = rules.rules().len(), rules_sha256 = %rules.digest(), "Applied tenant rules");
                self.good = Some(Good {
                    source,
                    rules: Arc::new(rules),
                    since: SystemTime::now(),
                });
                Outcome {
                    changed: true,
                    newly_rejected: false,
                }
            }
            Err(error) => {
                let changed = recheck && self.recheck_good(key, guardrails);
                let rejection = (fingerprint, guardrail);
                let newly_rejected = self.last_rejected.as_ref() != Some(&rejection);
                if newly_rejected {
                    let keeping = if self.good.is_some() {
                        "keeping its previous rules"
                    } else {
                        "it serves no rules"
                    };
                    tracing::warn!(%error, tenant = %key, file = %self.file.display(), "Rejected tenant rule file; {keeping}");
                }
                self.last_rejected = Some(rejection);
                self.last_error = Some(error);
                Outcome {
                    changed,
                    newly_rejected,
                }
            }
        }
    }

    /// Checks the serving rules again under new guardrails; drops them when they no longer fit.
    /// Returns whether what serves changed.
    fn recheck_good(&mut self, key: &str, guardrails: &Guardrails) -> bool {
        let Some(good) = &self.good else { return false };
        match compile_tenant(&good.source, guardrails) {
            Ok(_) => false,
            Err(errors) => {
                let error = invalid_message(&errors);
                tracing::warn!(%error, tenant = %key, file = %self.file.display(), "Tenant's previous rules break the new guardrails; it serves no rules until its file is fixed");
                self.good = None;
                true
            }
        }
    }
}

/// Every error of a rejected file, one per line, so `/rules` shows them all.
fn invalid_message(errors: &[CompileError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The stem a tenant is known by: the file name without `.yaml`/`.yml`.
fn stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".yaml")
        .or_else(|| name.strip_suffix(".yml"))
        .unwrap_or(&name)
        .to_owned()
}

/// The entry a directory problem is about.
fn problem_path(error: &LoadError) -> &Path {
    match error {
        LoadError::Io { path, .. }
        | LoadError::NotAFile { path }
        | LoadError::DanglingSymlink { path, .. }
        | LoadError::NoRuleFiles { path } => path,
        LoadError::Invalid(_) => Path::new(""),
    }
}

#[cfg(test)]
mod tests;
