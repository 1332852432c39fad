use std::process::ExitCode;

use clap::Parser as _;

// See Cargo.toml: returns a rule file parse's peak memory to the OS.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    egress_authz::cli::Cli::parse().run()
}
