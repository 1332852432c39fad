//! The command line: `serve`, `validate`, `explain`, `audit-gateway`. Every `serve` flag is also an `EGRESS_AUTHZ_*`
//! environment variable, so a Deployment can configure it without rewriting args.
//!
//! Only the arguments, their defaults and parsers live here; `main` dispatches to `app` and `commands`,
//! so this module depends on nothing above the types its flags parse into.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::decision_log::DecisionLogMode;
use crate::suggest::{DEFAULT_MIN_COUNT, Grouping};
use crate::telemetry::LogFormat;

/// Envoy ext_authz service deciding which mesh workload may reach which external host.
#[derive(Debug, Parser)]
#[command(name = "egress-authz", version, about)]
pub struct Cli {
    /// The subcommand and its options.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve Envoy's ext_authz Check (plus health, reflection and Explain) and the admin HTTP endpoints.
    Serve(ServeArgs),
    /// Check rule files or directories; exit 1 with every error found.
    Validate(ValidateArgs),
    /// Show how a request would be decided and how every rule fared.
    Explain(ExplainArgs),
    /// Audit an Envoy gateway's /config_dump for traffic that could leave without an ext_authz check;
    /// exit 0 without error findings, 1 with, 2 on unreadable input.
    AuditGateway(AuditGatewayArgs),
    /// Learn mode: turn traffic inventories (`/traffic`, `--traffic-file`) into a rule file to review;
    /// the rule file goes to stdout, a summary of what was skipped to stderr.
    Suggest(SuggestArgs),
    /// Run policy test cases (YAML) against rule files; exit 1 on a failed case, 2 on a bad test file.
    Test(TestArgs),
    /// Compare two rule sets: structurally, on recorded traffic (--against), and symbolically; exit 0
    /// when no decision changes, 3 when something is newly allowed, 4 when something is newly denied.
    Diff(DiffArgs),
    /// Ask the rules who can reach a destination, or what a caller can reach.
    #[command(subcommand)]
    Query(QueryCommand),
}

/// `suggest` options.
#[derive(Debug, Args)]
pub struct SuggestArgs {
    /// Traffic inventory files (JSON), merged: counts add up.
    #[arg(long, required = true, num_args = 1.., value_name = "FILE")]
    pub from: Vec<PathBuf>,
    /// The current rules (file or directory): propose only what they do not already allow.
    #[arg(long, value_name = "CURRENT")]
    pub rules: Option<PathBuf>,
    /// One rule set per service account (exact) or per namespace.
    #[arg(long, value_enum, default_value = "service-account")]
    pub by: Grouping,
    /// Skip flows (caller, host, port) seen fewer times than this.
    #[arg(long, default_value_t = DEFAULT_MIN_COUNT, value_parser = clap::value_parser!(u64).range(1..))]
    pub min_count: u64,
    /// Collapse N or more sibling hosts under one parent domain into a wildcard (never at a public
    /// suffix); off when not given. At least 2.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(2..))]
    pub collapse: Option<u64>,
}

/// `test` options.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Test files (YAML).
    #[arg(required = true, value_name = "TESTFILE")]
    pub files: Vec<PathBuf>,
    /// The rules to test (file or directory); overrides each test file's `rules:`.
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Directory of tenant rule files (`<namespace>.yaml`) composed with the rules, as `serve
    /// --tenant-rules` does; here any bad tenant file is an error.
    #[arg(long, value_name = "DIR")]
    pub tenant_rules: Option<PathBuf>,
    /// Also write the results as JUnit XML to this file.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Fail (exit 1) when some rule was the deciding rule of no case.
    #[arg(long)]
    pub require_coverage: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `diff` options.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The rules before the change (file or directory).
    #[arg(long)]
    pub old: PathBuf,
    /// The rules after the change (file or directory).
    #[arg(long)]
    pub new: PathBuf,
    /// Directory of tenant rule files composed with both rule sets (see `serve --tenant-rules`).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["old_tenant_rules", "new_tenant_rules"])]
    pub tenant_rules: Option<PathBuf>,
    /// Directory of tenant rule files composed with `--old` only.
    #[arg(long, value_name = "DIR")]
    pub old_tenant_rules: Option<PathBuf>,
    /// Directory of tenant rule files composed with `--new` only.
    #[arg(long, value_name = "DIR")]
    pub new_tenant_rules: Option<PathBuf>,
    /// Recorded traffic to replay under both: traffic inventory files (JSON) and/or decision-log files
    /// (JSON lines).
    #[arg(long, num_args = 1.., value_name = "FILE")]
    pub against: Vec<PathBuf>,
    /// Print JSON.
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    /// Print a Markdown summary fit for a pull-request comment.
    #[arg(long)]
    pub markdown: bool,
}

/// `query` subcommands.
#[derive(Debug, Subcommand)]
pub enum QueryCommand {
    /// The callers the rules allow to reach a destination.
    WhoCan(WhoCanArgs),
    /// The destinations the rules allow a caller to reach.
    WhatCan(WhatCanArgs),
}

/// `query who-can` options.
#[derive(Debug, Args)]
pub struct WhoCanArgs {
    /// Rule file or directory.
    #[arg(long)]
    pub rules: PathBuf,
    /// Directory of tenant rule files (`<namespace>.yaml`) composed with the rules, as `serve
    /// --tenant-rules` does; here any bad tenant file is an error.
    #[arg(long, value_name = "DIR")]
    pub tenant_rules: Option<PathBuf>,
    /// The destination host.
    #[arg(long)]
    pub host: String,
    /// The destination port; without it, any port.
    #[arg(long)]
    pub port: Option<u16>,
    /// A TCP (network filter) connection instead of HTTP requests.
    #[arg(long)]
    pub tcp: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `query what-can` options.
#[derive(Debug, Args)]
pub struct WhatCanArgs {
    /// Rule file or directory.
    #[arg(long)]
    pub rules: PathBuf,
    /// Directory of tenant rule files (`<namespace>.yaml`) composed with the rules, as `serve
    /// --tenant-rules` does; here any bad tenant file is an error.
    #[arg(long, value_name = "DIR")]
    pub tenant_rules: Option<PathBuf>,
    /// The caller's SPIFFE ID, e.g. spiffe://cluster.local/ns/default/sa/sleep ("" for none).
    #[arg(long)]
    pub principal: String,
    /// TCP (network filter) connections instead of HTTP requests.
    #[arg(long)]
    pub tcp: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `audit-gateway` options.
#[derive(Debug, Args)]
pub struct AuditGatewayArgs {
    /// The admin `/config_dump` JSON (or `istioctl proxy-config all -o json`); `-` reads stdin.
    pub config_dump: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Rule file, or directory of *.yaml/*.yml files (a ConfigMap mounted as a directory).
    #[arg(long, env = "EGRESS_AUTHZ_RULES")]
    pub rules: PathBuf,
    /// Directory of tenant rule files, one per namespace (`<namespace>.yaml`), each confined to its
    /// namespace and to the guardrails of the rules' `tenants:` section. A bad tenant file is rejected
    /// alone: the platform and the other tenants keep serving.
    #[arg(long, env = "EGRESS_AUTHZ_TENANT_RULES", value_name = "DIR")]
    pub tenant_rules: Option<PathBuf>,
    /// gRPC listen address (ext_authz Check, grpc.health.v1, reflection, admin Explain).
    #[arg(long, env = "EGRESS_AUTHZ_GRPC_ADDR", default_value = "0.0.0.0:9000")]
    pub grpc_addr: SocketAddr,
    /// Admin HTTP listen address (/healthz, /readyz, /metrics, /rules).
    #[arg(long, env = "EGRESS_AUTHZ_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,
    /// Log line format.
    #[arg(
        long,
        env = "EGRESS_AUTHZ_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Which decisions get a log event.
    #[arg(
        long,
        env = "EGRESS_AUTHZ_DECISION_LOG",
        value_enum,
        default_value = "deny"
    )]
    pub decision_log: DecisionLogMode,
    /// Level of decision log events (error, warn, info, debug, trace).
    #[arg(long, env = "EGRESS_AUTHZ_DECISION_LOG_LEVEL", default_value = "info")]
    pub decision_log_level: tracing::Level,
    /// Deny events logged per (namespace, host, reason) per interval; 0 logs every one.
    #[arg(
        long,
        env = "EGRESS_AUTHZ_DECISION_LOG_SAMPLE_LIMIT",
        default_value_t = 10
    )]
    pub decision_log_sample_limit: u32,
    /// The sampling interval, e.g. 10s or 500ms.
    #[arg(long, env = "EGRESS_AUTHZ_DECISION_LOG_SAMPLE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub decision_log_sample_interval: Duration,
    /// Export egress_authz_rule_matches_total (one series per rule).
    #[arg(long, env = "EGRESS_AUTHZ_RULE_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub rule_metrics: bool,
    /// How long in-flight checks may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "EGRESS_AUTHZ_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long to keep serving while reporting NOT_SERVING / not ready, so Envoy's health
    /// checks and Kubernetes endpoints stop sending before the listeners close.
    #[arg(long, env = "EGRESS_AUTHZ_SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
    /// Largest CheckRequest read, in bytes; a larger one is denied (reason invalid_request). Must exceed
    /// what Envoy sends (request headers, plus the body when Istio's includeRequestBodyInCheck is on).
    #[arg(long, env = "EGRESS_AUTHZ_MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// Checks in flight past which new ones are answered at once with a deny carrying HTTP 503 and
    /// reason overloaded, instead of queueing without bound.
    #[arg(long, env = "EGRESS_AUTHZ_MAX_CHECKS_IN_FLIGHT", default_value_t = DEFAULT_MAX_CHECKS_IN_FLIGHT, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_checks_in_flight: u32,
    /// gRPC connections served at once; more wait in the kernel's accept queue.
    #[arg(long, env = "EGRESS_AUTHZ_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// HTTP/2 streams (concurrent checks) per gRPC connection.
    #[arg(long, env = "EGRESS_AUTHZ_MAX_STREAMS_PER_CONNECTION", default_value_t = DEFAULT_MAX_STREAMS_PER_CONNECTION, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_connection: u32,
    /// Flow keys the traffic inventory (learn mode, GET /traffic on the admin port) holds at most; past
    /// that, new keys are counted in egress_authz_traffic_overflow_total. 0 turns the inventory off.
    #[arg(long, env = "EGRESS_AUTHZ_TRAFFIC_MAX_ENTRIES", default_value_t = DEFAULT_TRAFFIC_MAX_ENTRIES)]
    pub traffic_max_entries: usize,
    /// Save the traffic inventory to this file (atomically) every --traffic-file-interval and at
    /// shutdown, and restore it from there at startup.
    #[arg(long, env = "EGRESS_AUTHZ_TRAFFIC_FILE")]
    pub traffic_file: Option<PathBuf>,
    /// How often the traffic inventory is saved to --traffic-file.
    #[arg(long, env = "EGRESS_AUTHZ_TRAFFIC_FILE_INTERVAL", default_value = "60s", value_parser = parse_period)]
    pub traffic_file_interval: Duration,
    /// Runtime worker threads (default: one per CPU).
    #[arg(long, env = "EGRESS_AUTHZ_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

/// `validate` options.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Rule files or directories.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Directory of tenant rule files (`<namespace>.yaml`) composed with the rules, as `serve
    /// --tenant-rules` does; here any bad tenant file is an error.
    #[arg(long, value_name = "DIR")]
    pub tenant_rules: Option<PathBuf>,
}

/// `explain` options.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Rule file or directory.
    #[arg(long)]
    pub rules: PathBuf,
    /// Directory of tenant rule files (`<namespace>.yaml`) composed with the rules, as `serve
    /// --tenant-rules` does; here any bad tenant file is an error.
    #[arg(long, value_name = "DIR")]
    pub tenant_rules: Option<PathBuf>,
    /// The caller's SPIFFE ID, e.g. spiffe://cluster.local/ns/default/sa/sleep ("" for none).
    #[arg(long, default_value = "")]
    pub principal: String,
    /// The HTTP Host/:authority (HTTP check) or, with --tcp, the SNI.
    #[arg(long, required_unless_present = "sni")]
    pub host: Option<String>,
    /// The TLS SNI: alone, a TCP check; with --host, the SNI an HTTP check carries (include_tls_session).
    #[arg(long)]
    pub sni: Option<String>,
    /// The port the gateway received the request on.
    #[arg(long)]
    pub port: Option<u16>,
    /// HTTP method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// HTTP path.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Explain a TCP (network filter) check instead of an HTTP one.
    #[arg(long)]
    pub tcp: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Default for `--max-request-bytes`: 64 MiB, above Envoy's largest header limit (`max_request_headers_kb`
/// tops out at 8 MiB) with room for a request body.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;
/// Default for `--max-checks-in-flight`.
pub const DEFAULT_MAX_CHECKS_IN_FLIGHT: u32 = 1024;
/// Default for `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
/// Default for `--max-streams-per-connection`.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// Default for `--traffic-max-entries`: about 15 MiB at most (see the README, "Traffic inventory").
pub const DEFAULT_TRAFFIC_MAX_ENTRIES: usize = 100_000;

/// The shortest period accepted: a shorter one is a typo, and would spend the server on saving.
const MIN_PERIOD: Duration = Duration::from_millis(100);

/// A duration for something done periodically: at least [`MIN_PERIOD`].
fn parse_period(raw: &str) -> Result<Duration, String> {
    let period = parse_duration(raw)?;
    if period < MIN_PERIOD {
        return Err(format!("{raw:?} is shorter than {MIN_PERIOD:?}"));
    }
    Ok(period)
}

/// Durations longer than this are certainly a typo (and would overflow deadlines).
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Parses `10s`, `500ms`, `2m` or a bare number of seconds, at most a day.
fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration like 10s or 500ms"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        _ => return Err(format!("{raw:?}: unknown unit {unit:?} (use ms, s or m)")),
    };
    let duration = Duration::try_from_secs_f64(seconds).map_err(|e| format!("{raw:?}: {e}"))?;
    if duration > MAX_DURATION {
        return Err(format!("{raw:?} is longer than a day"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("10h").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("10000000000000000000s").is_err());
        assert!(parse_duration("25h").is_err());
    }

    #[test]
    fn periods_are_not_zero() {
        assert_eq!(parse_period("60s"), Ok(Duration::from_secs(60)));
        assert!(parse_period("0s").is_err());
        assert!(parse_period("10ms").is_err());
    }
}
