//! `egress-authz diff`: what a rule change changes. Reads the rule sets and the recorded traffic, lets
//! `crate::diff` compare them, prints the report.
#![allow(clippy::print_stdout)]

use std::path::Path;
use std::process::ExitCode;

use crate::cli::DiffArgs;
use crate::diff::{DiffInput, RecordedFile, Side, diff, read_recorded, render};
use crate::policy::{DEFAULT_TRUST_DOMAIN, Policy};
use crate::reload::{LoadError, load_policy_with_tenants};

/// Compares `--old` and `--new`; exit 0, 3 (newly allowed), 4 (newly denied) or 1 (errors).
/// Every input is read before anything is printed, and every error found is reported (on stderr).
pub fn run(args: &DiffArgs) -> ExitCode {
    let tenants = args.tenant_rules.as_deref();
    let old = load(&args.old, args.old_tenant_rules.as_deref().or(tenants));
    let new = load(&args.new, args.new_tenant_rules.as_deref().or(tenants));
    let trust_domain = old
        .as_ref()
        .ok()
        .and_then(|p| p.settings().trust_domains.first().cloned())
        .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_owned());
    let mut failed = old.is_err() || new.is_err();
    let mut recorded: Vec<RecordedFile> = Vec::with_capacity(args.against.len());
    for path in &args.against {
        let name = path.display().to_string();
        let read = std::fs::read(path)
            .map_err(|error| format!("{name}: cannot read: {error}"))
            .and_then(|bytes| {
                read_recorded(&name, &bytes, &trust_domain).map_err(|e| e.to_string())
            });
        match read {
            Ok(file) => recorded.push(file),
            Err(error) => {
                eprintln!("{error}");
                failed = true;
            }
        }
    }
    let (Ok(old), Ok(new)) = (old, new) else {
        return ExitCode::FAILURE;
    };
    if failed {
        return ExitCode::FAILURE;
    }
    let (old_name, new_name) = (
        args.old.display().to_string(),
        args.new.display().to_string(),
    );
    let report = diff(&DiffInput {
        old: Side {
            name: &old_name,
            policy: &old,
        },
        new: Side {
            name: &new_name,
            policy: &new,
        },
        recorded: (!args.against.is_empty()).then_some(recorded.as_slice()),
    });
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(error) => {
                eprintln!("cannot write the report as JSON: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else if args.markdown {
        print!("{}", render::markdown(&report));
    } else {
        print!("{}", render::text(&report));
    }
    ExitCode::from(report.summary.exit_code)
}

/// Loads a rule set (with the tenant files of `tenants`), printing every located error.
fn load(path: &Path, tenants: Option<&Path>) -> Result<Policy, ()> {
    load_policy_with_tenants(path, tenants).map_err(|error| match error {
        LoadError::Invalid(errors) => errors.iter().for_each(|e| eprintln!("{e}")),
        other => eprintln!("{other}"),
    })
}
