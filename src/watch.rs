//! Hot reload triggers: filesystem events (notify), SIGHUP, and a slow periodic resync.
//!
//! The watcher watches the rules path's *directory*, not the file: editors and `mv tmp rules.yaml`
//! replace the inode, and Kubernetes updates a ConfigMap volume by swapping the `..data` symlink, none of
//! which a watch on the file itself survives. Any event that can mean a change is a "maybe changed": the
//! reload task debounces, re-reads everything, and the store swaps only if the content digest changed
//! and the rules compile. With `--tenant-rules`, the tenant directory is watched the same way. This
//! module owns the triggers only; reading and compiling is `reload`'s.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::reload::RuleStore;

/// Quiet time after the last event before reloading: a writer's burst of events (truncate, write…,
/// close; or a ConfigMap's create, symlink, rename, delete) coalesces into one reload, and a slow
/// writer still producing events is not read half-way.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Longest wait from the first event to the reload, however busy the directory: keeps a change live
/// well within 1 s even when something else keeps writing next to the rules.
const MAX_DEBOUNCE: Duration = Duration::from_millis(400);
/// Reload speculatively this often even without events, in case an event was lost (a rules file that
/// is a symlink into another directory, a network filesystem). Unchanged content costs a read and a hash.
const RESYNC_INTERVAL: Duration = Duration::from_secs(10);
/// Wait before rebuilding a watcher that failed, so a persistent failure does not spin.
const REBUILD_BACKOFF: Duration = Duration::from_millis(250);

/// Starts the reload task, the filesystem watcher and the SIGHUP listener. They stop on shutdown.
pub(crate) fn spawn(store: Arc<RuleStore>, shutdown: watch::Receiver<bool>) {
    // Capacity 1: pokes that arrive while one is pending coalesce into it.
    let (poke_tx, poke_rx) = mpsc::channel::<()>(1);
    let dir = watched_dir(store.path());
    tokio::spawn(watch_directory(dir, poke_tx.clone(), shutdown.clone()));
    // Each tenant file changes on its own; a change there pokes the same reload, which recompiles only
    // the files whose content changed.
    if let Some(tenants) = store.tenant_dir() {
        let dir = watched_dir(tenants);
        tokio::spawn(watch_directory(dir, poke_tx.clone(), shutdown.clone()));
    }
    tokio::spawn(reload_on_sighup(poke_tx, shutdown.clone()));
    tokio::spawn(reload_loop(store, poke_rx, shutdown));
}

/// The directory to watch for a rules path, made absolute (notify reports absolute paths, and the
/// watcher must recognise events about the directory itself): the path if it is a directory, else
/// its parent.
fn watched_dir(rules: &Path) -> PathBuf {
    let dir = if rules.is_dir() {
        rules.to_path_buf()
    } else {
        match rules.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        }
    };
    std::path::absolute(&dir).unwrap_or(dir)
}

async fn reload_loop(
    store: Arc<RuleStore>,
    mut pokes: mpsc::Receiver<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            poke = pokes.recv() => if poke.is_none() { return },
            _ = tokio::time::sleep(RESYNC_INTERVAL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        debounce(&mut pokes).await;
        reload_in_background(Arc::clone(&store)).await;
    }
}

/// Scheduling priority of the reload thread, on `thread-priority`'s 0–99 scale (about nice 10 on Linux).
/// Compiling 100k rules takes about a second of CPU; at normal priority it takes that second from
/// checks on a busy core (p99 2.4x steady state in BENCHMARKS.md). Lower, it mostly uses idle time, yet
/// keeps a share under saturation so a change still lands.
const RELOAD_THREAD_PRIORITY: u8 = 25;

/// Reads, compiles and swaps the rules on a thread of its own at lower priority, off the threads that
/// serve checks, and waits for it.
async fn reload_in_background(store: Arc<RuleStore>) {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let reloading = Arc::clone(&store);
    let spawned = std::thread::Builder::new()
        .name("rules-reload".into())
        .spawn(move || {
            let store = reloading;
            let lowered = thread_priority::ThreadPriorityValue::try_from(RELOAD_THREAD_PRIORITY)
                .and_then(|value| {
                    thread_priority::set_current_thread_priority(
                        thread_priority::ThreadPriority::Crossplatform(value),
                    )
                    .map_err(|e| format!("{e:?}"))
                });
            if let Err(error) = lowered {
                tracing::debug!(%error, "Cannot lower the reload thread's priority");
            }
            let _ = done_tx.send(store.reload());
        });
    match spawned {
        Ok(_) => {
            if done_rx.await.is_err() {
                tracing::error!("Reload thread panicked; keeping previous rules");
                store.record_failed_reload("the reload thread panicked");
            }
        }
        Err(error) => {
            tracing::error!(%error, "Cannot start a reload thread; keeping previous rules");
            store.record_failed_reload(&format!("cannot start a reload thread: {error}"));
        }
    }
}

/// Waits until no poke arrived for `DEBOUNCE`, or `MAX_DEBOUNCE` after the first, whichever is first.
async fn debounce(pokes: &mut mpsc::Receiver<()>) {
    let give_up = Instant::now() + MAX_DEBOUNCE;
    loop {
        let quiet_until = (Instant::now() + DEBOUNCE).min(give_up);
        match tokio::time::timeout_at(quiet_until, pokes.recv()).await {
            Ok(Some(())) if Instant::now() < give_up => continue,
            _ => return,
        }
    }
}

/// What one notify event means for the reload task.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// Nothing that can change the rules, such as our own reads (which would otherwise poke a reload
    /// that reads again, forever).
    Nothing,
    /// Maybe the rules changed.
    MaybeChanged,
    /// The watched directory itself went away (deleted or renamed): the watch is dead.
    DirectoryGone,
}

fn classify(event: &notify::Event, dir: &Path) -> Seen {
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Seen::MaybeChanged,
        EventKind::Access(_) => Seen::Nothing,
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
            if event.paths.iter().any(|p| p == dir) =>
        {
            Seen::DirectoryGone
        }
        _ => Seen::MaybeChanged,
    }
}

async fn watch_directory(
    dir: PathBuf,
    pokes: mpsc::Sender<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failing = false;
    loop {
        let (failed_tx, mut failed_rx) = mpsc::channel::<String>(1);
        let event_pokes = pokes.clone();
        let event_dir = dir.clone();
        let watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(event) => match classify(&event, &event_dir) {
                    Seen::Nothing => {}
                    Seen::MaybeChanged => {
                        let _ = event_pokes.try_send(());
                    }
                    Seen::DirectoryGone => {
                        let _ = failed_tx
                            .try_send("the watched directory was removed or renamed".to_owned());
                    }
                },
                Err(error) => {
                    let _ = failed_tx.try_send(error.to_string());
                }
            })
            .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
        let look_again = match watcher {
            Ok(_watcher) => {
                if failing {
                    tracing::info!(dir = %dir.display(), "Watching rules directory again");
                } else {
                    tracing::debug!(dir = %dir.display(), "Watching rules directory");
                }
                failing = false;
                // Whatever happened while we were not watching, look again (speculative reload).
                let _ = pokes.try_send(());
                tokio::select! {
                    Some(error) = failed_rx.recv() => {
                        tracing::warn!(%error, dir = %dir.display(), "Rules watcher failed; rebuilding it");
                    }
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
                true
            }
            // Report a streak of failures once: the directory may stay missing for a while.
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, dir = %dir.display(), "Cannot watch rules directory; retrying");
                true
            }
            Err(error) => {
                tracing::debug!(%error, dir = %dir.display(), "Cannot watch rules directory; retrying");
                false
            }
        };
        // A dead watch may have missed a change, or a removal that must be reported as a failed reload.
        if look_again {
            let _ = pokes.try_send(());
        }
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

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, DataChange, RemoveKind, RenameMode};
    use notify::{Event, EventKind};

    use super::*;

    fn event(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn own_reads_do_not_poke_a_reload() {
        let dir = Path::new("/rules");
        let open = event(
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            "/rules/a.yaml",
        );
        let close_read = event(
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            "/rules/a.yaml",
        );
        assert_eq!(classify(&open, dir), Seen::Nothing);
        assert_eq!(classify(&close_read, dir), Seen::Nothing);
    }

    #[test]
    fn writes_renames_and_removals_of_entries_poke_a_reload() {
        let dir = Path::new("/rules");
        for kind in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Other,
        ] {
            assert_eq!(
                classify(&event(kind, "/rules/..data"), dir),
                Seen::MaybeChanged,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn removing_or_renaming_the_directory_kills_the_watch() {
        let dir = Path::new("/rules");
        let removed = event(EventKind::Remove(RemoveKind::Folder), "/rules");
        let renamed = event(
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            "/rules",
        );
        assert_eq!(classify(&removed, dir), Seen::DirectoryGone);
        assert_eq!(classify(&renamed, dir), Seen::DirectoryGone);
    }

    #[tokio::test]
    async fn debounce_waits_for_quiet_but_not_forever() {
        let (tx, mut rx) = mpsc::channel(1);
        let started = Instant::now();
        debounce(&mut rx).await;
        let quiet = started.elapsed();
        assert!(quiet >= DEBOUNCE && quiet < MAX_DEBOUNCE, "{quiet:?}");

        let pester = tokio::spawn(async move {
            loop {
                if tx.send(()).await.is_err() {
                    return;
                }
                tokio::time::sleep(DEBOUNCE / 4).await;
            }
        });
        let started = Instant::now();
        debounce(&mut rx).await;
        let busy = started.elapsed();
        assert!(busy >= MAX_DEBOUNCE && busy < MAX_DEBOUNCE * 3, "{busy:?}");
        pester.abort();
    }
}
