//! Log output: `tracing` events to stderr as text or JSON, filtered like `RUST_LOG`.
//!
//! Lines are written by a thread of their own, through a bounded queue that drops (and counts) lines
//! when full. Writing on the thread that logs would stall Checks and reloads as soon as the process
//! reading stderr stops reading and the pipe fills up; a lost log line is the lesser harm.
//!
//! This module counts the lines it loses but does not export them: `metrics` reads the counts. Logging
//! sits below metrics, so recording a metric may log without the two calling each other.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// The filter used when `RUST_LOG` is unset.
const DEFAULT_FILTER: &str = "info";

/// Lines queued for the log thread; past this, new lines are dropped. At a few hundred bytes a line this
/// bounds the queue to a few MiB, and it is a second or more of logging at any realistic rate.
const QUEUED_LINES_LIMIT: usize = 8 * 1024;

static DROPPED_LINES: OnceLock<ErrorCounter> = OnceLock::new();
static WRITE_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped because the queue to the log thread was full (stderr not keeping up).
pub(crate) fn dropped_lines() -> u64 {
    DROPPED_LINES
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
}

/// Log lines that could not be written to stderr (a closed pipe, a full disk) and were dropped.
pub(crate) fn write_errors() -> u64 {
    WRITE_ERRORS.load(Ordering::Relaxed)
}

/// Installs the global subscriber. Safe to call more than once (later calls are ignored). Keep the
/// guard until the process ends: dropping it writes out the lines still queued.
pub(crate) fn init(format: LogFormat) -> WorkerGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES_LIMIT)
        .thread_name("egress-authz-log")
        .finish(LossyStderr);
    let _ = DROPPED_LINES.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(false)
            .with_current_span(false)
            .try_init(),
    };
    guard
}

/// Stderr for log lines, where a line that cannot be written is counted ([`write_errors`]) and dropped
/// instead of failing. The fmt layer reports a failed write with `eprintln!`, which panics when stderr
/// itself is what failed (EPIPE once the log reader is gone, ENOSPC when the file behind it is on a full
/// disk), and that panic would take down whatever was logging: a Check (its RPC reset, which Envoy may
/// answer by failing open), the reload thread and the reload loop (no more reloads), the SIGHUP
/// listener. Losing log lines is the lesser harm.
#[derive(Clone, Copy, Debug)]
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // The fmt layer writes each line with one `write_all`, so this counts lines; the lock keeps a
        // line whole against other threads' lines when the pipe takes it in several writes.
        if std::io::stderr().lock().write_all(buf).is_err() {
            WRITE_ERRORS.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Stderr is unbuffered: nothing is held back that a failed flush could lose.
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
