//! Hot reload triggers: filesystem events (notify), SIGHUP, and a slow periodic resync.
//!
//! The watcher watches the rules path's *directory*, not the file: editors and `mv tmp rules.yaml`
//! replace the inode, and Kubernetes updates a ConfigMap volume by swapping the `..data` symlink, none of
//! which a watch on the file itself survives. Any event means "maybe changed": the reload task debounces,
//! re-reads everything, and the store swaps only if the content digest changed and the rules compile.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::{mpsc, watch};

use crate::reload::RuleStore;

/// Quiet time after an event before reloading: long enough for a writer's burst of events (truncate,
/// write, close; or a ConfigMap's several renames) to coalesce, short enough to stay well under 1 s.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// Reload speculatively this often even without events, in case an event was lost (a watch on a
/// directory that was itself replaced, a network filesystem). Unchanged content costs one read and hash.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(10);
/// Wait before rebuilding a watcher that failed, so a persistent failure does not spin.
const REBUILD_BACKOFF: Duration = Duration::from_millis(500);

/// Starts the reload task, the filesystem watcher and the SIGHUP listener. They stop on shutdown.
pub fn spawn(store: Arc<RuleStore>, shutdown: watch::Receiver<bool>) {
    // Capacity 1: pokes that arrive while one is pending coalesce into it.
    let (poke_tx, poke_rx) = mpsc::channel::<()>(1);
    let dir = watched_dir(store.path());
    tokio::spawn(watch_directory(dir, poke_tx.clone(), shutdown.clone()));
    tokio::spawn(reload_on_sighup(poke_tx, shutdown.clone()));
    tokio::spawn(reload_loop(store, poke_rx, shutdown));
}

/// The directory to watch for a rules path: the path itself if it is a directory, else its parent.
pub fn watched_dir(rules: &Path) -> PathBuf {
    if rules.is_dir() {
        return rules.to_path_buf();
    }
    match rules.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

async fn reload_loop(store: Arc<RuleStore>, mut pokes: mpsc::Receiver<()>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            poke = pokes.recv() => if poke.is_none() { return },
            _ = tokio::time::sleep(RESYNC_INTERVAL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        tokio::time::sleep(DEBOUNCE).await;
        while pokes.try_recv().is_ok() {}
        let store = Arc::clone(&store);
        // Reading and compiling a large rule set is blocking work; keep it off the check-serving threads.
        if let Err(error) = tokio::task::spawn_blocking(move || store.reload()).await {
            tracing::error!(%error, "Reload task panicked; keeping previous rules");
        }
    }
}

async fn watch_directory(dir: PathBuf, pokes: mpsc::Sender<()>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (failed_tx, mut failed_rx) = mpsc::channel::<String>(1);
        let event_pokes = pokes.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(_) => {
                let _ = event_pokes.try_send(());
            }
            Err(error) => {
                let _ = failed_tx.try_send(error.to_string());
            }
        })
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
        match watcher {
            Ok(_watcher) => {
                tracing::debug!(dir = %dir.display(), "Watching rules directory");
                tokio::select! {
                    Some(error) = failed_rx.recv() => {
                        tracing::warn!(%error, dir = %dir.display(), "Rules watcher failed; rebuilding it");
                    }
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
            Err(error) => {
                tracing::warn!(%error, dir = %dir.display(), "Cannot watch rules directory; retrying");
            }
        }
        // Whatever happened while we were not watching, look again.
        let _ = pokes.try_send(());
        tokio::select! {
            _ = tokio::time::sleep(REBUILD_BACKOFF) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

async fn reload_on_sighup(pokes: mpsc::Sender<()>, mut shutdown: watch::Receiver<bool>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => hangup,
            Err(error) => {
                tracing::warn!(%error, "Cannot listen for SIGHUP; reload on SIGHUP is off");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading rules");
                    let _ = pokes.try_send(());
                }
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (pokes, shutdown.wait_for(|stop| *stop).await);
    }
}
