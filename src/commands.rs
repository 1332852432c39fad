//! The one-shot commands `validate`, `explain` and `audit-gateway`. They print to stdout by design.
#![allow(clippy::print_stdout)]

use std::path::Path;
use std::process::ExitCode;

use crate::audit::{Report, audit};
use crate::cli::{AuditGatewayArgs, ExplainArgs};
use crate::grpc::admin::to_explain_response;
use crate::policy::{EgressRequest, HttpRequest, lint};
use crate::reload::{LoadError, load_policy, load_policy_with_warnings};

/// `egress-authz validate PATH...`: a summary line per file, or every error; exit 1 on any error.
/// Directory entries that look like rule files but are not read are warnings (stdout, exit unchanged).
pub fn validate(paths: &[impl AsRef<Path>]) -> ExitCode {
    let mut failed = false;
    for path in paths {
        let path = path.as_ref();
        let (loaded, warnings) = load_policy_with_warnings(path);
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
    let policy = match load_policy(&args.rules) {
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
    let response = to_explain_response(&explanation, request.protocol().as_str(), policy.digest());
    if args.json {
        let rules: Vec<_> = response
            .rules
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name, "action": r.action, "dry_run": r.dry_run,
                    "matched": r.matched, "failed_condition": (!r.matched).then_some(&r.failed_condition),
                })
            })
            .collect();
        let json = serde_json::json!({
            "decision": response.decision,
            "reason": response.reason,
            "rule": (!response.rule.is_empty()).then_some(&response.rule),
            "dry_run": response.dry_run.as_ref().map(|d| serde_json::json!({"rule": d.rule, "decision": d.decision})),
            "protocol": response.protocol,
            "host": (!response.host.is_empty()).then_some(&response.host),
            "namespace": (!response.namespace.is_empty()).then_some(&response.namespace),
            "service_account": (!response.service_account.is_empty()).then_some(&response.service_account),
            "identity_problem": (!response.identity_problem.is_empty()).then_some(&response.identity_problem),
            "rules": rules,
            "rules_sha256": response.rules_sha256,
        });
        println!("{json:#}");
        return ExitCode::SUCCESS;
    }
    println!("decision: {}", response.decision);
    println!("reason:   {}", response.reason);
    println!(
        "rule:     {}",
        if response.rule.is_empty() {
            "-"
        } else {
            &response.rule
        }
    );
    if let Some(dry_run) = &response.dry_run {
        println!(
            "dry run:  would {} (rule {})",
            dry_run.decision, dry_run.rule
        );
    }
    println!("protocol: {}", response.protocol);
    println!(
        "host:     {}",
        if response.host.is_empty() {
            "-"
        } else {
            &response.host
        }
    );
    if response.identity_problem.is_empty() {
        println!(
            "caller:   namespace {} service account {}",
            response.namespace, response.service_account
        );
    } else {
        println!(
            "caller:   no trusted identity: {}",
            response.identity_problem
        );
    }
    if !response.rules.is_empty() {
        println!("rules (file order; enforced DENY rules are applied before ALLOW rules):");
        let width = response
            .rules
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(0);
        for rule in &response.rules {
            let outcome = if rule.matched {
                "matched".to_owned()
            } else {
                format!("no: {}", rule.failed_condition)
            };
            let dry = if rule.dry_run { " (dry run)" } else { "" };
            println!("  {:width$}  {:5}  {outcome}{dry}", rule.name, rule.action);
        }
    }
    ExitCode::SUCCESS
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
