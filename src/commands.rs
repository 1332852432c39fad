//! The one-shot commands `validate`, `explain` and `audit-gateway`. They print to stdout by design.
#![allow(clippy::print_stdout)]

pub mod diff;
pub mod query;
pub mod test;

use std::path::Path;
use std::process::ExitCode;

use crate::audit::{Report, audit};
use crate::cli::{AuditGatewayArgs, ExplainArgs, SuggestArgs};
use crate::policy::{Condition, EgressRequest, Explanation, HttpRequest, lint};
use crate::reload::{
    LoadError, load_policy, load_policy_with_tenants, load_policy_with_tenants_and_warnings,
};
use crate::suggest::{SuggestInput, SuggestOptions, check_document};
use crate::traffic::InventoryDocument;

/// Makes a command whose output cannot be written end cleanly instead of panicking: Rust ignores
/// SIGPIPE, so `println!` to a closed pipe (`egress-authz query ... | head`) or a full disk panics with
/// "failed printing to stdout". A closed pipe exits as a Unix filter does on SIGPIPE (status 141),
/// quietly; any other write error is one line on stderr and status 1. Other panics keep the default
/// report.
pub fn exit_quietly_when_stdout_closes() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if let Some(error) = message.strip_prefix("failed printing to stdout: ") {
            if error.to_ascii_lowercase().contains("broken pipe") {
                std::process::exit(SIGPIPE_EXIT_STATUS);
            }
            eprintln!("egress-authz: cannot write the output: {error}");
            std::process::exit(1);
        }
        report(info);
    }));
}

/// What a shell reports for a process killed by SIGPIPE (128 + 13).
const SIGPIPE_EXIT_STATUS: i32 = 141;

/// `egress-authz validate PATH... [--tenant-rules DIR]`: a summary line per file, or every error; exit
/// 1 on any error. Directory entries that look like rule files but are not read are warnings (stdout,
/// exit unchanged). With a tenant directory, each PATH is composed with its files, as `serve` does.
pub fn validate(paths: &[impl AsRef<Path>], tenant_rules: Option<&Path>) -> ExitCode {
    let mut failed = false;
    for path in paths {
        let path = path.as_ref();
        let (loaded, warnings) = load_policy_with_tenants_and_warnings(path, tenant_rules);
        for warning in warnings {
            println!("{warning}");
        }
        match loaded {
            Ok(policy) => {
                for (index, file) in policy.files().iter().enumerate() {
                    let rules = policy
                        .rules()
                        .iter()
                        .filter(|r| r.origin.file == index)
                        .count();
                    println!("{file}: ok, {rules} rule(s)");
                }
                println!(
                    "{}: valid rule set, {} rule(s), default {}, sha256 {}",
                    path.display(),
                    policy.rules().len(),
                    policy.settings().default_action.as_str(),
                    policy.digest()
                );
                for warning in lint(&policy) {
                    println!("{warning}");
                }
            }
            Err(LoadError::Invalid(errors)) => {
                failed = true;
                for error in errors {
                    eprintln!("{error}");
                }
            }
            Err(error) => {
                failed = true;
                eprintln!("{error}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `egress-authz explain`: the decision for one request and each rule's outcome.
pub fn explain(args: &ExplainArgs) -> ExitCode {
    let policy = match load_policy_with_tenants(&args.rules, args.tenant_rules.as_deref()) {
        Ok(policy) => policy,
        Err(LoadError::Invalid(errors)) => {
            errors.iter().for_each(|e| eprintln!("{e}"));
            return ExitCode::from(2);
        }
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    let sni = args.sni.as_deref().unwrap_or_default();
    // `--sni` alone describes a TCP (TLS passthrough) check: only HTTP checks have a Host.
    let tcp = args.tcp || args.host.is_none();
    let request = EgressRequest {
        http: (!tcp).then(|| HttpRequest {
            authority: args.host.as_deref().unwrap_or_default(),
            method: &args.method,
            path: &args.path,
        }),
        principal: &args.principal,
        destination_service: if tcp {
            args.host.as_deref().unwrap_or(sni)
        } else {
            ""
        },
        sni,
        port: args.port,
    };
    let explanation = policy.explain(&request);
    let protocol = request.protocol().as_str();
    if args.json {
        println!(
            "{:#}",
            explanation_json(&explanation, protocol, policy.digest())
        );
    } else {
        print_explanation(&explanation, protocol);
    }
    ExitCode::SUCCESS
}

/// `explain --json`: absent parts are `null`.
pub(crate) fn explanation_json(
    explanation: &Explanation<'_>,
    protocol: &str,
    digest: &str,
) -> serde_json::Value {
    let decision = &explanation.decision;
    let identity = explanation.identity.as_ref();
    let rules: Vec<_> = explanation
        .rules
        .iter()
        .map(|trace| {
            serde_json::json!({
                "name": trace.rule.name, "action": trace.rule.action.as_rule_str(), "dry_run": trace.rule.dry_run,
                "matched": trace.outcome.is_ok(), "failed_condition": trace.outcome.err().map(Condition::as_str),
            })
        })
        .collect();
    serde_json::json!({
        "decision": decision.verdict.as_str(),
        "reason": decision.reason.as_str(),
        "rule": decision.rule.map(|rule| &rule.name),
        "dry_run": decision.dry_run.map(|d| serde_json::json!({"rule": d.rule.name, "decision": d.verdict.as_str()})),
        "protocol": protocol,
        "host": explanation.host,
        "namespace": identity.map(|i| &i.namespace),
        "service_account": identity.map(|i| &i.service_account),
        "identity_problem": explanation.identity_problem,
        "rules": rules,
        "rules_sha256": digest,
    })
}

/// `explain`'s table: the decision, the caller, then every rule's outcome.
fn print_explanation(explanation: &Explanation<'_>, protocol: &str) {
    print!("{}", explanation_text(explanation, protocol));
}

/// The text of `explain`'s table, one line each, every line ended; `test` shows it for failed cases.
pub(crate) fn explanation_text(explanation: &Explanation<'_>, protocol: &str) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    // Writing to a String cannot fail: the results are discarded.
    let decision = &explanation.decision;
    _ = writeln!(text, "decision: {}", decision.verdict.as_str());
    _ = writeln!(text, "reason:   {}", decision.reason.as_str());
    _ = writeln!(
        text,
        "rule:     {}",
        decision.rule.map_or("-", |rule| rule.name.as_str())
    );
    if let Some(dry_run) = &decision.dry_run {
        _ = writeln!(
            text,
            "dry run:  would {} (rule {})",
            dry_run.verdict.as_str(),
            dry_run.rule.name
        );
    }
    _ = writeln!(text, "protocol: {protocol}");
    _ = writeln!(
        text,
        "host:     {}",
        explanation.host.as_deref().unwrap_or("-")
    );
    match (explanation.identity_problem, explanation.identity.as_ref()) {
        (Some(problem), _) => _ = writeln!(text, "caller:   no trusted identity: {problem}"),
        (None, identity) => {
            _ = writeln!(
                text,
                "caller:   namespace {} service account {}",
                identity.map_or("", |i| i.namespace.as_str()),
                identity.map_or("", |i| i.service_account.as_str())
            )
        }
    }
    if !explanation.rules.is_empty() {
        _ = writeln!(
            text,
            "rules (file order; enforced DENY rules are applied before ALLOW rules):"
        );
        let width = explanation
            .rules
            .iter()
            .map(|trace| trace.rule.name.len())
            .max()
            .unwrap_or(0);
        for trace in &explanation.rules {
            let outcome = match trace.outcome {
                Ok(()) => "matched".to_owned(),
                Err(condition) => format!("no: {}", condition.as_str()),
            };
            let dry = if trace.rule.dry_run { " (dry run)" } else { "" };
            let (name, action) = (&trace.rule.name, trace.rule.action.as_rule_str());
            _ = writeln!(text, "  {name:width$}  {action:5}  {outcome}{dry}");
        }
    }
    text
}

/// `egress-authz audit-gateway CONFIG_DUMP`: the findings as a table or JSON; exit 1 on any error-severity
/// finding, 2 when the input cannot be read as a config dump.
pub fn audit_gateway(args: &AuditGatewayArgs) -> ExitCode {
    let source = args.config_dump.display();
    let text = if args.config_dump.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(&args.config_dump)
    };
    let text = match text {
        Ok(text) => text,
        Err(error) => {
            eprintln!("{source}: cannot read: {error}");
            return ExitCode::from(2);
        }
    };
    let dump: serde_json::Value = match serde_json::from_str(&text) {
        Ok(dump) => dump,
        Err(error) => {
            eprintln!("{source}: not JSON: {error}");
            return ExitCode::from(2);
        }
    };
    let report = match audit(&dump) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("{source}: {error}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        let json = serde_json::json!({
            "listeners": report.listeners,
            "filter_chains": report.filter_chains,
            "errors": report.errors(),
            "warnings": report.warnings(),
            "findings": report.findings,
        });
        println!("{json:#}");
    } else {
        print_findings(&report);
    }
    if report.errors() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_findings(report: &Report) {
    let rows: Vec<[String; 6]> = report
        .findings
        .iter()
        .map(|f| {
            [
                f.severity.as_str().to_owned(),
                f.code.as_str().to_owned(),
                f.listener.clone(),
                f.filter_chain.clone(),
                f.port.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                f.detail.clone(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        let header = ["SEVERITY", "CODE", "LISTENER", "CHAIN", "PORT", "DETAIL"].map(str::to_owned);
        let mut widths = header.clone().map(|h| h.len());
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.len());
            }
        }
        for row in std::iter::once(&header).chain(&rows) {
            let cells: Vec<String> = row[..5]
                .iter()
                .zip(widths)
                .map(|(cell, width)| format!("{cell:width$}"))
                .collect();
            println!("{}  {}", cells.join("  "), row[5]);
        }
    }
    let summary = format!(
        "{} listener(s), {} filter chain(s)",
        report.listeners, report.filter_chains
    );
    if report.findings.is_empty() {
        println!("{summary}: no findings");
    } else {
        println!(
            "{summary}: {} error(s), {} warning(s)",
            report.errors(),
            report.warnings()
        );
    }
}

/// `egress-authz suggest --from FILE...`: the suggested rule file on stdout, the summary on stderr.
/// Every input is read and checked before anything is printed: a bad file (named on stderr) or bad
/// `--rules` exits 1 with nothing on stdout, so a pipe into a rule file never gets half a suggestion.
pub fn suggest(args: &SuggestArgs) -> ExitCode {
    let mut documents = Vec::with_capacity(args.from.len());
    let mut failed = false;
    for path in &args.from {
        let read = std::fs::read(path)
            .map_err(|error| format!("cannot read: {error}"))
            .and_then(|bytes| {
                let document = InventoryDocument::parse(&bytes).map_err(|e| e.to_string())?;
                check_document(&document).map_err(|e| e.to_string())?;
                Ok(document)
            });
        match read {
            Ok(document) => documents.push((path.display().to_string(), document)),
            Err(error) => {
                eprintln!("{}: {error}", path.display());
                failed = true;
            }
        }
    }
    let current = match &args.rules {
        None => None,
        Some(path) => match load_policy(path) {
            Ok(policy) => Some((path.display().to_string(), policy)),
            Err(LoadError::Invalid(errors)) => {
                errors.iter().for_each(|e| eprintln!("{e}"));
                return ExitCode::FAILURE;
            }
            Err(error) => {
                eprintln!("{error}");
                return ExitCode::FAILURE;
            }
        },
    };
    if failed {
        return ExitCode::FAILURE;
    }
    let options = SuggestOptions {
        by: args.by,
        min_count: args.min_count,
        collapse: args
            .collapse
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
    };
    let suggestion = crate::suggest::suggest(&SuggestInput {
        documents: &documents,
        options: &options,
        current: current
            .as_ref()
            .map(|(name, policy)| (name.as_str(), policy)),
    });
    print!("{}", suggestion.rule_file);
    eprint!("{}", suggestion.summary);
    ExitCode::SUCCESS
}
