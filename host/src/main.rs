//! `rtcrm`: real-time customer-engagement triggers with sandboxed campaign filters.
//!
//! A thin entry point: parse the command line, run the command, print the error chain and map
//! it to an exit code.

mod api;
mod campaign;
mod campaign_cmd;
mod cli;
mod config;
mod console;
mod dev;
mod eos;
mod examples;
mod events;
mod filter_cmd;
mod http;
mod kafka;
mod loader;
mod logging;
mod metrics;
mod registry;
mod run;
mod stats;

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

/// State shared by the processor's tasks and threads.
pub struct Shared {
    pub settings: config::Settings,
    pub sandbox: rtcrm_sandbox::Sandbox,
    pub registry: registry::Registry,
    pub metrics: std::sync::Arc<metrics::Metrics>,
    /// Per-campaign counters for the HTTP API and the console.
    pub stats: stats::Stats,
    pub producer: rdkafka::producer::FutureProducer,
    /// The campaigns topic has been read up to its end offsets at start.
    pub campaigns_loaded: std::sync::atomic::AtomicBool,
    /// The events consumer received its first assignment.
    pub events_assigned: std::sync::atomic::AtomicBool,
    /// The tokio runtime, for work started from worker threads.
    pub runtime: tokio::runtime::Handle,
}

impl Shared {
    /// Why the processor is not ready yet (`/readyz`, `/api/info`); `None` once it is.
    pub fn not_ready(&self) -> Option<&'static str> {
        use std::sync::atomic::Ordering;
        if !self.campaigns_loaded.load(Ordering::SeqCst) {
            Some("reading the campaigns topic")
        } else if !self.events_assigned.load(Ordering::SeqCst) {
            Some("joining the events consumer group")
        } else {
            None
        }
    }
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    logging::init(cli.log_format, cli.verbose);
    let result = match cli.command {
        cli::Command::Filter(cmd) => filter_cmd::run(cmd),
        cli::Command::Run(args) => config::Settings::load(&args).and_then(run::run),
        cli::Command::Dev(args) => dev::run(args),
        cli::Command::Campaign(cmd) => campaign_cmd::run(cmd),
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
