//! `egress-authz test`: policy test cases against rule files.

use std::process::ExitCode;

use crate::cli::TestArgs;

/// Runs the test files; exit 0 when every case passed, 1 on a failed case, 2 on a bad test file.
pub fn run(args: &TestArgs) -> ExitCode {
    eprintln!(
        "egress-authz test: not built yet ({} file(s))",
        args.files.len()
    );
    ExitCode::from(2)
}
