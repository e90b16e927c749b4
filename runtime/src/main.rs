//! The `sluice` binary: parse the command line, run, and on failure print the
//! whole error chain and exit non-zero.

use clap::Parser;

mod cli;

/// mimalloc rather than glibc malloc: the per-message work allocates many
/// small blocks on the reactor and worker threads; see docs/performance.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
