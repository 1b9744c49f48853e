//! The `crank` command.

use clap::Parser;

fn main() -> std::process::ExitCode {
    crank_runtime::logging::init();
    match crank_runtime::cli::Cli::parse().run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
