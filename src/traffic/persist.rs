//! The inventory on disk: `--traffic-file`, read once at startup and replaced atomically afterwards.
//!
//! A reader (a backup job, `suggest`, a person) sees either the previous complete file or the new
//! complete file, never a half-written one: the document goes to a temporary file in the same directory,
//! is flushed to disk, and is renamed over the old one.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::document::{InventoryDocument, InventoryError};
use super::inventory::TrafficInventory;
use crate::metrics::Metrics;

/// Why the file kept from a previous run was not restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// It could not be read.
    #[error("{path}: cannot read the traffic file: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It is not a readable inventory.
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        source: InventoryError,
    },
}

/// Reads the inventory a previous run saved at `path`; `Ok(None)` when there is none yet.
pub fn read(path: &Path) -> Result<Option<InventoryDocument>, RestoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RestoreError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    InventoryDocument::parse(&bytes)
        .map(Some)
        .map_err(|source| RestoreError::Invalid {
            path: path.display().to_string(),
            source,
        })
}

/// Moves an unreadable file aside (to `<path>.rejected`), so that the next save does not overwrite what
/// a person may still recover from it. Returns where it went.
pub fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".rejected");
    let aside = PathBuf::from(aside);
    fs::rename(path, &aside)?;
    Ok(aside)
}

/// Writes `document` to `path` atomically: a temporary file beside it, synced, then renamed over it.
pub fn write_atomically(path: &Path, document: &InventoryDocument) -> std::io::Result<()> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the traffic file path names no file"))?;
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(name);
    temporary_name.push(format!(".tmp-{}", std::process::id()));
    let temporary = directory.join(temporary_name);
    let written = (|| {
        let mut file = fs::File::create(&temporary)?;
        file.write_all(document.to_json().as_bytes())?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written?;
    // The rename is durable once the directory is; a directory that cannot be opened (some volume
    // drivers) still has the file in place.
    if let Ok(dir) = fs::File::open(directory) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Saves an inventory to its file: the periodic saves while serving and the last one at shutdown.
#[derive(Clone)]
pub struct Saver {
    /// The inventory.
    pub inventory: Arc<TrafficInventory>,
    /// The file.
    pub path: PathBuf,
    /// The trust domains to record with it, read at each save (they follow rule reloads).
    pub trust_domains: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    /// Counts saves.
    pub metrics: Metrics,
}

impl std::fmt::Debug for Saver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saver")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Saver {
    /// Takes over the file: restores what a previous run saved there into the inventory (an unreadable
    /// file is set aside, not overwritten), then saves at once, so a path that cannot be written stops
    /// the server at startup instead of failing quietly a minute later.
    pub async fn open(self) -> Result<Self, std::io::Error> {
        match read(&self.path) {
            Ok(Some(document)) => {
                self.inventory.restore(&document);
                tracing::info!(
                    path = %self.path.display(),
                    flows = document.entries.len(),
                    "Restored the traffic inventory"
                );
            }
            Ok(None) => {}
            Err(error) => {
                let aside = set_aside(&self.path)?;
                tracing::error!(
                    %error,
                    set_aside = %aside.display(),
                    "The saved traffic inventory cannot be restored; starting afresh"
                );
            }
        }
        self.save().await?;
        Ok(self)
    }

    /// Saves once, off the async workers (a slow disk must not hold up checks).
    pub async fn save(&self) -> std::io::Result<()> {
        let saver = self.clone();
        let written = tokio::task::spawn_blocking(move || {
            let document = saver.inventory.snapshot(&(saver.trust_domains)());
            write_atomically(&saver.path, &document)
        })
        .await
        .unwrap_or_else(|joined| Err(std::io::Error::other(joined)));
        self.metrics.record_traffic_file_write(written.is_ok());
        written
    }

    /// Saves every `interval` until `shutdown`. A failed save is logged and counted; the next one
    /// tries again with everything counted since, so a full disk loses no count that a later save
    /// can still write.
    pub async fn save_periodically(self, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; the startup save has just been made.
        ticks.tick().await;
        loop {
            let stopping = tokio::select! {
                _ = ticks.tick() => false,
                _ = shutdown.wait_for(|stop| *stop) => true,
            };
            if stopping {
                return;
            }
            if let Err(error) = self.save().await {
                tracing::error!(path = %self.path.display(), %error, "Cannot save the traffic inventory");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::traffic::TrafficInventory;

    #[test]
    fn a_written_file_reads_back_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("traffic.json");
        assert!(read(&path).unwrap().is_none(), "no file yet is no error");
        let inventory = TrafficInventory::new(10, Metrics::disabled());
        inventory.record_unread(crate::policy::Reason::Overloaded);
        let first = inventory.snapshot(&[]);
        write_atomically(&path, &first).unwrap();
        inventory.record_unread(crate::policy::Reason::Overloaded);
        let second = inventory.snapshot(&[]);
        write_atomically(&path, &second).unwrap();
        assert_eq!(read(&path).unwrap(), Some(second));
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["traffic.json"], "no temporary file is left behind");
    }

    #[test]
    fn an_unreadable_file_is_named_and_can_be_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("traffic.json");
        fs::write(&path, "{\"format\": \"egress-authz-traffic\", \"vers").unwrap();
        let error = read(&path).unwrap_err().to_string();
        assert!(error.starts_with(&path.display().to_string()), "{error}");
        assert!(error.contains("cut off"), "{error}");
        let aside = set_aside(&path).unwrap();
        assert!(aside.to_string_lossy().ends_with("traffic.json.rejected"));
        assert!(!path.exists());
    }
}
