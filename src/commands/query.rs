//! `egress-authz query who-can | what-can`: loads the rules, asks `crate::query`, prints the answer.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::{QueryCommand, WhatCanArgs, WhoCanArgs};
use crate::policy::{Policy, Protocol};
use crate::query::{what_can, who_can};
use crate::reload::{LoadError, load_policy_with_tenants};

/// Answers one query; exit 0, or 1 when the rules cannot be loaded. An invalid principal or host is
/// not an error: it is an answer ("no identity", "refused before any rule").
pub fn run(query: &QueryCommand) -> ExitCode {
    match query {
        QueryCommand::WhoCan(args) => run_who_can(args),
        QueryCommand::WhatCan(args) => run_what_can(args),
    }
}

fn run_who_can(args: &WhoCanArgs) -> ExitCode {
    let Some(policy) = load(&args.rules, args.tenant_rules.as_deref()) else {
        return ExitCode::FAILURE;
    };
    let answer = who_can(&policy, &args.host, args.port, protocol(args.tcp));
    if args.json {
        println!("{:#}", answer.to_json());
    } else {
        print!("{}", answer.to_text());
    }
    ExitCode::SUCCESS
}

fn run_what_can(args: &WhatCanArgs) -> ExitCode {
    let Some(policy) = load(&args.rules, args.tenant_rules.as_deref()) else {
        return ExitCode::FAILURE;
    };
    let answer = what_can(&policy, &args.principal, protocol(args.tcp));
    if args.json {
        println!("{:#}", answer.to_json());
    } else {
        print!("{}", answer.to_text());
    }
    ExitCode::SUCCESS
}

fn protocol(tcp: bool) -> Protocol {
    if tcp { Protocol::Tcp } else { Protocol::Http }
}

/// The policy at `path` (with the tenant files of `tenants`), or `None` after printing every located
/// error to stderr.
fn load(path: &Path, tenants: Option<&Path>) -> Option<Policy> {
    match load_policy_with_tenants(path, tenants) {
        Ok(policy) => Some(policy),
        Err(LoadError::Invalid(errors)) => {
            errors.iter().for_each(|e| eprintln!("{e}"));
            None
        }
        Err(error) => {
            eprintln!("{error}");
            None
        }
    }
}
