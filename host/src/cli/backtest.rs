//! `rtcrm campaign backtest CAMPAIGN.json (--from TIME [--to TIME] | --events FILE.jsonl) [--json]`
//! (spec §13): the campaign over past events, with the processor's engine and limits and its
//! controls (spec §12: cooldown, cap, count, holdout, variants, inactivity timers, the filter's
//! state, decided as the processor decides them, from empty per-player state), producing
//! nothing. Exit 0 with the report (also when the campaign's filter fails on events: the report
//! says so); 2 for a campaign file or interval that is not valid; 1 when the events cannot be
//! read.

use crate::config::{Clock, RunArgs, Settings};
use crate::dryrun::backtest::interval::{parse_time_arg, Interval, TIME_FORMS};
use crate::dryrun::backtest::report::thousands;
use crate::dryrun::backtest::source::Source;
use crate::dryrun::backtest::{Progress, Spec, DEFAULT_SAMPLES};
use crate::campaigns::registry::LiveCampaign;
use crate::telemetry::metrics::CampaignTelemetry;
use crate::Exit;
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Flags of `rtcrm campaign backtest`.
#[derive(Debug, clap::Args)]
#[command(after_help = format!("TIME is {TIME_FORMS}."))]
pub struct BacktestArgs {
    /// The campaign JSON (as `rtcrm campaign put` takes it).
    pub file: PathBuf,
    /// A WebAssembly filter (filter ABI) to use as the campaign's `filter_wasm`.
    #[arg(long)]
    pub wasm: Option<PathBuf>,
    /// Read the events topic from this time, by record timestamp (inclusive).
    #[arg(long, value_name = "TIME", value_parser = parse_time_arg, required_unless_present = "events", conflicts_with = "events")]
    pub from: Option<DateTime<Utc>>,
    /// ... up to this time, by record timestamp (exclusive) [default: the end of the topic when the backtest starts].
    #[arg(long, value_name = "TIME", value_parser = parse_time_arg, requires = "from")]
    pub to: Option<DateTime<Utc>>,
    /// Read the events from a file instead, one JSON object per line.
    #[arg(long, value_name = "FILE.jsonl")]
    pub events: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many events (the report says it stopped early).
    #[arg(long)]
    pub max_events: Option<u64>,
    /// Sample triggers to show.
    #[arg(long, default_value_t = DEFAULT_SAMPLES)]
    pub samples: usize,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// A config file of `rtcrm run` (its Kafka, topic, clock and workers settings apply).
    #[arg(long, env = "RTCRM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers [default: localhost:9093].
    #[arg(long, env = "RTCRM_BOOTSTRAP_SERVERS")]
    pub bootstrap_servers: Option<String>,
    /// Events topic [default: events-valid].
    #[arg(long, env = "RTCRM_EVENT_TOPIC")]
    pub event_topic: Option<String>,
    /// Time against which campaign windows are checked [default: event]; with `processing`, the
    /// record timestamp stands for the wall clock at the time.
    #[arg(long, env = "RTCRM_CLOCK", value_enum)]
    pub clock: Option<Clock>,
    /// Evaluation threads [default: the number of cores].
    #[arg(long, env = "RTCRM_WORKERS")]
    pub workers: Option<usize>,
    /// A librdkafka property, as KEY=VALUE (repeatable), as for `rtcrm run`.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE")]
    pub kafka_property: Vec<String>,
    /// The host's limits, as for `rtcrm run` (a campaign's `limits` lower them).
    #[command(flatten)]
    pub limits: crate::config::LimitFlags,
}

pub fn run(args: BacktestArgs) -> Result<()> {
    let settings = Settings::load(&RunArgs {
        config: args.config.clone(),
        bootstrap_servers: args.bootstrap_servers.clone(),
        event_topic: args.event_topic.clone(),
        clock: args.clock,
        workers: args.workers,
        kafka_property: args.kafka_property.clone(),
        limits: args.limits.clone(),
        ..RunArgs::default()
    })?;
    let source = match (&args.events, args.from) {
        (Some(file), _) => Source::File(file.clone()),
        (None, Some(from)) => {
            let interval = Interval::new(from, args.to).map_err(|e| Exit { code: 2, message: format!("error: {e}") })?;
            Source::Topic { settings: Box::new(settings.clone()), interval }
        }
        (None, None) => unreachable!("clap requires --from or --events"),
    };
    // The processor's limits (config file, RTCRM_*): the verdicts are those rtcrm run would give.
    let sandbox = rtcrm_sandbox::Sandbox::new(rtcrm_sandbox::SandboxConfig::from_limits(&settings.limits)).context("starting the filter sandbox")?;
    let (_, def, compiled) = crate::cli::campaign::load(&sandbox, &args.file, args.wasm.as_deref())?;
    let limits = sandbox.limits().lowered(def.fuel, def.memory_mb);
    let id = def.id;
    let spec = Spec {
        campaign: Arc::new(LiveCampaign::new(def, compiled, limits, CampaignTelemetry::detached(id))),
        clock: settings.clock,
        threads: settings.workers,
        max_events: args.max_events,
        max_duration: None,
        samples: args.samples,
    };
    let progress = Progress::default();
    let done = std::sync::atomic::AtomicBool::new(false);
    let report = std::thread::scope(|scope| {
        let watcher = (!args.quiet).then(|| scope.spawn(|| show_progress(&progress, &done)));
        let report = crate::dryrun::backtest::run(&sandbox, &spec, &source, &progress);
        done.store(true, Ordering::SeqCst);
        if let Some(w) = watcher {
            let _ = w.join();
        }
        report
    })?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", report.human())?;
    }
    out.flush()?;
    Ok(())
}

/// A progress line on stderr once the run takes more than a second: events decided, rate, how
/// far, and the time left. Redrawn in place on a terminal; otherwise a line after 1 s, then every 5 s.
fn show_progress(progress: &Progress, done: &std::sync::atomic::AtomicBool) {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let every = if tty { Duration::from_millis(500) } else { Duration::from_secs(5) };
    // The first line after a second, then every `every`.
    let mut next = started + Duration::from_secs(1);
    let mut shown = false;
    while !done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        if Instant::now() < next {
            continue;
        }
        next += every;
        let elapsed = started.elapsed().as_secs_f64();
        let events = progress.events.load(Ordering::Relaxed);
        let rate = events as f64 / elapsed;
        let how_far = match progress.fraction() {
            Some(f) if f > 0.0 => format!(", {:.0} %, ETA {:.0} s", f * 100.0, elapsed * (1.0 - f) / f),
            _ => String::new(),
        };
        let line = format!("backtest: {} events, {} events/s{how_far}", thousands(events), thousands(rate.round() as u64));
        let mut err = std::io::stderr().lock();
        let _ = if tty { write!(err, "\r\x1b[2K{line}") } else { writeln!(err, "{line}") };
        let _ = err.flush();
        shown = true;
    }
    if shown && tty {
        let _ = writeln!(std::io::stderr());
    }
}
