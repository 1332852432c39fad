//! Log output: `tracing` events to stderr as text or JSON, filtered like `RUST_LOG`.

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
pub const DEFAULT_FILTER: &str = "info";

/// Installs the global subscriber. Safe to call more than once (later calls are ignored).
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(false)
            .with_current_span(false)
            .try_init(),
    };
}

/// Stderr for log lines, where a line that cannot be written is counted
/// (`egress_authz_log_write_errors_total`) and dropped instead of failing. The fmt layer reports a
/// failed write with `eprintln!`, which panics when stderr itself is what failed (EPIPE once the log
/// reader is gone, ENOSPC when the file behind it is on a full disk), and that panic would take down
/// whatever was logging: a Check (its RPC reset, which Envoy may answer by failing open), the reload
/// thread and the reload loop (no more reloads), the SIGHUP listener. Losing log lines is the lesser harm.
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
            crate::metrics::record_log_write_error();
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Stderr is unbuffered: nothing is held back that a failed flush could lose.
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
