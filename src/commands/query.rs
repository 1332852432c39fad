//! `egress-authz query who-can | what-can`.

use std::process::ExitCode;

use crate::cli::QueryCommand;

/// Answers one query; exit 0, or 1 on errors.
pub fn run(query: &QueryCommand) -> ExitCode {
    eprintln!("egress-authz query: not built yet ({query:?})");
    ExitCode::FAILURE
}
