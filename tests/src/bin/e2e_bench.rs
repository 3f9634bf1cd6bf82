//! End-to-end benchmark of `rtcrm run` against a real Kafka broker, with a plain Kafka copier
//! measured in the same run as the baseline (the Kafka floor of this machine).
//!
//! ```text
//! cargo build --release -p rtcrm -p rtcrm-integration-tests --bin rtcrm --bin e2e_bench
//! target/release/e2e_bench [--events N] [--campaigns M] [--rate R] [--latency-seconds S]
//!                          [--bootstrap ADDR] [--rtcrm PATH]
//! ```
//! (`scripts/bench-e2e.sh` does both.) One run prints one markdown table. With `--backtest`
//! (`scripts/bench-backtest.sh`), the bench measures `rtcrm campaign backtest` against
//! `rtcrm run` on the same events and campaign instead (see [`backtest_bench`]).
//!
//! What is measured, and why:
//!
//! 1. **Throughput.** N realistic events (varied ids, players, markets, results; about half
//!    produce a trigger) are pre-loaded into a fresh one-partition events topic, M campaigns on
//!    (foe, fight) with varied JavaScript filters into a fresh campaigns topic; then
//!    `rtcrm run --workers 2` starts on them. The bench computes every (event, campaign) match
//!    itself (each filter has a Rust twin, and the same enabled/game/name/window checks), waits
//!    until every expected trigger is in the triggers topic, and measures
//!    `t0` = the earliest trigger's `triggered_at` (the processor's start-up and campaign
//!    loading are excluded: the first event is consumed just before its trigger is built) to
//!    `t1` = the broker timestamp of the trigger that completed the expected set (if some never
//!    come: of the last one that did). The triggers topic is created by the bench (rtcrm creates
//!    the others) with `message.timestamp.type=LogAppendTime`, so `t1` is when the broker
//!    appended (and, with one replica and `acks=all`, acknowledged) that trigger.
//!    Reported: N / (t1 - t0) events/s and triggers/s, and the delivery check: missing,
//!    unexpected and duplicated triggers (duplicates counted again after rtcrm has stopped),
//!    plus rtcrm's own counters and evaluation errors from `/metrics`.
//! 2. **Baseline.** The same N events in another fresh topic go through a copier written here
//!    with rdkafka: the same consumer settings as rtcrm (consumer group, offsets stored only after
//!    the copy is acknowledged), an `acks=all` idempotent producer with rtcrm's `linger.ms`, one
//!    output message per input message, no parsing. Same measurement (`t0` = when the copier
//!    built its first output, `t1` = the broker timestamp of the last). rtcrm's throughput is
//!    reported as a ratio of it.
//! 3. **Latency.** A fresh rtcrm on fresh topics with one always-true campaign; events are
//!    produced at R/s for S seconds, each with its send time in `data.sent_at_us`; a reader
//!    records receive time minus send time of each trigger (the reader's own fetch is part of
//!    both figures). The same for the copier. Reported: p50, p99, max, and the ratio. One
//!    warm-up event goes through first (its output is awaited, and not counted), so that
//!    start-up (the consumer's first offset lookup, rtcrm's first filter instance, the
//!    producer's id) is not counted as latency; every event after it is.
//!
//! Before the measured runs, a short copier run warms up the broker's JVM (JIT) so that the
//! first measured run is not penalised, and each latency run starts after a `sync` (see
//! [`settle`]). Runs are sequential, never concurrent. The latency samples are kept in
//! `latency-rtcrm.txt` and `latency-copier.txt` (send time, receive time, latency; µs).
//!
//! Without `--bootstrap`, the bench starts its own broker (`scripts/kafka/broker.sh`) and stops
//! it at the end, also on error, panic or Ctrl-C (and a detached watchdog stops it if this
//! process is killed). rtcrm processes are stopped with SIGTERM (their exit status is checked).
//! Work files (broker state, rtcrm logs) go to `target/e2e-bench/<run>/` (kept for inspection).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use rtcrm_integration_tests::{free_port, http_get, parse_rfc3339, target_dir, Rng};
use rtcrm_integration_tests::bench::{Broker, shell_line, metric_sum, evaluation_errors, process_cpu, median, client_config, create_topics, check_delivery};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

/// Time without progress after which a wait for output gives up (and reports what is missing).
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed to an `rtcrm run` from spawn to `GET /readyz` = 200.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Campaign window of every campaign but the expired ones; events are created inside it.
const WINDOW: (&str, &str) = ("2023-09-01T10:00:00.00Z", "2023-12-01T10:00:00.00Z");

// =============================================================================================
// Command line
// =============================================================================================

/// An end-to-end benchmark of `rtcrm run` on a real Kafka broker, against a plain
/// consume→produce copier measured in the same run.
#[derive(clap::Parser)]
#[command(name = "e2e_bench")]
struct Args {
    /// Events pre-loaded for each throughput run [default: 200000; with --backtest, 1000000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    events: Option<u64>,
    /// Runs of each throughput configuration (figures are their medians).
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    runs: usize,
    /// Events of the 10,000-campaign run.
    #[arg(long, default_value_t = 20_000)]
    many_events: usize,
    /// Only these phases (repeatable): throughput, many, restart, latency [default: all].
    #[arg(long)]
    only: Vec<String>,
    /// Campaigns on (foe, fight).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    campaigns: u64,
    /// Events per second in the latency phase.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    rate: u32,
    /// Length of the latency phase, in seconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    latency_seconds: u32,
    /// An existing broker; without it, one is started (scripts/kafka/broker.sh) and stopped.
    #[arg(long)]
    bootstrap: Option<String>,
    /// The rtcrm binary [default: target/release/rtcrm].
    #[arg(long)]
    rtcrm: Option<PathBuf>,
    /// Measure `rtcrm campaign backtest` instead (scripts/bench-backtest.sh): one campaign (the
    /// original filter) through `rtcrm run` on the pre-loaded events, then backtested over the
    /// same topic; events/s of both, and the backtest's counts against the expected triggers.
    #[arg(long)]
    backtest: bool,
}

// =============================================================================================
// Small utilities
// =============================================================================================

/// Set by SIGINT/SIGTERM: every wait loop checks it and bails out, so the guards clean up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Wall-clock microseconds since the epoch, monotonic within this process (an `Instant` offset
/// from one wall-clock reading), so latency samples never see a clock step.
fn now_us() -> u64 {
    static BASE: OnceLock<(Instant, u64)> = OnceLock::new();
    let (i0, us0) = *BASE.get_or_init(|| {
        (Instant::now(), SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_micros() as u64)
    });
    us0 + i0.elapsed().as_micros() as u64
}

/// Progress lines on stderr, with the time since start.
fn progress(msg: impl AsRef<str>) {
    static T0: OnceLock<Instant> = OnceLock::new();
    let t = T0.get_or_init(Instant::now).elapsed();
    eprintln!("[e2e_bench {:>6.1}s] {}", t.as_secs_f64(), msg.as_ref());
}

/// Nearest-rank percentiles of latency samples (microseconds).
struct Latency {
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

fn summarize(mut samples: Vec<u64>) -> Option<Latency> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = |p: f64| samples[((p / 100.0 * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    Some(Latency { p50_us: rank(50.0), p99_us: rank(99.0), max_us: *samples.last().unwrap() })
}




// =============================================================================================
// Kafka helpers
// =============================================================================================

/// Names of one run's fresh topics and consumer group.
#[derive(Clone)]
struct Topics {
    events: String,
    campaigns: String,
    triggers: String,
    status: String,
    dlq: String,
    group: String,
}

impl Topics {
    fn new(run: &str, phase: &str) -> Topics {
        let p = format!("bench-{run}-{phase}");
        Topics {
            events: format!("{p}-events"),
            campaigns: format!("{p}-campaigns"),
            triggers: format!("{p}-triggers"),
            status: format!("{p}-status"),
            dlq: format!("{p}-dlq"),
            group: format!("{p}-group"),
        }
    }
}


/// The producer settings of rtcrm's trigger producer (host/src/kafka.rs), used by the bench's
/// producers and the baseline copier alike.
fn producer(bootstrap: &str, linger_ms: u32) -> Result<FutureProducer> {
    client_config(bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", linger_ms.to_string())
        .set("message.timeout.ms", "300000")
        .create()
        .context("creating a Kafka producer")
}


/// Produces (key, value) records and waits until all are acknowledged.
fn produce_all(rt: &tokio::runtime::Runtime, bootstrap: &str, topic: &str, records: &[(String, String)]) -> Result<()> {
    let producer = producer(bootstrap, 20)?;
    rt.block_on(async {
        let mut pending = std::collections::VecDeque::<DeliveryFuture>::new();
        for (key, value) in records {
            let mut record = FutureRecord::to(topic).key(key.as_str()).payload(value.as_str());
            loop {
                match producer.send_result(record) {
                    Ok(f) => {
                        pending.push_back(f);
                        break;
                    }
                    // Queue full: wait for the oldest delivery, then try again.
                    Err((_, back)) => {
                        record = back;
                        match pending.pop_front() {
                            Some(f) => check_delivery(f.await)?,
                            None => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                }
            }
        }
        for f in pending {
            check_delivery(f.await)?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(())
}


/// A consumer outside any group, for watermarks and for reading a topic with `assign`.
fn reader(bootstrap: &str) -> Result<BaseConsumer> {
    client_config(bootstrap)
        .set("group.id", "e2e-bench-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .context("creating a Kafka reader")
}

fn high_watermark(c: &BaseConsumer, topic: &str) -> Result<i64> {
    Ok(c.fetch_watermarks(topic, 0, Duration::from_secs(5))?.1)
}

/// One output message as the bench sees it.
struct Output {
    broker_ms: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

/// Reads partition 0 of `topic` from offset `from` up to (excluding) `to` (read_committed:
/// aborted records and transaction markers take offsets but are never returned, so the end of
/// the partition also ends the read).
fn read_range(bootstrap: &str, topic: &str, from: i64, to: i64) -> Result<Vec<Output>> {
    let c: BaseConsumer = client_config(bootstrap)
        .set("group.id", "e2e-bench-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .create()
        .context("creating a Kafka reader")?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(from))?;
    c.assign(&tpl)?;
    let mut out = Vec::with_capacity((to - from).max(0) as usize);
    let mut next = from;
    let mut last_progress = Instant::now();
    while next < to {
        check_interrupted()?;
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                next = m.offset() + 1;
                last_progress = Instant::now();
                out.push(Output {
                    broker_ms: m.timestamp().to_millis().unwrap_or(0),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                });
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {
                let position = c.position()?.find_partition(topic, 0).and_then(|e| e.offset().to_raw()).unwrap_or(next);
                if position >= to {
                    break;
                }
            }
            Some(Err(e)) => bail!("reading {topic}: {e}"),
            None if last_progress.elapsed() > STALL_TIMEOUT => {
                bail!("reading {topic}: stuck at offset {next} of {to}")
            }
            None => {}
        }
    }
    Ok(out)
}

// =============================================================================================
// Workload: events and campaigns, with the expected matches computed here
// =============================================================================================

/// What the Rust twins of the filters read from an event.
struct Event {
    event_id: String,
    player_id: u64,
    game: &'static str,
    event_name: &'static str,
    market: &'static str,
    result: &'static str,
    level: u64,
    attempts: u64,
    boss: bool,
    duration_ms: u64,
    client: &'static str,
    host: u64,
    /// The JSON sent to Kafka.
    json: String,
}

const MARKETS: &[(&str, u64)] = &[("de", 30), ("us", 20), ("fr", 15), ("en", 15), ("pl", 10), ("ch", 5), ("br", 5)];
const CLIENTS: &[(&str, u64)] = &[("web", 50), ("android", 30), ("ios", 20)];

/// A realistic tracking event; `sent_at_us` is added to `data` for the latency phase.
/// About 85% are (foe, fight), the rest other games or event names (rejected before any filter).
fn make_event(rng: &mut Rng, force_fight: bool, sent_at_us: Option<u64>) -> Event {
    let (game, event_name) = if force_fight {
        ("foe", "fight")
    } else {
        rng.weighted(&[(("foe", "fight"), 85), (("foe", "quest_completed"), 10), (("elvenar", "fight"), 5)])
    };
    let e = Event {
        event_id: rng.uuid(),
        player_id: rng.range(1, 5_000_000) as u64,
        game,
        event_name,
        market: rng.weighted(MARKETS),
        result: rng.weighted(&[("loss", 55), ("win", 35), ("draw", 10)]),
        level: rng.range(1, 80) as u64,
        attempts: rng.range(1, 6) as u64,
        boss: rng.chance(0.40),
        duration_ms: rng.range(1_000, 600_000) as u64,
        client: rng.weighted(CLIENTS),
        host: rng.range(0, 7) as u64,
        json: String::new(),
    };
    // created_at inside the campaigns' window, received_at two seconds later.
    let (h, m, s, cs) = (rng.range(0, 21), rng.range(0, 59), rng.range(0, 59), rng.range(0, 99));
    let mut data = json!({
        "result": e.result,
        "level": e.level,
        "attempts": e.attempts,
        "duration_ms": e.duration_ms,
        "era": "IronAge",
    });
    if e.boss {
        data["boss"] = json!(["grendel", "hydra", "kraken"][(e.player_id % 3) as usize]);
    }
    if let Some(us) = sent_at_us {
        data["sent_at_us"] = json!(us);
    }
    let json = json!({
        "schema_version": "2023110110010101",
        "event_id": e.event_id,
        "system_type": "game",
        "system_name": format!("{game}-backend"),
        "game": game,
        "market": e.market,
        "player_id": e.player_id,
        "event_type": "progress",
        "event_name": event_name,
        "event_scope": "user",
        "created_at": format!("2023-11-20T{h:02}:{m:02}:{s:02}.{cs:02}Z"),
        "received_at": format!("2023-11-20T{h:02}:{m:02}:{:02}.{cs:02}Z", (s + 2).min(59)),
        "hostname": format!("{game}-backend-{}.ig.com", e.host),
        "context": { "client": e.client, "session_id": format!("{:016x}", rng.next_u64()) },
        "data": data,
    })
    .to_string();
    Event { json, ..e }
}

/// The Rust twin of a campaign's JavaScript filter.
type Predicate = Box<dyn Fn(&Event) -> bool + Send + Sync>;

/// A campaign and the Rust twin of its filter (plus the host's cheap checks).
struct Campaign {
    id: i64,
    json: String,
    enabled: bool,
    in_window: bool,
    filter: Predicate,
}

impl Campaign {
    /// Spec §4 for this workload: every campaign is on (foe, fight).
    fn matches(&self, e: &Event) -> bool {
        self.enabled && e.game == "foe" && e.event_name == "fight" && self.in_window && (self.filter)(e)
    }
}

/// Campaign `i` of `M`: ten templates in the styles the original system's filters used (bean
/// getters, java.util.Map methods, snake_case and camelCase fields, arrow functions, regexes),
/// with parameters that vary with `i`; one in ten has expired, one in ten is disabled.
fn make_campaign(i: usize) -> Campaign {
    let id = 4700 + i as i64;
    let v = (i / 10) as u64; // varies the parameters when M > 10
    let market = ["de", "us", "fr", "en", "pl"][(i / 10 + 1) % 5];
    let client = ["web", "android", "ios"][(i / 10) % 3];
    let (k, r) = (3 + v % 4, v % 3);
    let level = 10 + 5 * (v % 7);
    let attempts = 1 + v % 4;
    let duration = 60_000 + 30_000 * (v % 10);
    let (mut enabled, mut end) = (true, WINDOW.1);
    let (js, filter): (String, Predicate) = match i % 10 {
        0 => (
            "function(event) { return event.getData().get('result') === 'loss' }".into(),
            Box::new(|e| e.result == "loss"),
        ),
        1 => (
            format!("function(event) {{ return event.data.result === 'loss' && event.market === '{market}' }}"),
            Box::new(move |e| e.result == "loss" && e.market == market),
        ),
        2 => (
            format!("function(event) {{ return event.getPlayerId() % {k} === {r} && event.getData().get('result') !== 'win' }}"),
            Box::new(move |e| e.player_id % k == r && e.result != "win"),
        ),
        3 => (
            format!("(e) => ['de', 'at', 'ch'].includes(e.getMarket()) && e.data.level >= {level} && e.data.result !== 'win'"),
            Box::new(move |e| ["de", "at", "ch"].contains(&e.market) && e.level >= level && e.result != "win"),
        ),
        4 => (
            format!(
                "function(e) {{\n  var d = e.getData();\n  return d.containsKey('boss') && d.get('result') === 'loss' && d.get('attempts') > {attempts};\n}}"
            ),
            Box::new(move |e| e.boss && e.result == "loss" && e.attempts > attempts),
        ),
        5 => (
            format!("e => e.data.result === 'draw' || (e.data.result === 'loss' && e.context.client === '{client}')"),
            Box::new(move |e| e.result == "draw" || (e.result == "loss" && e.client == client)),
        ),
        6 => (
            "function (event) {\n  const host = event.getHostname();\n  return /^foe-backend-[0-3]\\./.test(host) && event.data.result === 'loss';\n}".into(),
            Box::new(|e| e.host <= 3 && e.result == "loss"),
        ),
        7 => (
            format!("function(event) {{ return event.eventName === 'fight' && event.data.duration_ms > {duration} && event.data.result === 'loss' }}"),
            Box::new(move |e| e.duration_ms > duration && e.result == "loss"),
        ),
        8 => {
            // Ended before the events were created: rejected by the window check.
            end = "2023-11-01T00:00:00.00Z";
            ("function(event) { return true }".into(), Box::new(|_| true))
        }
        _ => {
            enabled = false;
            ("function(event) { return event.playerId > 0 }".into(), Box::new(|e| e.player_id > 0))
        }
    };
    let json = json!({
        "campaign_id": id,
        "enabled": enabled,
        "game": "foe",
        "event_name": "fight",
        "start_date": WINDOW.0,
        "end_date": end,
        "filter": js,
        "name": format!("bench campaign {i}"),
    })
    .to_string();
    Campaign { id, json, enabled, in_window: end == WINDOW.1, filter }
}

// =============================================================================================
// rtcrm processes
// =============================================================================================

/// A running `rtcrm run`, stopped with SIGTERM on drop.
struct Rtcrm {
    child: Child,
    port: u16,
    log: PathBuf,
    command: String,
    started: Instant,
    exit: Option<ExitStatus>,
}

impl Rtcrm {
    fn start(bin: &Path, bootstrap: &str, t: &Topics, log: PathBuf, extra: &[String]) -> Result<Rtcrm> {
        let port = free_port();
        let mut args: Vec<String> = [
            "run",
            "--bootstrap-servers",
            bootstrap,
            "--group-id",
            &t.group,
            "--event-topic",
            &t.events,
            "--campaign-topic",
            &t.campaigns,
            "--trigger-topic",
            &t.triggers,
            "--status-topic",
            &t.status,
            "--dlq-topic",
            &t.dlq,
            "--workers",
            "2",
            "--http-addr",
            &format!("127.0.0.1:{port}"),
            "--auto-offset-reset",
            "earliest",
            "--log-format",
            "json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().cloned());
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let command = shell_line(std::iter::once(bin.to_string_lossy().into_owned()).chain(args));
        Ok(Rtcrm { child, port, log, command, started: Instant::now(), exit: None })
    }

    /// Waits for `GET /readyz` = 200; returns the time from spawn.
    fn wait_ready(&mut self) -> Result<Duration> {
        loop {
            check_interrupted()?;
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "rtcrm exited before it was ready ({status}); log: {}\n{}",
                    self.log.display(),
                    self.log_tail(20)
                );
            }
            if matches!(http_get(&format!("127.0.0.1:{}", self.port), "/readyz"), Ok((200, _))) {
                return Ok(self.started.elapsed());
            }
            if self.started.elapsed() > READY_TIMEOUT {
                bail!("rtcrm not ready after {READY_TIMEOUT:?}; log: {}\n{}", self.log.display(), self.log_tail(20));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn metrics(&self) -> String {
        http_get(&format!("127.0.0.1:{}", self.port), "/metrics").map(|(_, body)| body).unwrap_or_default()
    }

    /// CPU time the process has used so far (user + system), from /proc.
    fn cpu(&self) -> Duration {
        process_cpu(self.child.id())
    }

    /// Resident memory now (VmRSS) and proportional set size (Pss), in MiB.
    fn memory_mib(&self) -> (f64, f64) {
        let read = |file: &str, key: &str| -> f64 {
            std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id()))
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map_or(f64::NAN, |kb| kb / 1024.0)
        };
        (read("status", "VmRSS:"), read("smaps_rollup", "Pss:"))
    }

    /// SIGTERM, then up to 30 s for a clean exit (SIGKILL after that).
    fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.exit {
            return Ok(s);
        }
        if self.child.try_wait()?.is_none() {
            let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.child.try_wait()?.is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.child.try_wait()?.is_none() {
                progress(format!("rtcrm (pid {}) ignored SIGTERM for 30 s: SIGKILL", self.child.id()));
                let _ = self.child.kill();
            }
        }
        let status = self.child.wait()?;
        self.exit = Some(status);
        Ok(status)
    }

    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// WARN and ERROR lines of the log (JSON format), for the report.
    fn problems(&self) -> Vec<String> {
        let Ok(f) = File::open(&self.log) else { return vec![] };
        BufReader::new(f)
            .lines()
            .map_while(|l| l.ok())
            .filter(|l| match serde_json::from_str::<Value>(l) {
                Ok(v) => matches!(v["level"].as_str(), Some("WARN" | "ERROR")),
                Err(_) => !l.trim().is_empty(), // not JSON: a panic message or the like
            })
            .collect()
    }
}

impl Drop for Rtcrm {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

// =============================================================================================
// Baseline: a plain consume → produce copier
// =============================================================================================

/// Marks the consumer ready once it owns partitions (as rtcrm's readiness does).
struct CopierContext {
    assigned: Arc<AtomicBool>,
}

impl ClientContext for CopierContext {}

impl ConsumerContext for CopierContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, _rebalance: &Rebalance<'_>) {
        if consumer.assignment().map(|a| a.count()).unwrap_or(0) > 0 {
            self.assigned.store(true, Ordering::SeqCst);
        }
    }
}

/// A running copier on its own tokio runtime (as rtcrm has its own), stopped on drop.
struct Copier {
    runtime: Option<tokio::runtime::Runtime>,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
    stop: watch::Sender<bool>,
    assigned: Arc<AtomicBool>,
    /// Wall clock (µs) when the first output record was built; 0 before.
    first_output_us: Arc<AtomicU64>,
}

impl Copier {
    /// The same consumer and producer settings as rtcrm's (host/src/kafka.rs); one output per
    /// input, same key and bytes; an input's offset is stored after its copy is acknowledged.
    fn start(bootstrap: &str, group: &str, input: &str, output: &str) -> Result<Copier> {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let assigned = Arc::new(AtomicBool::new(false));
        let first_output_us = Arc::new(AtomicU64::new(0));
        // A StreamConsumer spawns its wake-up task on the current runtime.
        let _in_runtime = runtime.enter();
        let consumer: StreamConsumer<CopierContext> = client_config(bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .create_with_context(CopierContext { assigned: assigned.clone() })?;
        consumer.subscribe(&[input])?;
        let producer = producer(bootstrap, 1)?;
        let (stop, stop_rx) = watch::channel(false);
        let (input, output, first) = (input.to_string(), output.to_string(), first_output_us.clone());
        let task = runtime.spawn(copy(Arc::new(consumer), producer, input, output, stop_rx, first));
        Ok(Copier { runtime: Some(runtime), task: Some(task), stop, assigned, first_output_us })
    }

    fn wait_ready(&self) -> Result<()> {
        let t0 = Instant::now();
        while !self.assigned.load(Ordering::SeqCst) {
            check_interrupted()?;
            if t0.elapsed() > READY_TIMEOUT {
                bail!("the copier got no partition within {READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops consuming, finishes in-flight copies, commits.
    fn stop(&mut self) -> Result<()> {
        let _ = self.stop.send(true);
        if let (Some(rt), Some(task)) = (self.runtime.as_ref(), self.task.take()) {
            rt.block_on(task)??;
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
        Ok(())
    }
}

impl Drop for Copier {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

async fn copy(
    consumer: Arc<StreamConsumer<CopierContext>>,
    producer: FutureProducer,
    input: String,
    output: String,
    mut stop: watch::Receiver<bool>,
    first_output_us: Arc<AtomicU64>,
) -> Result<()> {
    // Deliveries are awaited in order by an acker, which then stores the offset: the same
    // at-least-once bookkeeping as rtcrm's event path.
    let (done_tx, mut done_rx) = mpsc::channel::<(i32, i64, DeliveryFuture)>(4096);
    let acker = {
        let (consumer, input) = (consumer.clone(), input.clone());
        tokio::spawn(async move {
            while let Some((partition, offset, delivery)) = done_rx.recv().await {
                check_delivery(delivery.await)?;
                let _ = consumer.store_offset(&input, partition, offset);
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    loop {
        let m = tokio::select! {
            _ = stop.changed() => break,
            m = consumer.recv() => m?,
        };
        let mut record = FutureRecord::to(&output).payload(m.payload().unwrap_or_default());
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        let _ = first_output_us.compare_exchange(0, now_us(), Ordering::SeqCst, Ordering::SeqCst);
        let delivery = loop {
            match producer.send_result(record) {
                Ok(d) => break d,
                Err((_, back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        done_tx.send((m.partition(), m.offset(), delivery)).await.map_err(|_| anyhow!("the acker stopped"))?;
    }
    drop(done_tx);
    acker.await??;
    producer.flush(Duration::from_secs(30))?;
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => bail!("committing the copier's offsets: {e}"),
    }
    consumer.unsubscribe();
    Ok(())
}

// =============================================================================================
// Phase 1 and 2: throughput
// =============================================================================================

/// The outcome of one throughput run.
#[derive(Default)]
struct Throughput {
    events_per_s: f64,
    outputs_per_s: f64,
    missing: usize,
    unexpected: usize,
    duplicates: usize,
    /// Outputs whose key or trigger_id is not what spec §1 / §9 say.
    malformed: usize,
}

/// Names an output message: its identity in the expected set (None: unexpected). It may also
/// update the tally (t0, malformed outputs).
type Identify<'a> = dyn FnMut(&Output, &mut Tally) -> Option<(i64, u32)> + 'a;

/// Checks output messages against the expected set, as they are read.
struct Tally {
    /// Expected output identity → seen count.
    seen: HashMap<(i64, u32), u32>,
    expected: usize,
    distinct: usize,
    unexpected: usize,
    duplicates: usize,
    malformed: usize,
    /// The earliest `triggered_at` (or the copier's first output time), ms.
    t0_ms: Option<i64>,
    /// Broker time of the last expected output to arrive (its first copy), ms: when the set was
    /// complete, or, with outputs missing, when the last one that came did.
    t1_ms: Option<i64>,
}

impl Tally {
    fn new(expected: HashSet<(i64, u32)>) -> Tally {
        let n = expected.len();
        Tally {
            seen: expected.into_iter().map(|k| (k, 0)).collect(),
            expected: n,
            distinct: 0,
            unexpected: 0,
            duplicates: 0,
            malformed: 0,
            t0_ms: None,
            t1_ms: None,
        }
    }

    fn add(&mut self, id: Option<(i64, u32)>, broker_ms: i64) {
        match id.and_then(|k| self.seen.get_mut(&k)) {
            None => self.unexpected += 1,
            Some(n) => {
                *n += 1;
                if *n > 1 {
                    self.duplicates += 1;
                } else {
                    self.distinct += 1;
                    self.t1_ms = Some(self.t1_ms.map_or(broker_ms, |t| t.max(broker_ms)));
                }
            }
        }
    }

    /// The expected outputs that never came.
    fn missing(&self) -> Vec<(i64, u32)> {
        let mut m: Vec<_> = self.seen.iter().filter(|(_, n)| **n == 0).map(|(k, _)| *k).collect();
        m.sort_unstable();
        m
    }

    fn result(&self, events: usize) -> Throughput {
        let seconds = match (self.t0_ms, self.t1_ms) {
            (Some(a), Some(b)) => ((b - a) as f64 / 1000.0).max(0.001),
            _ => f64::NAN,
        };
        Throughput {
            events_per_s: events as f64 / seconds,
            outputs_per_s: self.distinct as f64 / seconds,
            missing: self.expected - self.distinct,
            unexpected: self.unexpected,
            duplicates: self.duplicates,
            malformed: self.malformed,
        }
    }
}

/// Waits until `topic` holds every expected output (or nothing new arrives for
/// [`STALL_TIMEOUT`], or for 2 s and `finished` says no more will come), reading it as it goes. Only the watermark is polled while the system
/// under test works, so the bench takes (almost) no CPU from it.
fn collect(
    bootstrap: &str,
    topic: &str,
    tally: &mut Tally,
    parse: &mut Identify,
    finished: &mut dyn FnMut(i64) -> bool,
) -> Result<i64> {
    let wm = reader(bootstrap)?;
    let (mut read_to, mut target) = (0i64, tally.expected as i64);
    let (mut last_high, mut last_change) = (-1i64, Instant::now());
    loop {
        check_interrupted()?;
        let high = high_watermark(&wm, topic)?;
        if high != last_high {
            (last_high, last_change) = (high, Instant::now());
        }
        // Stalled: nothing new for a long time, or for a while and the system under test says
        // it has nothing more to send (`finished(high watermark)`).
        let quiet = last_change.elapsed();
        let stalled = quiet > STALL_TIMEOUT || (quiet > Duration::from_secs(2) && finished(high));
        if high >= target || (stalled && high > read_to) {
            for o in read_range(bootstrap, topic, read_to, high)? {
                let id = parse(&o, tally);
                tally.add(id, o.broker_ms);
            }
            read_to = high;
            // Duplicates take room in the topic: wait for as many more as are still missing.
            target = high + (tally.expected - tally.distinct) as i64;
        }
        if tally.distinct == tally.expected {
            return Ok(read_to);
        }
        if stalled {
            progress(format!(
                "{topic}: nothing new for {:.1?}; {} outputs missing",
                last_change.elapsed(),
                tally.expected - tally.distinct
            ));
            return Ok(read_to);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads what arrived in `topic` after `from` (late duplicates), once the producer has stopped.
fn collect_rest(bootstrap: &str, topic: &str, from: i64, tally: &mut Tally, parse: &mut Identify) -> Result<()> {
    let high = high_watermark(&reader(bootstrap)?, topic)?;
    for o in read_range(bootstrap, topic, from, high)? {
        let id = parse(&o, tally);
        tally.add(id, o.broker_ms);
    }
    Ok(())
}

/// Everything phase 1 reports about rtcrm besides the figures.
struct RtcrmRun {
    ready: Duration,
    /// CPU time rtcrm used from ready to the last trigger.
    cpu: Duration,
    exit: ExitStatus,
    command: String,
    log: PathBuf,
    problems: Vec<String>,
    metrics_events: f64,
    metrics_triggers: f64,
    /// Non-zero `rtcrm_evaluation_errors_total` samples (by campaign and kind).
    metrics_errors: Vec<String>,
    statuses: HashMap<String, usize>,
    /// The triggers that never came: campaign id, event id, the event's JSON.
    missing: Vec<String>,
}

/// One throughput configuration of rtcrm.
struct Config<'a> {
    /// Names the run's topics and log.
    phase: String,
    partitions: i32,
    /// `at-least-once` or `exactly-once`.
    delivery: &'a str,
}

#[allow(clippy::too_many_arguments)]
fn rtcrm_throughput(
    rt: &tokio::runtime::Runtime,
    bootstrap: &str,
    bin: &Path,
    run: &str,
    work: &Path,
    events: &[Event],
    records: &[(String, String)],
    campaigns: &[Campaign],
    config: &Config<'_>,
) -> Result<(Throughput, RtcrmRun)> {
    let t = Topics::new(run, &config.phase);
    let partitions = config.partitions;
    create_topics(rt, bootstrap, &[&t.events], partitions, &[&t.triggers])?;
    produce_all(rt, bootstrap, &t.events, records)?;
    let campaign_records: Vec<(String, String)> =
        campaigns.iter().map(|c| (c.id.to_string(), c.json.clone())).collect();
    produce_all(rt, bootstrap, &t.campaigns, &campaign_records)?;

    // The expected triggers, computed independently: (campaign id, event index).
    let index: HashMap<&str, u32> = events.iter().enumerate().map(|(i, e)| (e.event_id.as_str(), i as u32)).collect();
    let expected: HashSet<(i64, u32)> = events
        .iter()
        .enumerate()
        .flat_map(|(i, e)| campaigns.iter().filter(|c| c.matches(e)).map(move |c| (c.id, i as u32)))
        .collect();
    let matching_events = events.iter().filter(|e| campaigns.iter().any(|c| c.matches(e))).count();
    progress(format!(
        "rtcrm throughput: {} events ({} with at least one match), {} campaigns, {} triggers expected",
        events.len(),
        matching_events,
        campaigns.len(),
        expected.len()
    ));

    let extra = ["--delivery".to_string(), config.delivery.to_string()];
    let mut proc = Rtcrm::start(bin, bootstrap, &t, work.join(format!("rtcrm-{}.log", config.phase)), &extra)?;
    let ready = proc.wait_ready()?;
    let cpu_at_ready = proc.cpu();
    progress(format!("rtcrm ready in {ready:.2?}; waiting for the triggers"));

    let mut tally = Tally::new(expected);
    // A trigger's identity (campaign id, event index); its triggered_at feeds t0; its key and
    // trigger_id are checked against spec §1 and §9.
    let mut parse = |o: &Output, tally: &mut Tally| -> Option<(i64, u32)> {
        let v: Value = serde_json::from_slice(&o.payload).ok()?;
        let cid = v["campaign"]["campaign_id"].as_i64()?;
        let eid = v["event"]["event_id"].as_str()?;
        let idx = *index.get(eid)?;
        if let Some(ms) = v["triggered_at"].as_str().and_then(parse_rfc3339) {
            tally.t0_ms = Some(tally.t0_ms.map_or(ms, |t| t.min(ms)));
        }
        let key_ok = o.key.as_deref() == Some(events[idx as usize].player_id.to_string().as_bytes());
        if !key_ok || v["trigger_id"].as_str() != Some(&format!("{cid}:{eid}")) {
            tally.malformed += 1;
        }
        Some((cid, idx))
    };
    // rtcrm is done when it has consumed every event and every trigger it counted is in the topic.
    let mut finished = |high: i64| {
        let m = proc.metrics();
        metric_sum(&m, "rtcrm_events_total") >= events.len() as f64
            && metric_sum(&m, "rtcrm_triggers_total") <= high as f64
    };
    let read_to = collect(bootstrap, &t.triggers, &mut tally, &mut parse, &mut finished)?;
    let cpu = proc.cpu().saturating_sub(cpu_at_ready);
    let metrics = proc.metrics();
    let exit = proc.stop()?;
    // Triggers that arrived after the set was complete (duplicates from the shutdown, if any).
    collect_rest(bootstrap, &t.triggers, read_to, &mut tally, &mut parse)?;

    let mut statuses = HashMap::new();
    let high = high_watermark(&reader(bootstrap)?, &t.status)?;
    for o in read_range(bootstrap, &t.status, 0, high)? {
        let state =
            serde_json::from_slice::<Value>(&o.payload).ok().and_then(|v| v["state"].as_str().map(String::from));
        *statuses.entry(state.unwrap_or_else(|| "unreadable".into())).or_default() += 1;
    }
    let info = RtcrmRun {
        ready,
        cpu,
        exit,
        command: proc.command.clone(),
        log: proc.log.clone(),
        problems: proc.problems(),
        metrics_events: metric_sum(&metrics, "rtcrm_events_total"),
        metrics_triggers: metric_sum(&metrics, "rtcrm_triggers_total"),
        metrics_errors: evaluation_errors(&metrics),
        statuses,
        missing: tally
            .missing()
            .iter()
            .map(|(cid, i)| {
                format!("campaign {cid}, event {}: {}", events[*i as usize].event_id, events[*i as usize].json)
            })
            .collect(),
    };
    Ok((tally.result(events.len()), info))
}

fn copier_throughput(
    rt: &tokio::runtime::Runtime,
    bootstrap: &str,
    run: &str,
    phase: &str,
    records: &[(String, String)],
    partitions: i32,
) -> Result<Throughput> {
    let t = Topics::new(run, phase);
    create_topics(rt, bootstrap, &[&t.events], partitions, &[&t.triggers])?;
    produce_all(rt, bootstrap, &t.events, records)?;
    // The copies carry the events' ids: the identity of a copy is its event's index.
    let index: HashMap<String, u32> = records
        .iter()
        .enumerate()
        .filter_map(|(i, (_, v))| {
            Some((serde_json::from_str::<Value>(v).ok()?["event_id"].as_str()?.to_string(), i as u32))
        })
        .collect();
    let mut tally = Tally::new((0..records.len() as u32).map(|i| (0, i)).collect());
    let mut parse = |o: &Output, _: &mut Tally| -> Option<(i64, u32)> {
        let v: Value = serde_json::from_slice(&o.payload).ok()?;
        Some((0, *index.get(v["event_id"].as_str()?)?))
    };

    let mut copier = Copier::start(bootstrap, &t.group, &t.events, &t.triggers)?;
    let read_to = collect(bootstrap, &t.triggers, &mut tally, &mut parse, &mut |_| false)?;
    copier.stop()?;
    collect_rest(bootstrap, &t.triggers, read_to, &mut tally, &mut parse)?;
    let first = copier.first_output_us.load(Ordering::SeqCst);
    tally.t0_ms = (first > 0).then_some((first / 1000) as i64);
    Ok(tally.result(records.len()))
}

// =============================================================================================
// Phase 3: latency at a fixed rate
// =============================================================================================

struct LatencyRun {
    latency: Option<Latency>,
    sent: usize,
    received: usize,
}

/// Produces events at `--rate`/s for `--latency-seconds` s into `t.events` while a reader thread
/// takes the outputs from `t.triggers` and records receive time minus `data.sent_at_us` (a trigger
/// carries it in `event.data`, a copy in `data`). Every sample (send time, receive time, in
/// µs) is written to `dump`, for a look at the distribution over time.
fn measure_latency(
    rt: &tokio::runtime::Runtime,
    dump: &Path,
    bootstrap: &str,
    t: &Topics,
    args: &Args,
) -> Result<LatencyRun> {
    let (events_topic, out_topic, rate) = (t.events.as_str(), t.triggers.as_str(), args.rate);
    let total = rate as usize * args.latency_seconds as usize;
    let seed = 7;
    let samples = Arc::new(Mutex::new(Vec::<(u64, u64)>::with_capacity(total)));
    let done = Arc::new(AtomicBool::new(false));
    let warm = Arc::new(AtomicBool::new(false));
    let reader_thread = {
        let (c, samples, done, warm) = (reader(bootstrap)?, samples.clone(), done.clone(), warm.clone());
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(out_topic, 0, Offset::Beginning)?;
        c.assign(&tpl)?;
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                    let received = now_us();
                    let sent = serde_json::from_slice::<Value>(m.payload().unwrap_or_default())
                        .ok()
                        .and_then(|v| v["event"]["data"]["sent_at_us"].as_u64().or(v["data"]["sent_at_us"].as_u64()));
                    match sent {
                        Some(sent) => samples.lock().unwrap().push((sent, received)),
                        None => warm.store(true, Ordering::SeqCst), // the warm-up event's output
                    }
                }
            }
        })
    };

    // Warm-up, so that start-up costs are not counted as latency: the producer's first record
    // waits for metadata and a producer id, a consumer that was just assigned its partition still
    // looks up its start offset, rtcrm instantiates a filter on first use. One event without
    // `sent_at_us` goes through first; the measurement starts once its output has arrived.
    let producer = producer(bootstrap, 0)?;
    let mut warmup: Value = serde_json::from_str(&make_event(&mut Rng::new(seed ^ 1), true, None).json)?;
    warmup["event_id"] = json!("bench-warmup");
    let warmup = warmup.to_string();
    let delivery = producer
        .send_result(FutureRecord::to(events_topic).key("0").payload(&warmup))
        .map_err(|(e, _)| anyhow!("producing the warm-up event: {e}"))?;
    check_delivery(rt.block_on(delivery))?;
    let t0 = Instant::now();
    while !warm.load(Ordering::SeqCst) {
        check_interrupted()?;
        if t0.elapsed() > STALL_TIMEOUT {
            done.store(true, Ordering::SeqCst);
            bail!("the warm-up event's output did not arrive in {out_topic} within {STALL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    // Paced sends: event i goes out at start + i / rate (no catching up in bursts beyond that).
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let mut sent = 0;
    let result = (|| -> Result<()> {
        for i in 0..total {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if i % 100 == 0 {
                check_interrupted()?;
            }
            let e = make_event(&mut rng, true, Some(now_us()));
            let key = e.player_id.to_string();
            let mut record = FutureRecord::to(events_topic).key(key.as_str()).payload(e.json.as_str());
            // The delivery future is dropped: the producer's own thread still delivers it.
            loop {
                match producer.send_result(record) {
                    Ok(_) => break,
                    Err((_, back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            sent += 1;
        }
        producer.flush(Duration::from_secs(30))?;
        // Wait for the stragglers (or give up after a stall).
        let (mut last, mut since) = (0, Instant::now());
        loop {
            check_interrupted()?;
            let n = samples.lock().unwrap().len();
            if n >= sent {
                return Ok(());
            }
            if n != last {
                (last, since) = (n, Instant::now());
            } else if since.elapsed() > STALL_TIMEOUT {
                progress(format!("{out_topic}: {} of {sent} outputs never arrived", sent - n));
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })();
    done.store(true, Ordering::SeqCst);
    let _ = reader_thread.join();
    result?;
    let mut samples = std::mem::take(&mut *samples.lock().unwrap());
    samples.sort_unstable();
    let mut text = String::from("# sent_us received_us latency_us\n");
    for (s, r) in &samples {
        writeln!(text, "{s} {r} {}", r.saturating_sub(*s))?;
    }
    std::fs::write(dump, text).with_context(|| format!("writing {}", dump.display()))?;
    let latencies = samples.iter().map(|(s, r)| r.saturating_sub(*s)).collect();
    Ok(LatencyRun { received: samples.len(), latency: summarize(latencies), sent })
}

fn rtcrm_latency(
    rt: &tokio::runtime::Runtime,
    bootstrap: &str,
    bin: &Path,
    run: &str,
    work: &Path,
    args: &Args,
) -> Result<(LatencyRun, Rtcrm, Vec<String>)> {
    let t = Topics::new(run, "lat");
    create_topics(rt, bootstrap, &[&t.events, &t.triggers], 1, &[])?;
    let campaign = json!({
        "campaign_id": 1, "enabled": true, "game": "foe", "event_name": "fight",
        "start_date": WINDOW.0, "end_date": WINDOW.1,
        "filter": "function(event) { return true }",
    });
    produce_all(rt, bootstrap, &t.campaigns, &[("1".into(), campaign.to_string())])?;
    let mut proc = Rtcrm::start(bin, bootstrap, &t, work.join("rtcrm-latency.log"), &[])?;
    let ready = proc.wait_ready()?;
    progress(format!("rtcrm latency: ready in {ready:.2?}; {} events/s for {} s", args.rate, args.latency_seconds));
    let dump = work.join("latency-rtcrm.txt");
    let r = measure_latency(rt, &dump, bootstrap, &t, args)?;
    let errors = evaluation_errors(&proc.metrics());
    proc.stop()?;
    Ok((r, proc, errors))
}

fn copier_latency(
    rt: &tokio::runtime::Runtime,
    bootstrap: &str,
    run: &str,
    work: &Path,
    args: &Args,
) -> Result<LatencyRun> {
    let t = Topics::new(run, "lat-copier");
    create_topics(rt, bootstrap, &[&t.events, &t.triggers], 1, &[])?;
    let mut copier = Copier::start(bootstrap, &t.group, &t.events, &t.triggers)?;
    copier.wait_ready()?;
    progress(format!("copier latency: {} events/s for {} s", args.rate, args.latency_seconds));
    let dump = work.join("latency-copier.txt");
    let r = measure_latency(rt, &dump, bootstrap, &t, args)?;
    copier.stop()?;
    Ok(r)
}

/// Writes back the page cache (`sync`) before a latency run. The throughput runs leave some
/// hundred MB of topic data dirty, which the kernel writes back about 30 s later, in the middle
/// of the latency runs, where it stalls the broker's appends for hundreds of ms; without this,
/// whichever latency run comes first pays for the throughput runs.
fn settle() -> Result<()> {
    check_interrupted()?;
    let t0 = Instant::now();
    let status = Command::new("sync").status().context("running sync")?;
    progress(format!("sync (page-cache write-back before a latency run): {status} in {:.2?}", t0.elapsed()));
    Ok(())
}

// =============================================================================================
// Main
// =============================================================================================

fn main() {
    let started = Instant::now();
    let args = <Args as clap::Parser>::parse();
    let result = bench(&args, started);
    if let Err(e) = result {
        eprintln!("e2e_bench: error: {e:#}");
        std::process::exit(if INTERRUPTED.load(Ordering::SeqCst) { 130 } else { 1 });
    }
}


/// The medians of one configuration's runs.
struct Row {
    label: String,
    events_per_s: f64,
    outputs_per_s: f64,
    cpu_us_per_event: f64,
    /// Missing / duplicated / unexpected outputs, summed over the runs.
    missing: usize,
    duplicates: usize,
    unexpected: usize,
    notes: Vec<String>,
}

/// The original system's campaign 4711 (its filter, window and pair).
fn original_campaign() -> Campaign {
    let mut c = make_campaign(0);
    let mut v: Value = serde_json::from_str(&c.json).expect("campaign JSON");
    v["campaign_id"] = json!(4711);
    c.id = 4711;
    c.json = v.to_string();
    c
}

#[allow(clippy::too_many_arguments)]
fn throughput_row(
    rt: &tokio::runtime::Runtime,
    bootstrap: &str,
    bin: &Path,
    run: &str,
    work: &Path,
    events: &[Event],
    records: &[(String, String)],
    campaigns: &[Campaign],
    label: &str,
    partitions: i32,
    delivery: &str,
    runs: usize,
) -> Result<Row> {
    let mut row = Row { label: label.into(), events_per_s: 0.0, outputs_per_s: 0.0, cpu_us_per_event: 0.0, missing: 0, duplicates: 0, unexpected: 0, notes: vec![] };
    let (mut eps, mut ops, mut cpu) = (vec![], vec![], vec![]);
    for r in 0..runs {
        let slug: String = label.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        let config = Config { phase: format!("{slug}-{r}"), partitions, delivery };
        let (tput, info) = rtcrm_throughput(rt, bootstrap, bin, run, work, events, records, campaigns, &config)?;
        progress(format!("{label}, run {}: {:.0} events/s, {:.1} µs CPU per event", r + 1, tput.events_per_s, info.cpu.as_secs_f64() * 1e6 / events.len() as f64));
        eps.push(tput.events_per_s);
        ops.push(tput.outputs_per_s);
        cpu.push(info.cpu.as_secs_f64() * 1e6 / events.len() as f64);
        row.missing += tput.missing;
        row.duplicates += tput.duplicates;
        row.unexpected += tput.unexpected + tput.malformed;
        if !info.exit.success() || !info.metrics_errors.is_empty() || !info.problems.is_empty() || !info.missing.is_empty() {
            row.notes.push(format!(
                "{}: exit {}, ready in {:.2?}, /metrics events {} triggers {}, statuses {:?}, evaluation errors {:?}, \
                 {} WARN/ERROR lines (log {}), missing e.g. {:?}; command: {}",
                config.phase,
                info.exit,
                info.ready,
                info.metrics_events,
                info.metrics_triggers,
                info.statuses,
                info.metrics_errors,
                info.problems.len(),
                info.log.display(),
                info.missing.first(),
                info.command
            ));
        }
    }
    row.events_per_s = median(eps);
    row.outputs_per_s = median(ops);
    row.cpu_us_per_event = median(cpu);
    Ok(row)
}

fn copier_row(rt: &tokio::runtime::Runtime, bootstrap: &str, run: &str, records: &[(String, String)], partitions: i32, runs: usize) -> Result<Row> {
    let (mut eps, mut missing, mut dups) = (vec![], 0, 0);
    for r in 0..runs {
        let t = copier_throughput(rt, bootstrap, run, &format!("copier-p{partitions}-{r}"), records, partitions)?;
        progress(format!("copier, {partitions} partition(s), run {}: {:.0} events/s", r + 1, t.events_per_s));
        eps.push(t.events_per_s);
        missing += t.missing;
        dups += t.duplicates;
    }
    let e = median(eps);
    Ok(Row { label: format!("copier (baseline), {partitions} partition(s)"), events_per_s: e, outputs_per_s: e, cpu_us_per_event: f64::NAN, missing, duplicates: dups, unexpected: 0, notes: vec![] })
}

/// What the 10,000-campaign run measured.
struct ManyCampaigns {
    campaigns: usize,
    per_event: usize,
    ready_s: f64,
    events: usize,
    events_per_s: f64,
    rss_mib: f64,
    pss_mib: f64,
    triggers: f64,
    expected: usize,
    instances: f64,
}

/// 10,000 campaigns over 100 (game, event_name) pairs (100 per pair), pre-loaded; then events
/// spread over every pair. Measures start → /readyz, events/s with 100 campaigns evaluated per
/// event, and the memory held once every campaign has been evaluated.
fn many_campaigns(rt: &tokio::runtime::Runtime, bootstrap: &str, bin: &Path, run: &str, work: &Path, n_events: usize) -> Result<ManyCampaigns> {
    const CAMPAIGNS: usize = 10_000;
    const PAIRS: usize = 100;
    let t = Topics::new(run, "many");
    create_topics(rt, bootstrap, &[&t.events], 1, &[&t.triggers])?;
    let pair = |i: usize| (format!("game{}", i % 10), format!("event{}", (i / 10) % 10));
    let campaigns: Vec<(String, String)> = (0..CAMPAIGNS)
        .map(|i| {
            let (game, name) = pair(i % PAIRS);
            let c = json!({"campaign_id": 100_000 + i, "enabled": true, "game": game, "event_name": name,
                           "filter": format!("e => e.data.score > {}", 990 + i % 10)});
            ((100_000 + i).to_string(), c.to_string())
        })
        .collect();
    progress(format!("{CAMPAIGNS} campaigns over {PAIRS} pairs: producing them"));
    produce_all(rt, bootstrap, &t.campaigns, &campaigns)?;
    let mut rng = Rng::new(10_000);
    let mut expected = 0usize;
    let records: Vec<(String, String)> = (0..n_events)
        .map(|k| {
            // Every pair in turn first (so that every campaign is evaluated), then at random.
            let p = if k < PAIRS { k } else { rng.below(PAIRS as u64) as usize };
            let (game, name) = pair(p);
            let score = rng.range(0, 1000);
            // Campaign i of pair p matches when score > 990 + i % 10.
            expected += (0..CAMPAIGNS / PAIRS).filter(|j| score > 990 + ((p + PAIRS * j) % 10) as i64).count();
            let player = rng.range(1, 1_000_000);
            let e = json!({"event_id": format!("many-{k:06}"), "game": game, "event_name": name, "player_id": player,
                           "created_at": "2023-11-20T11:00:00.00Z", "data": {"score": score}});
            (player.to_string(), e.to_string())
        })
        .collect();
    produce_all(rt, bootstrap, &t.events, &records)?;
    let mut proc = Rtcrm::start(bin, bootstrap, &t, work.join("rtcrm-many.log"), &[])?;
    let ready = proc.wait_ready()?;
    progress(format!("{CAMPAIGNS} campaigns: ready in {ready:.2?}; {n_events} events"));
    let t0 = Instant::now();
    loop {
        check_interrupted()?;
        let m = proc.metrics();
        if metric_sum(&m, "rtcrm_events_total") >= n_events as f64 && metric_sum(&m, "rtcrm_in_flight_events") == 0.0 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("the 10,000-campaign run did not finish within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let seconds = t0.elapsed().as_secs_f64();
    let (rss, pss) = proc.memory_mib();
    let m = proc.metrics();
    proc.stop()?;
    Ok(ManyCampaigns {
        campaigns: CAMPAIGNS,
        per_event: CAMPAIGNS / PAIRS,
        ready_s: ready.as_secs_f64(),
        events: n_events,
        events_per_s: n_events as f64 / seconds,
        rss_mib: rss,
        pss_mib: pss,
        triggers: metric_sum(&m, "rtcrm_triggers_total"),
        expected,
        instances: metric_sum(&m, "rtcrm_filter_instances"),
    })
}

/// Restart → first trigger: an instance with a stable `--instance-id` (static membership) is
/// SIGKILLed and started again; the time from the new process's start to the first trigger of
/// an event produced while it was down (median of `runs`).
fn restart_to_first_trigger(rt: &tokio::runtime::Runtime, bootstrap: &str, bin: &Path, run: &str, work: &Path, runs: usize) -> Result<f64> {
    let t = Topics::new(run, "restart");
    create_topics(rt, bootstrap, &[&t.events], 4, &[&t.triggers])?;
    produce_all(rt, bootstrap, &t.campaigns, &[("4711".into(), original_campaign().json)])?;
    let extra = ["--instance-id".to_string(), format!("bench-restart-{run}")];
    let loss = |id: String| {
        let mut rng = Rng::new(7);
        let mut e = make_event(&mut rng, true, None);
        let mut v: Value = serde_json::from_str(&e.json).expect("event JSON");
        v["event_id"] = json!(id);
        v["data"]["result"] = json!("loss");
        e.json = v.to_string();
        (e.player_id.to_string(), e.json)
    };
    let wm = reader(bootstrap)?;
    let mut proc = Rtcrm::start(bin, bootstrap, &t, work.join("rtcrm-restart-0.log"), &extra)?;
    proc.wait_ready()?;
    produce_all(rt, bootstrap, &t.events, &[loss("warm".into())])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while high_watermark(&wm, &t.triggers)? < 1 {
        check_interrupted()?;
        if Instant::now() > deadline {
            bail!("no trigger from the first instance within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut times = vec![];
    for r in 0..runs {
        let _ = Command::new("kill").args(["-KILL", &proc.child.id().to_string()]).status();
        let _ = proc.child.wait();
        proc.exit = Some(proc.child.wait()?);
        let before = high_watermark(&wm, &t.triggers)?;
        // Events of every partition, produced while the instance is down.
        let downtime: Vec<(String, String)> = (0..8).map(|k| loss(format!("down-{r}-{k}"))).collect();
        produce_all(rt, bootstrap, &t.events, &downtime)?;
        let started = Instant::now();
        proc = Rtcrm::start(bin, bootstrap, &t, work.join(format!("rtcrm-restart-{}.log", r + 1)), &extra)?;
        loop {
            check_interrupted()?;
            if high_watermark(&wm, &t.triggers)? > before {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("no trigger within 60 s of a restart");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let s = started.elapsed().as_secs_f64();
        progress(format!("restart {}: first trigger {s:.2} s after the process started", r + 1));
        times.push(s);
        std::thread::sleep(Duration::from_millis(500));
    }
    proc.stop()?;
    Ok(median(times))
}

fn bench(args: &Args, started: Instant) -> Result<()> {
    let rtcrm = args.rtcrm.clone().unwrap_or_else(|| target_dir().join("release/rtcrm"));
    progress("starting");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    // Ctrl-C or SIGTERM: every wait loop bails out, and the guards stop rtcrm and the broker.
    rt.spawn(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("e2e_bench: interrupted, cleaning up");
        INTERRUPTED.store(true, Ordering::SeqCst);
    });
    if !rtcrm.is_file() {
        bail!(
            "{} is missing: build it with cargo build --release -p rtcrm (or pass --rtcrm PATH)",
            rtcrm.display()
        );
    }
    let run = format!("{}-{}", SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(), std::process::id());
    let work = target_dir().join("e2e-bench").join(&run);
    std::fs::create_dir_all(&work)?;
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    // The broker (ours, or the given one). Declared first, so it is dropped last.
    let mut broker: Option<Broker> = None;
    let bootstrap = match &args.bootstrap {
        Some(b) => b.clone(),
        None => {
            progress("starting a Kafka broker (scripts/kafka/broker.sh)");
            broker.insert(Broker::start(&work.join("broker"))?).addr.clone()
        }
    };
    progress(format!("broker at {bootstrap}; work files in {}", work.display()));

    // The workload, the same bytes for rtcrm and the copier.
    let mut rng = Rng::new(42);
    let n_events = args.events.unwrap_or(if args.backtest { 1_000_000 } else { 200_000 });
    let events: Vec<Event> = (0..n_events).map(|_| make_event(&mut rng, false, None)).collect();
    let records: Vec<(String, String)> = events.iter().map(|e| (e.player_id.to_string(), e.json.clone())).collect();
    let ten: Vec<Campaign> = (0..args.campaigns as usize).map(make_campaign).collect();
    let original = vec![original_campaign()];

    if args.backtest {
        return backtest_bench(started, &rt, &bootstrap, &rtcrm, &run, &work, &events, &records, args.runs);
    }

    // Warm-up (not reported): the broker's JVM compiles its produce and fetch paths.
    let warm = &records[..records.len().min(20_000)];
    progress(format!("warm-up: copying {} events", warm.len()));
    copier_throughput(&rt, &bootstrap, &run, "warmup", warm, 1)?;

    let wants = |phase: &str| args.only.is_empty() || args.only.iter().any(|o| o == phase);
    let mut rows: Vec<(Row, f64)> = Vec::new();
    let mut copier_by_partitions: HashMap<i32, f64> = HashMap::new();
    let mut alo_by_config: HashMap<String, f64> = HashMap::new();
    if wants("throughput") {
        for partitions in [1, 4] {
            let copier = copier_row(&rt, &bootstrap, &run, &records, partitions, args.runs)?;
            copier_by_partitions.insert(partitions, copier.events_per_s);
            rows.push((copier, 1.0));
            for (name, campaigns) in [("campaign 4711", &original), (&*format!("{} campaigns", ten.len()), &ten)] {
                for delivery in ["at-least-once", "exactly-once"] {
                    let label = format!("rtcrm, {name}, {partitions} partition(s), {delivery}");
                    let row = throughput_row(&rt, &bootstrap, &rtcrm, &run, &work, &events, &records, campaigns, &label, partitions, delivery, args.runs)?;
                    let ratio = row.events_per_s / copier_by_partitions[&partitions];
                    if delivery == "at-least-once" {
                        alo_by_config.insert(format!("{name}-{partitions}"), row.events_per_s);
                    }
                    rows.push((row, ratio));
                }
            }
        }
    }
    let many = if wants("many") { Some(many_campaigns(&rt, &bootstrap, &rtcrm, &run, &work, args.many_events)?) } else { None };
    let restart = if wants("restart") { Some(restart_to_first_trigger(&rt, &bootstrap, &rtcrm, &run, &work, args.runs)?) } else { None };
    let latency = if wants("latency") {
        settle()?;
        let (rtcrm_lat, lat_proc, _) = rtcrm_latency(&rt, &bootstrap, &rtcrm, &run, &work, args)?;
        drop(lat_proc);
        settle()?;
        let base_lat = copier_latency(&rt, &bootstrap, &run, &work, args)?;
        Some((rtcrm_lat, base_lat))
    } else {
        None
    };

    // The report.
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut out = String::new();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    writeln!(out, "## rtcrm end-to-end benchmark\n")?;
    writeln!(
        out,
        "{} events per throughput run, medians of {} runs; {} cores; load average before {} / after {}\n",
        n_events,
        args.runs,
        cores,
        load_before.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        load_after.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )?;
    if !rows.is_empty() {
        writeln!(out, "| configuration | events/s | outputs/s | × copier | × at-least-once | CPU µs/event | missing / dup / unexpected |")?;
        writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")?;
        for (row, ratio) in &rows {
            let vs_alo = if row.label.ends_with("exactly-once") {
                let key = alo_by_config.keys().find(|k| {
                    let (name, p) = k.rsplit_once('-').unwrap();
                    row.label.contains(&format!("{name}, {p} partition"))
                });
                key.map_or("—".into(), |k| format!("{:.2}", row.events_per_s / alo_by_config[k]))
            } else {
                "—".into()
            };
            let cpu = if row.cpu_us_per_event.is_finite() { format!("{:.1}", row.cpu_us_per_event) } else { "—".into() };
            writeln!(
                out,
                "| {} | {:.0} | {:.0} | {:.2} | {} | {} | {} / {} / {} |",
                row.label, row.events_per_s, row.outputs_per_s, ratio, vs_alo, cpu, row.missing, row.duplicates, row.unexpected
            )?;
        }
        writeln!(out)?;
        for (row, _) in &rows {
            for note in &row.notes {
                writeln!(out, "- {}: {note}", row.label)?;
            }
        }
    }
    if let Some(m) = &many {
        writeln!(out, "| {} campaigns over 100 (game, event_name) pairs | value |", m.campaigns)?;
        writeln!(out, "| --- | ---: |")?;
        writeln!(out, "| start → /readyz 200, s | {:.2} |", m.ready_s)?;
        writeln!(out, "| events/s with {} campaigns per event ({} events) | {:.0} |", m.per_event, m.events, m.events_per_s)?;
        writeln!(out, "| RSS after every campaign was evaluated, MiB | {:.0} |", m.rss_mib)?;
        writeln!(out, "| PSS, MiB | {:.0} |", m.pss_mib)?;
        writeln!(out, "| filter instances alive | {:.0} |", m.instances)?;
        writeln!(out, "| triggers / expected | {:.0} / {} |", m.triggers, m.expected)?;
        writeln!(out)?;
    }
    if let Some(r) = restart {
        writeln!(out, "restart → first trigger (static membership, SIGKILL then start), median: {r:.2} s\n")?;
    }
    if let Some((rtcrm_lat, base_lat)) = &latency {
        let ms = |l: &Option<Latency>, f: fn(&Latency) -> u64| l.as_ref().map(|l| f(l) as f64 / 1000.0);
        writeln!(out, "| latency at {} events/s for {} s | rtcrm | copier |", args.rate, args.latency_seconds)?;
        writeln!(out, "| --- | ---: | ---: |")?;
        for (name, f) in [
            ("p50, ms", (|l: &Latency| l.p50_us) as fn(&Latency) -> u64),
            ("p99, ms", |l: &Latency| l.p99_us),
            ("max, ms", |l: &Latency| l.max_us),
        ] {
            let show = |x: Option<f64>| x.map_or("—".into(), |x| format!("{x:.2}"));
            writeln!(out, "| {name} | {} | {} |", show(ms(&rtcrm_lat.latency, f)), show(ms(&base_lat.latency, f)))?;
        }
        writeln!(out, "| received / sent | {} / {} | {} / {} |", rtcrm_lat.received, rtcrm_lat.sent, base_lat.received, base_lat.sent)?;
        writeln!(out)?;
    }
    writeln!(out, "command: {}", shell_line(std::env::args()))?;
    writeln!(out, "wall time: {:.1} s", started.elapsed().as_secs_f64())?;
    print!("{out}");
    std::io::stdout().flush()?;
    Ok(())
}

// =============================================================================================
// Backtest mode
// =============================================================================================

/// `rtcrm campaign backtest` against `rtcrm run` on the same events and the same campaign, in
/// the same run, `runs` times (figures are medians): `rtcrm run`'s throughput is measured as in
/// phase 1 (first trigger built to the last one acknowledged); the backtest then reads the same
/// topic from its start and reports its own events/s (first record read to last event decided;
/// its process start-up, the sandbox and the offset lookups excluded, as `rtcrm run`'s start-up
/// is). CPU per event: `rtcrm run`'s from ready to the last trigger, the backtest's whole process
/// (both from /proc). Every backtest's counts must equal the expected triggers.
#[allow(clippy::too_many_arguments)]
fn backtest_bench(
    started: Instant,
    rt: &tokio::runtime::Runtime,
    bootstrap: &str,
    bin: &Path,
    run: &str,
    work: &Path,
    events: &[Event],
    records: &[(String, String)],
    runs: usize,
) -> Result<()> {
    let campaign = original_campaign();
    let n = events.len() as f64;
    let expected = events.iter().filter(|e| campaign.matches(e)).count() as u64;
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let warm = &records[..records.len().min(20_000)];
    progress(format!("warm-up: copying {} events", warm.len()));
    copier_throughput(rt, bootstrap, run, "warmup", warm, 1)?;
    let file = work.join("campaign.json");
    std::fs::write(&file, &campaign.json)?;
    // The same campaign with per-player controls (spec §12): the backtest's in-memory state.
    let controlled_file = work.join("campaign-controls.json");
    let mut controlled: Value = serde_json::from_str(&campaign.json)?;
    controlled["cooldown"] = json!("1h");
    controlled["count"] = json!({"at_least": 3, "within": "10m"});
    std::fs::write(&controlled_file, controlled.to_string())?;
    let mut bt_controls_rate = vec![];

    let (mut run_rate, mut run_cpu, mut bt_rate, mut bt_cpu, mut bt_whole) = (vec![], vec![], vec![], vec![], vec![]);
    let mut notes = Vec::new();
    let mut commands = (String::new(), String::new());
    for r in 0..runs {
        let config = Config { phase: format!("backtest-run-{r}"), partitions: 1, delivery: "at-least-once" };
        let (tput, info) = rtcrm_throughput(rt, bootstrap, bin, run, work, events, records, std::slice::from_ref(&campaign), &config)?;
        let cpu = info.cpu.as_secs_f64() * 1e6 / n;
        progress(format!("run {}: rtcrm run {:.0} events/s, {cpu:.1} µs CPU per event", r + 1, tput.events_per_s));
        run_rate.push(tput.events_per_s);
        run_cpu.push(cpu);
        if tput.missing + tput.duplicates + tput.unexpected + tput.malformed > 0 || !info.metrics_errors.is_empty() || !info.exit.success() {
            notes.push(format!(
                "rtcrm run {}: {} missing, {} duplicated, {} unexpected, {} malformed triggers; exit {}; evaluation errors {:?}",
                r + 1, tput.missing, tput.duplicates, tput.unexpected, tput.malformed, info.exit, info.metrics_errors
            ));
        }
        commands.0 = info.command.clone();

        let b = backtest_once(bin, &file, bootstrap, &Topics::new(run, &config.phase).events)?;
        commands.1 = b.command.clone();
        let (read, triggers) = (b.report["events_read"].as_u64().unwrap_or(0), b.report["triggers"].as_u64().unwrap_or(0));
        if read != n as u64 || triggers != expected || b.report["errors_total"] != 0 {
            bail!("backtest {}: {read} events read (of {n}), {triggers} triggers (expected {expected}), errors {}", r + 1, b.report["errors"]);
        }
        let rate = b.report["events_per_second"].as_f64().unwrap_or(f64::NAN);
        let cpu = b.cpu.as_secs_f64() * 1e6 / n;
        progress(format!("run {}: backtest {rate:.0} events/s ({:.2} s with start-up), {cpu:.1} µs CPU per event", r + 1, b.wall));
        bt_rate.push(rate);
        bt_cpu.push(cpu);
        bt_whole.push(n / b.wall);

        let c = backtest_once(bin, &controlled_file, bootstrap, &Topics::new(run, &config.phase).events)?;
        let (read, matches, triggers) = (c.report["events_read"].as_u64().unwrap_or(0), c.report["filter_matches"].as_u64().unwrap_or(0), c.report["triggers"].as_u64().unwrap_or(0));
        if read != n as u64 || matches != expected || triggers > expected || c.report["errors_total"] != 0 {
            bail!("backtest with controls {}: {read} events read (of {n}), {matches} matches (expected {expected}), {triggers} triggers, errors {}", r + 1, c.report["errors"]);
        }
        let rate = c.report["events_per_second"].as_f64().unwrap_or(f64::NAN);
        progress(format!("run {}: backtest with cooldown + count {rate:.0} events/s, {triggers} triggers after the controls", r + 1));
        bt_controls_rate.push(rate);
    }

    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = |l: &str| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let ratio = |a: f64, b: f64| if a.is_finite() && b.is_finite() && b > 0.0 { format!("{:.2}", a / b) } else { "—".into() };
    let each = |xs: &[f64]| xs.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    let mut out = String::new();
    writeln!(out, "## rtcrm campaign backtest against rtcrm run\n")?;
    writeln!(
        out,
        "{} events pre-loaded on a 1-partition topic; campaign {} (the original filter), {expected} triggers expected; \
         `--workers 2` each; medians of {runs} runs; {} cores; load average before {} / after {}\n",
        events.len(),
        campaign.id,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        load(&load_before),
        load(&load_after),
    )?;
    let (bt, rr) = (median(bt_rate.clone()), median(run_rate.clone()));
    writeln!(out, "| figure | backtest | rtcrm run | ratio |")?;
    writeln!(out, "| --- | ---: | ---: | ---: |")?;
    writeln!(out, "| events/s | {bt:.0} | {rr:.0} | {} |", ratio(bt, rr))?;
    writeln!(out, "| events/s, each run | {} | {} | |", each(&bt_rate), each(&run_rate))?;
    let whole = median(bt_whole);
    writeln!(out, "| events/s, whole backtest command (process start to report) | {whole:.0} | | {} |", ratio(whole, rr))?;
    let controls = median(bt_controls_rate);
    writeln!(out, "| events/s, backtest of the campaign with cooldown 1h + count 3 in 10m (ratio: against the plain backtest) | {controls:.0} | | {} |", ratio(controls, bt))?;
    let (bc, rc) = (median(bt_cpu), median(run_cpu));
    writeln!(out, "| CPU per event, µs | {bc:.1} | {rc:.1} | {} |", ratio(rc, bc))?;
    writeln!(out, "| triggers, every run | {expected} (as expected) | {expected} expected | |")?;
    writeln!(out)?;
    for note in &notes {
        writeln!(out, "- {note}")?;
    }
    writeln!(out, "command: {}", shell_line(std::env::args()))?;
    writeln!(out, "rtcrm run: {}", commands.0)?;
    writeln!(out, "backtest:  {}", commands.1)?;
    writeln!(out, "wall time: {:.1} s", started.elapsed().as_secs_f64())?;
    print!("{out}");
    std::io::stdout().flush()?;
    Ok(())
}

/// One `rtcrm campaign backtest --json` over `topic`: its report, wall time and CPU time.
struct BacktestOnce {
    report: Value,
    wall: f64,
    cpu: Duration,
    command: String,
}

fn backtest_once(bin: &Path, campaign: &Path, bootstrap: &str, topic: &str) -> Result<BacktestOnce> {
    let args: Vec<String> = [
        "campaign", "backtest", &campaign.to_string_lossy(), "--from", "1970-01-01T00:00:00Z", "--bootstrap-servers", bootstrap,
        "--event-topic", topic, "--workers", "2", "--json", "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let command = shell_line(std::iter::once(bin.to_string_lossy().into_owned()).chain(args.iter().cloned()));
    let t0 = Instant::now();
    let mut child = Command::new(bin)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running rtcrm campaign backtest")?;
    let (mut stdout, mut stderr) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut b);
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut b);
        b
    });
    // CPU time from /proc until the process exits (the last sample is at most 10 ms old).
    let mut cpu = Duration::ZERO;
    let status = loop {
        check_interrupted()?;
        if let Some(status) = child.try_wait()? {
            break status;
        }
        cpu = process_cpu(child.id()).max(cpu);
        std::thread::sleep(Duration::from_millis(10));
    };
    let wall = t0.elapsed().as_secs_f64();
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    if !status.success() {
        bail!("the backtest failed ({status}): {}", String::from_utf8_lossy(&err));
    }
    let report = serde_json::from_slice(&out).context("the backtest's --json report")?;
    Ok(BacktestOnce { report, wall, cpu, command })
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01.5Z"), Some(1_500));
        assert_eq!(parse_rfc3339("2023-11-20T11:00:00.00Z"), Some(1_700_478_000_000));
        assert_eq!(parse_rfc3339("2023-11-20T12:00:00.123456+01:00"), Some(1_700_478_000_123));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn percentiles() {
        let l = summarize((1..=1000).collect()).unwrap();
        assert_eq!((l.p50_us, l.p99_us, l.max_us), (500, 990, 1000));
        assert!(summarize(vec![]).is_none());
    }

    #[test]
    fn workload_is_deterministic_and_about_half_matches() {
        let campaigns: Vec<Campaign> = (0..10).map(make_campaign).collect();
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        let events: Vec<Event> = (0..2000).map(|_| make_event(&mut a, false, None)).collect();
        assert!(events.iter().all(|e| e.json == make_event(&mut b, false, None).json));
        let matching = events.iter().filter(|e| campaigns.iter().any(|c| c.matches(e))).count();
        assert!((800..1400).contains(&matching), "{matching} of 2000 events match");
    }
}
