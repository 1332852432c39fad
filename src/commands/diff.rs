//! `egress-authz diff`: what a rule change changes.

use std::process::ExitCode;

use crate::cli::DiffArgs;

/// Compares `--old` and `--new`; exit 0, 3 (newly allowed), 4 (newly denied) or 1 (errors).
pub fn run(args: &DiffArgs) -> ExitCode {
    eprintln!("egress-authz diff: not built yet ({})", args.old.display());
    ExitCode::FAILURE
}
