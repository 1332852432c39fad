use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    egress_authz::cli::Cli::parse().run()
}
