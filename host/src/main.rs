//! `rtcrm`: real-time customer-engagement triggers with sandboxed campaign filters.
//!
//! A thin entry point: parse the command line, run the command, print the error chain and map
//! it to an exit code.

mod campaigns;
mod cli;
mod config;
mod dryrun;
mod events;
mod examples;
mod health;
mod http;
mod kafka;
mod processor;
mod state;
mod supervisor;
mod telemetry;

use clap::Parser;
use std::process::ExitCode;

/// An error that carries its own exit code (spec §10: 2 for a rejected filter, 3 for a failed
/// evaluation). Any other error exits with 1.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    /// The process exit code.
    pub code: u8,
    /// Printed on stderr (may be empty when the command already printed its report).
    pub message: String,
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    telemetry::logging::init(cli.log_format, cli.verbose);
    let result = match cli.command {
        cli::Command::Filter(cmd) => cli::filter::run(cmd),
        cli::Command::Run(args) => config::Settings::load(&args).and_then(processor::run),
        cli::Command::Dev(args) => cli::dev::run(args),
        cli::Command::Campaign(cmd) => cli::campaign::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => match err.downcast_ref::<Exit>() {
            Some(exit) => {
                if !exit.message.is_empty() {
                    eprintln!("{}", exit.message);
                }
                ExitCode::from(exit.code)
            }
            None => {
                eprintln!("error: {err:#}");
                ExitCode::from(1)
            }
        },
    }
}
