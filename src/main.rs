use std::process::ExitCode;

use clap::Parser as _;
use egress_authz::cli::{Cli, Command};
use egress_authz::{app, commands};

// See Cargo.toml: returns a rule file parse's peak memory to the OS.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let command = Cli::parse().command;
    if !matches!(command, Command::Serve(_)) {
        commands::exit_quietly_when_stdout_closes();
    }
    match command {
        Command::Serve(args) => app::serve(args),
        Command::Validate(args) => commands::validate(&args.paths, args.tenant_rules.as_deref()),
        Command::Explain(args) => commands::explain(&args),
        Command::AuditGateway(args) => commands::audit_gateway(&args),
        Command::Suggest(args) => commands::suggest(&args),
        Command::Test(args) => commands::test::run(&args),
        Command::Diff(args) => commands::diff::run(&args),
        Command::Query(query) => commands::query::run(&query),
    }
}
