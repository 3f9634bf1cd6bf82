//! The command line (spec §10).

use clap::{Args, Parser, Subcommand, ValueEnum};

pub mod api_client;
pub mod backtest;
pub mod campaign;
pub mod dev;
pub mod filter;
pub mod project;
pub mod state;
use std::path::PathBuf;

/// rtcrm evaluates tracking events against runtime-updatable campaigns and emits a trigger for
/// every match. Campaign filters are untrusted JavaScript (or WebAssembly) run in a wasmtime
/// sandbox under fuel, memory and time limits.
#[derive(Debug, Parser)]
#[command(name = "rtcrm", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "RTCRM_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// More log output (-v: debug, -vv: trace). `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the processor: consume events, evaluate every campaign, produce triggers.
    Run(crate::config::RunArgs),
    /// Try rtcrm with one command: an embedded Kafka-protocol broker, the example campaign and
    /// the processor, with ready-to-paste kcat commands.
    Dev(crate::cli::dev::DevArgs),
    /// Publish, delete and list campaigns on a running cluster.
    #[command(subcommand)]
    Campaign(crate::cli::campaign::CampaignCommand),
    /// Check, compile and evaluate filters locally, with the processor's engine and limits.
    #[command(subcommand)]
    Filter(FilterCommand),
}

#[derive(Debug, Subcommand)]
pub enum FilterCommand {
    /// Check a filter without running it: JavaScript is compiled (`ok`, or `FILE:LINE:COLUMN:
    /// message` on stderr, exit 2); a `.wasm` module is validated as the processor does at
    /// submission (filter-sdk/ABI.md: imports, exports, ABI version; `_initialize` runs once).
    Check {
        /// The filter: JavaScript source, or a compiled module (`.wasm`).
        file: PathBuf,
    },
    /// Write a new filter project: the filter, a native unit test, a case table (cases.jsonl), a
    /// campaign (campaign.json), and the SDK's sources, so it builds outside this repository.
    New {
        /// The filter's name (lowercase letters, digits, '-'), e.g. fight-loss.
        name: String,
        /// Its language.
        #[arg(long, value_enum)]
        lang: crate::cli::project::Lang,
        /// Where to write it [default: ./NAME].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build the filter project in DIR with its language's toolchain: writes NAME.wasm (for
    /// JavaScript: checks that the filter compiles).
    Build {
        /// The project (made by `rtcrm filter new`).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Run the project's case table (cases.jsonl) through the sandbox, with the processor's
    /// limits; prints one line per case and `N passed, N failed` (exit 1 on a failure).
    Test {
        /// The project (made by `rtcrm filter new`), built.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Compile a JavaScript filter to its campaign module (a few hundred bytes of WebAssembly).
    Compile {
        /// The filter's JavaScript source.
        file: PathBuf,
        /// Where to write the module.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Evaluate a filter against events: prints `true` or `false` per event. A limit, trap or
    /// throw prints the error kind and message on stderr and exits 3 (with --events, the line
    /// shows `error:<kind>` and the run continues). With --state, the filter also gets a player's
    /// state (a campaign with `state`), and the new state is printed on the last line.
    Eval(EvalArgs),
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The filter: JavaScript source (`.js`, `.mjs`) or a compiled module (`.wasm`).
    #[arg(long)]
    pub filter: PathBuf,
    /// One event (a JSON object).
    #[arg(long, conflicts_with = "events", required_unless_present = "events")]
    pub event: Option<PathBuf>,
    /// Events, one JSON object per line.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Evaluate as a campaign with `state` (spec §12), starting from this player's state: a JSON
    /// object, passed to the filter as given ('{}' for a player without one). JavaScript filters
    /// are called as filter(event, state); a WebAssembly module must implement filter ABI version
    /// 2 (filter-sdk/ABI.md §9). With --event: the verdict, then the new state on a second line.
    /// With --events the events are taken as ONE player's, in file order, whatever their
    /// player_id: the state each evaluation leaves is the next one's (a failed evaluation keeps
    /// the state it was given, as the processor does); one verdict per line, then the final state.
    #[arg(long, value_name = "JSON")]
    pub state: Option<String>,
    /// The campaign's `state.max_bytes` for --state: a new state over it fails the evaluation
    /// with error kind `state` [default: 1024].
    #[arg(long, value_name = "BYTES", requires = "state", value_parser = clap::value_parser!(u64).range(2..=16 * 1024 * 1024))]
    pub state_max_bytes: Option<u64>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Flags that lower the host's limits (they never raise them).
#[derive(Debug, Args, Clone, Copy)]
pub struct LimitArgs {
    /// Fuel per evaluation [default: the host's, 20000000 ≈ 2 ms].
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Memory cap per filter instance, in MiB [default: the host's, 16].
    #[arg(long)]
    pub memory_mb: Option<u64>,
    /// CPU-time deadline per evaluation, in milliseconds [default: the host's, 100].
    #[arg(long)]
    pub deadline_ms: Option<u64>,
}
