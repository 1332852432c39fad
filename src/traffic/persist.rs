//! The inventory on disk: `--traffic-file`, read once at startup and replaced atomically afterwards.
//!
//! A reader (a backup job, `suggest`, a person) sees either the previous complete file or the new
//! complete file, never a half-written one: the document goes to a temporary file in the same directory,
//! is flushed to disk, and is renamed over the old one.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::document::{InventoryDocument, InventoryError};

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
