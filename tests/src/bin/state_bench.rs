//! Benchmark of per-player state (spec §12, issue 12) through `rtcrm run` on a real Kafka broker:
//! a campaign with `cooldown` and `count` over N distinct players against the same campaign
//! without controls (same run), the restore of a partition holding N player states, and the disk
//! and memory those states take.
//!
//! ```text
//! cargo build --release -p rtcrm -p rtcrm-integration-tests --bin rtcrm --bin state_bench
//! target/release/state_bench [--events N] [--runs R] [--partitions P] [--probe K]
//!                            [--bootstrap ADDR] [--rtcrm PATH]
//! ```
//! (`scripts/bench-state.sh` does both.) One run prints one markdown table.
//!
//! The workload: N events (default 1,000,000), event `i` of player `i` (player ids 1..=N, so
//! every player is distinct), all `foe`/`fight` losses, keyed by player id and produced with
//! librdkafka's `partitioner=murmur2_random` (Kafka's Java partitioner), so each event is already
//! on its player's state partition: `rtcrm_repartitioned_events_total` must stay 0. Event times
//! (`created_at`) span 100 s, far inside the cooldown.
//!
//! Each round (`--runs`, default 3), sequentially:
//!
//! 1. **Without controls.** Fresh topics and group, `--state-dir` fresh; campaign 4712
//!    `e => e.data.result === 'loss'`: every event triggers (the campaign keeps no state).
//! 2. **With controls.** The same events on fresh topics, a fresh group, a fresh `--state-dir`;
//!    the same campaign plus `"cooldown": "1h", "count": {"at_least": 1, "within": "10m"}`: every
//!    event still triggers, and each writes its player's state (N states, N changelog records).
//!
//!    For both: events/s = N / (t1 - t0), `t0` the earliest trigger's `triggered_at` (start-up
//!    excluded), `t1` the broker's `LogAppendTime` of the trigger that completed the expected set
//!    (the triggers topic is created here with broker timestamps), as `e2e_bench` measures. Every
//!    trigger is checked: exactly one per event (key = player id, `trigger_id` = `4712:<event_id>`),
//!    none missing, none duplicated (also counting what arrives after rtcrm stopped), else the
//!    bench fails. RSS (`VmRSS`, `VmHWM`) when the last trigger is in; CPU from ready to then.
//!    After (2): `du` of the state directory (while running, and after the SIGTERM flush) and of
//!    the changelog topic's partition directories in the broker's log dir.
//! 3. **Restore.** (2)'s rtcrm is stopped with SIGTERM (exit 0; it was a dynamic group member, so
//!    it leaves the group). A new `rtcrm run` with another `--instance-id` and an empty
//!    `--state-dir` joins the same group: it restores the partition from the changelog topic.
//!    Measured from its spawn to its log line `per-player state restored` (`--log-format json`;
//!    `host/src/state/stores.rs`, which also gives the restore's own duration, records applied and
//!    states), by the log's timestamps. Then K probe events (`--probe`, default 1,000): K of
//!    restored players 1..=K, one minute after their first (inside the cooldown: no trigger, K
//!    suppressed), and K of new players N+1..=N+K (K triggers), checked exactly: the restored
//!    state is in force. RSS then. Then it is stopped (SIGTERM) and started again with the SAME
//!    instance id and state directory (a static member taking its partition back): the restore
//!    from the local checkpoint, measured the same way.
//!
//! A short unreported warm-up run (20,000 events, no controls) goes first so that the broker's
//! JIT does not penalise the first measured run, and each measured run starts after a `sync`
//! (the previous run's topic data written back, which would otherwise stall the broker in the
//! middle of the next). Work files (broker, rtcrm logs, state dirs) go to
//! `target/state-bench/<run>/`; the broker's topic data is deleted when it stops.
//!
//! Without `--bootstrap` the bench starts its own broker (`scripts/kafka/broker.sh`) and stops it
//! at the end, also on error or Ctrl-C (a detached watchdog stops it if this process is killed);
//! with `--bootstrap` the changelog's disk figure is not measured (its log dir is unknown).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rtcrm_integration_tests::{fmt_rfc3339, free_port, http_get, parse_rfc3339, target_dir, ts};
use rtcrm_integration_tests::bench::{Broker, shell_line, metric_sum, evaluation_errors, process_cpu, median, client_config, create_topics, check_delivery};
use serde_json::{json, Value};

/// Time without progress after which a wait for output gives up (and reports what is missing).
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed to an `rtcrm run` from spawn to `GET /readyz` = 200.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed to a restore, from spawn to the `per-player state restored` log line(s).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(600);
/// The campaign of every run.
const CAMPAIGN_ID: i64 = 4712;
/// Events of the warm-up run.
const WARMUP_EVENTS: u64 = 20_000;

// =============================================================================================
// Command line
// =============================================================================================

/// Per-player state through `rtcrm run` on a real broker: a campaign with `cooldown` and `count`
/// over N distinct players against the same campaign without controls, the restore of the
/// partition holding their N states, and their disk and memory.
#[derive(clap::Parser)]
#[command(name = "state_bench")]
struct Args {
    /// Events (= distinct players, = states) per throughput run.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    events: u64,
    /// Rounds of (1) without controls, (2) with controls, (3) restore; figures are medians.
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    runs: usize,
    /// Partitions of the events topic (and so of the changelog).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=64))]
    partitions: i32,
    /// Probe events after each restore: this many for restored players (must not trigger) and as
    /// many for new players (must trigger) [default: 1000, at most --events].
    #[arg(long)]
    probe: Option<u64>,
    /// `--workers` of every `rtcrm run`.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// An existing broker; without it, one is started (scripts/kafka/broker.sh) and stopped.
    #[arg(long)]
    bootstrap: Option<String>,
    /// The rtcrm binary [default: target/release/rtcrm].
    #[arg(long)]
    rtcrm: Option<PathBuf>,
}

// =============================================================================================
// Small utilities (copied from e2e_bench.rs)
// =============================================================================================

/// Set by SIGINT/SIGTERM: every wait loop checks it and bails out, so the guards clean up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Progress lines on stderr, with the time since start.
fn progress(msg: impl AsRef<str>) {
    static T0: OnceLock<Instant> = OnceLock::new();
    let t = T0.get_or_init(Instant::now).elapsed();
    eprintln!("[state_bench {:>6.1}s] {}", t.as_secs_f64(), msg.as_ref());
}




/// The 1-, 5- and 15-minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}



/// Writes back the page cache (`sync`) before a measured run, so that the previous run's dirty
/// topic data is not written back (stalling the broker's appends) in the middle of this one.
fn settle() -> Result<()> {
    check_interrupted()?;
    let t0 = Instant::now();
    let status = Command::new("sync").status().context("running sync")?;
    progress(format!("sync: {status} in {:.2?}; load average {}", t0.elapsed(), loadavg()));
    Ok(())
}

/// Disk usage of a directory tree, as `du -sk` counts it (allocated blocks), in bytes; and its
/// apparent size (`du -sb`).
fn du(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut blocks, mut apparent) = (0u64, 0u64);
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        blocks += meta.blocks() * 512;
        apparent += meta.len();
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        }
    }
    (blocks, apparent)
}

/// Disk usage (allocated blocks) of the fjall journal files (`*.jnl`) under `path`, in bytes.
fn journal_du(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut blocks = 0u64;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        } else if p.extension().is_some_and(|e| e == "jnl") {
            blocks += meta.blocks() * 512;
        }
    }
    blocks
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

// =============================================================================================
// Kafka helpers (after e2e_bench.rs)
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
        let p = format!("sbench-{run}-{phase}");
        Topics {
            events: format!("{p}-events"),
            campaigns: format!("{p}-campaigns"),
            triggers: format!("{p}-triggers"),
            status: format!("{p}-status"),
            dlq: format!("{p}-dlq"),
            group: format!("{p}-group"),
        }
    }

    /// The changelog topic rtcrm uses for this (non-default) group (README, "Per-player state").
    fn changelog(&self) -> String {
        format!("{}-rtcrm-state-changelog", self.group)
    }

    fn repartition(&self) -> String {
        format!("{}-rtcrm-events-by-player", self.group)
    }
}


/// An `acks=all` idempotent producer whose partitioner is Kafka's Java one (murmur2 of the key),
/// so that an event keyed by its player id lands on that player's state partition.
fn producer(bootstrap: &str) -> Result<FutureProducer> {
    client_config(bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "300000")
        .create()
        .context("creating a Kafka producer")
}


/// Produces (key, value) records and waits until all are acknowledged.
fn produce_all(rt: &tokio::runtime::Runtime, bootstrap: &str, topic: &str, records: &[(String, String)]) -> Result<()> {
    let producer = producer(bootstrap)?;
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
        .set("group.id", "state-bench-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .create()
        .context("creating a Kafka reader")
}

/// The sum of the high watermarks of `topic`'s `partitions` partitions.
fn high_watermark(c: &BaseConsumer, topic: &str, partitions: i32) -> Result<i64> {
    let mut sum = 0;
    for p in 0..partitions {
        sum += c.fetch_watermarks(topic, p, Duration::from_secs(10)).with_context(|| format!("watermarks of {topic} [{p}]"))?.1;
    }
    Ok(sum)
}

/// Calls `f` on every record of partition 0 of `topic` from offset `from` up to (excluding) `to`,
/// as it is read (a million triggers are not kept in memory).
fn read_each(bootstrap: &str, topic: &str, from: i64, to: i64, f: &mut dyn FnMut(&BorrowedMessage<'_>)) -> Result<()> {
    let c = reader(bootstrap)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(from))?;
    c.assign(&tpl)?;
    let mut next = from;
    let mut last_progress = Instant::now();
    while next < to {
        check_interrupted()?;
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                next = m.offset() + 1;
                last_progress = Instant::now();
                f(&m);
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {
                let position = c.position()?.find_partition(topic, 0).and_then(|e| e.offset().to_raw()).unwrap_or(next);
                if position >= to {
                    break;
                }
            }
            Some(Err(e)) => bail!("reading {topic}: {e}"),
            None if last_progress.elapsed() > STALL_TIMEOUT => bail!("reading {topic}: stuck at offset {next} of {to}"),
            None => {}
        }
    }
    Ok(())
}

// =============================================================================================
// Workload
// =============================================================================================

/// Event time of the first event; event `p` is `p / 10` ms later (1,000,000 events span 100 s).
fn base_ms() -> i64 {
    ts("2023-11-20T10:00:00Z")
}

/// The event of player `p` (README's tracking event, `data.result` = loss), keyed by player id.
fn event(p: u64, event_id: &str, at_ms: i64) -> (String, String) {
    let v = json!({"schema_version":"2023110110010101","event_id":event_id,"system_type":"game","system_name":"foe-backend",
        "game":"foe","market":"de","player_id":p,"event_type":"progress","event_name":"fight","event_scope":"user",
        "created_at":fmt_rfc3339(at_ms, 3, 0),"received_at":fmt_rfc3339(at_ms + 2000, 3, 0),"hostname":"foe-backend-1.ig.com",
        "context":{},"data":{"result":"loss"}});
    (p.to_string(), v.to_string())
}

fn event_id(p: u64) -> String {
    format!("sb-{p}")
}

/// Events 1..=n, one per player.
fn workload(n: u64) -> Vec<(String, String)> {
    (1..=n).map(|p| event(p, &event_id(p), base_ms() + (p / 10) as i64)).collect()
}

/// Campaign 4712, with or without spec §12's controls.
fn campaign(controls: bool) -> String {
    let mut c = json!({"campaign_id": CAMPAIGN_ID, "enabled": true, "game": "foe", "event_name": "fight",
        "name": "state bench", "filter": "e => e.data.result === 'loss'"});
    if controls {
        c["cooldown"] = json!("1h");
        c["count"] = json!({"at_least": 1, "within": "10m"});
    }
    c.to_string()
}

// =============================================================================================
// rtcrm processes (after e2e_bench.rs)
// =============================================================================================

/// A running `rtcrm run`, stopped with SIGTERM on drop.
struct Rtcrm {
    child: Child,
    port: u16,
    log: PathBuf,
    command: String,
    started: Instant,
    /// Wall clock at spawn, µs since the epoch (to compare with the log's timestamps).
    started_wall_us: i64,
    exit: Option<ExitStatus>,
}

impl Rtcrm {
    fn start(bin: &Path, bootstrap: &str, t: &Topics, workers: usize, state_dir: &Path, log: PathBuf, extra: &[String]) -> Result<Rtcrm> {
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
            &workers.to_string(),
            "--state-dir",
            &state_dir.to_string_lossy(),
            "--delivery",
            "at-least-once",
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
        let started_wall_us = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as i64;
        let started = Instant::now();
        let child = Command::new(bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let command = shell_line(std::iter::once(bin.to_string_lossy().into_owned()).chain(args));
        Ok(Rtcrm { child, port, log, command, started, started_wall_us, exit: None })
    }

    /// Waits for `GET /readyz` = 200; returns the time from spawn.
    fn wait_ready(&mut self) -> Result<Duration> {
        loop {
            check_interrupted()?;
            self.check_alive("before it was ready")?;
            if matches!(http_get(&format!("127.0.0.1:{}", self.port), "/readyz"), Ok((200, _))) {
                return Ok(self.started.elapsed());
            }
            if self.started.elapsed() > READY_TIMEOUT {
                bail!("rtcrm not ready after {READY_TIMEOUT:?}; log: {}\n{}", self.log.display(), self.log_tail(20));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn check_alive(&mut self, when: &str) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            self.exit = Some(status);
            bail!("rtcrm exited {when} ({status}); log: {}\n{}", self.log.display(), self.log_tail(20));
        }
        Ok(())
    }

    fn metrics(&self) -> String {
        http_get(&format!("127.0.0.1:{}", self.port), "/metrics").map(|(_, body)| body).unwrap_or_default()
    }

    fn cpu(&self) -> Duration {
        process_cpu(self.child.id())
    }

    /// Resident memory now (VmRSS) and at its peak (VmHWM), in MiB.
    fn memory_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let read = |key: &str| -> f64 {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map_or(f64::NAN, |kb| kb / 1024.0)
        };
        (read("VmRSS:"), read("VmHWM:"))
    }

    /// SIGTERM, then up to 60 s for a clean exit (SIGKILL after that).
    fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.exit {
            return Ok(s);
        }
        if self.child.try_wait()?.is_none() {
            let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while self.child.try_wait()?.is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.child.try_wait()?.is_none() {
                progress(format!("rtcrm (pid {}) ignored SIGTERM for 60 s: SIGKILL", self.child.id()));
                let _ = self.child.kill();
            }
        }
        let status = self.child.wait()?;
        self.exit = Some(status);
        Ok(status)
    }

    /// SIGTERM; fails unless rtcrm exits 0.
    fn stop_clean(&mut self) -> Result<()> {
        let status = self.stop()?;
        if !status.success() {
            bail!("rtcrm exited with {status} after SIGTERM (log {}):\n{}", self.log.display(), self.log_tail(20));
        }
        Ok(())
    }

    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// WARN and ERROR lines of the log (JSON format), for the report.
    fn problems(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| match serde_json::from_str::<Value>(l) {
                Ok(v) => matches!(v["level"].as_str(), Some("WARN" | "ERROR")),
                Err(_) => !l.trim().is_empty(), // not JSON: a panic message or the like
            })
            .map(String::from)
            .collect()
    }
}

impl Drop for Rtcrm {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Reads a JSON log as it grows.
struct LogWatch {
    file: File,
    partial: String,
}

impl LogWatch {
    fn new(path: &Path) -> Result<LogWatch> {
        let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        file.seek(SeekFrom::Start(0))?;
        Ok(LogWatch { file, partial: String::new() })
    }

    /// The complete lines written since the last call, parsed (non-JSON lines are skipped).
    fn lines(&mut self) -> Result<Vec<Value>> {
        let mut buf = String::new();
        self.file.read_to_string(&mut buf)?;
        self.partial.push_str(&buf);
        let Some(end) = self.partial.rfind('\n') else { return Ok(vec![]) };
        let complete: String = self.partial.drain(..=end).collect();
        Ok(complete.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
    }
}

/// A log line's timestamp, µs since the epoch.
fn log_time_us(v: &Value) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str()?).ok().map(|t| t.timestamp_micros())
}

// =============================================================================================
// Triggers: exactly one per expected player
// =============================================================================================

/// Checks triggers against the expected players (`lo..=hi`), as they are read.
struct Tally {
    lo: u64,
    hi: u64,
    /// Seen count per expected player (index `p - lo`).
    seen: Vec<u32>,
    distinct: usize,
    duplicates: usize,
    /// Triggers of players outside the expected range, or of another campaign, or unreadable.
    unexpected: usize,
    /// Triggers whose key, `trigger_id` or event does not match its player.
    malformed: usize,
    /// The earliest `triggered_at`, ms.
    t0_ms: Option<i64>,
    /// Broker time of the last expected trigger to arrive (its first copy), ms.
    t1_ms: Option<i64>,
    examples: Vec<String>,
}

impl Tally {
    fn new(lo: u64, hi: u64) -> Tally {
        Tally {
            lo,
            hi,
            seen: vec![0; (hi - lo + 1) as usize],
            distinct: 0,
            duplicates: 0,
            unexpected: 0,
            malformed: 0,
            t0_ms: None,
            t1_ms: None,
            examples: vec![],
        }
    }

    fn expected(&self) -> usize {
        self.seen.len()
    }

    fn note(&mut self, what: String) {
        if self.examples.len() < 5 {
            self.examples.push(what);
        }
    }

    fn add(&mut self, m: &BorrowedMessage<'_>) {
        let broker_ms = m.timestamp().to_millis().unwrap_or(0);
        let payload = m.payload().unwrap_or_default();
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            self.unexpected += 1;
            self.note(format!("unreadable trigger at offset {}", m.offset()));
            return;
        };
        let player = v["event"]["player_id"].as_u64();
        let cid = v["campaign"]["campaign_id"].as_i64();
        let Some(p) = player.filter(|p| (self.lo..=self.hi).contains(p) && cid == Some(CAMPAIGN_ID)) else {
            self.unexpected += 1;
            self.note(format!("unexpected trigger at offset {}: campaign {cid:?}, player {player:?}", m.offset()));
            return;
        };
        if let Some(ms) = v["triggered_at"].as_str().and_then(parse_rfc3339) {
            self.t0_ms = Some(self.t0_ms.map_or(ms, |t| t.min(ms)));
        }
        let id = v["event"]["event_id"].as_str().unwrap_or_default().to_owned();
        let key_ok = m.key() == Some(p.to_string().as_bytes());
        if !key_ok || v["trigger_id"].as_str() != Some(&format!("{CAMPAIGN_ID}:{id}")) {
            self.malformed += 1;
            self.note(format!("malformed trigger at offset {}: key {:?}, trigger_id {}", m.offset(), m.key().map(String::from_utf8_lossy), v["trigger_id"]));
        }
        let n = &mut self.seen[(p - self.lo) as usize];
        *n += 1;
        if *n > 1 {
            self.duplicates += 1;
            self.note(format!("duplicate trigger of player {p} at offset {}", m.offset()));
        } else {
            self.distinct += 1;
            self.t1_ms = Some(self.t1_ms.map_or(broker_ms, |t| t.max(broker_ms)));
        }
    }

    fn missing(&self) -> usize {
        self.expected() - self.distinct
    }

    fn first_missing(&self) -> Option<u64> {
        self.seen.iter().position(|n| *n == 0).map(|i| self.lo + i as u64)
    }

    /// Fails the bench unless every expected trigger came exactly once and nothing else did.
    fn check(&self, what: &str) -> Result<()> {
        if self.missing() > 0 || self.duplicates > 0 || self.unexpected > 0 || self.malformed > 0 {
            bail!(
                "{what}: triggers wrong: {} of {} missing (first: player {:?}), {} duplicated, {} unexpected, {} malformed; e.g. {:?}",
                self.missing(),
                self.expected(),
                self.first_missing(),
                self.duplicates,
                self.unexpected,
                self.malformed,
                self.examples
            );
        }
        Ok(())
    }

    fn seconds(&self) -> f64 {
        match (self.t0_ms, self.t1_ms) {
            (Some(a), Some(b)) => ((b - a) as f64 / 1000.0).max(0.001),
            _ => f64::NAN,
        }
    }
}

/// Waits until `topic` (one partition) holds every expected trigger after offset `from` (or
/// nothing new arrives for [`STALL_TIMEOUT`], or for 2 s and `finished` says no more will come),
/// then reads them. Only the watermark is polled while rtcrm works, so the bench takes (almost)
/// no CPU from it. Returns the offset read to.
fn collect(bootstrap: &str, topic: &str, from: i64, tally: &mut Tally, finished: &mut dyn FnMut(i64) -> bool) -> Result<i64> {
    let wm = reader(bootstrap)?;
    let (mut read_to, mut target) = (from, from + tally.expected() as i64);
    let (mut last_high, mut last_change) = (-1i64, Instant::now());
    loop {
        check_interrupted()?;
        let high = high_watermark(&wm, topic, 1)?;
        if high != last_high {
            (last_high, last_change) = (high, Instant::now());
        }
        let quiet = last_change.elapsed();
        let stalled = quiet > STALL_TIMEOUT || (quiet > Duration::from_secs(2) && finished(high - from));
        if high >= target || (stalled && high > read_to) {
            read_each(bootstrap, topic, read_to, high, &mut |m| tally.add(m))?;
            read_to = high;
            // Duplicates take room in the topic: wait for as many more as are still missing.
            target = high + tally.missing() as i64;
        }
        if tally.missing() == 0 {
            return Ok(read_to);
        }
        if stalled {
            progress(format!("{topic}: nothing new for {quiet:.1?}; {} triggers missing", tally.missing()));
            return Ok(read_to);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads what arrived in `topic` after `from` (late duplicates), once rtcrm has stopped.
fn collect_rest(bootstrap: &str, topic: &str, from: i64, tally: &mut Tally) -> Result<()> {
    let high = high_watermark(&reader(bootstrap)?, topic, 1)?;
    read_each(bootstrap, topic, from, high, &mut |m| tally.add(m))
}

// =============================================================================================
// (1) and (2): throughput
// =============================================================================================

/// One throughput run's figures.
struct ThroughputRun {
    events_per_s: f64,
    cpu_us_per_event: f64,
    ready_s: f64,
    rss_mib: f64,
    hwm_mib: f64,
    state_entries: f64,
    state_bytes: f64,
    command: String,
    load: String,
}

/// What a stateful run leaves for the restore that follows it.
struct StatefulRun {
    topics: Topics,
    /// Triggers topic offset after the run's N triggers.
    triggers_end: i64,
    disk_running: (u64, u64),
    disk_stopped: (u64, u64),
    /// Of `disk_stopped`, the fjall journal files.
    journal_stopped: u64,
    changelog_disk: Option<(u64, u64)>,
    changelog_records: i64,
}

#[allow(clippy::too_many_arguments)]
fn throughput_run(
    rt: &tokio::runtime::Runtime,
    bootstrap: &str,
    broker: Option<&Broker>,
    bin: &Path,
    args: &Args,
    work: &Path,
    run: &str,
    phase: &str,
    records: &[(String, String)],
    controls: bool,
) -> Result<(ThroughputRun, StatefulRun)> {
    let n = records.len() as u64;
    let t = Topics::new(run, phase);
    create_topics(rt, bootstrap, &[&t.events], args.partitions, &[&t.triggers])?;
    progress(format!("{phase}: producing {n} events (one per player, murmur2 partitioner, {} partition(s))", args.partitions));
    produce_all(rt, bootstrap, &t.events, records)?;
    produce_all(rt, bootstrap, &t.campaigns, &[(CAMPAIGN_ID.to_string(), campaign(controls))])?;
    settle()?;
    let load = loadavg();
    let state_dir = work.join(format!("state-{phase}"));
    let mut proc = Rtcrm::start(bin, bootstrap, &t, args.workers, &state_dir, work.join(format!("rtcrm-{phase}.log")), &[])?;
    let ready = proc.wait_ready()?;
    let cpu_at_ready = proc.cpu();
    progress(format!("{phase}: rtcrm ready in {ready:.2?}; waiting for {n} triggers"));

    let mut tally = Tally::new(1, n);
    let mut finished = |got: i64| {
        let m = proc.metrics();
        metric_sum(&m, "rtcrm_events_total") >= n as f64 && metric_sum(&m, "rtcrm_triggers_total") <= got as f64
    };
    let read_to = collect(bootstrap, &t.triggers, 0, &mut tally, &mut finished)?;
    let cpu = proc.cpu().saturating_sub(cpu_at_ready);
    let (rss, hwm) = proc.memory_mib();
    let metrics = proc.metrics();
    let disk_running = du(&state_dir);
    proc.check_alive("during the run")?;
    proc.stop_clean()?;
    let disk_stopped = du(&state_dir);
    let journal_stopped = journal_du(&state_dir);
    // Triggers that arrived after the set was complete (duplicates from the shutdown, if any).
    collect_rest(bootstrap, &t.triggers, read_to, &mut tally)?;
    tally.check(&format!("{phase} (log {})", proc.log.display()))?;

    let repartitioned = metric_sum(&metrics, "rtcrm_repartitioned_events_total");
    if repartitioned != 0.0 {
        bail!("{phase}: rtcrm_repartitioned_events_total = {repartitioned}, expected 0 (events keyed by player id with murmur2)");
    }
    let errors = evaluation_errors(&metrics);
    if !errors.is_empty() {
        bail!("{phase}: evaluation errors: {errors:?}");
    }
    let problems = proc.problems();
    if !problems.is_empty() {
        progress(format!("{phase}: {} WARN/ERROR lines in {}, e.g. {}", problems.len(), proc.log.display(), problems[0]));
    }
    let eps = n as f64 / tally.seconds();
    let r = ThroughputRun {
        events_per_s: eps,
        cpu_us_per_event: cpu.as_secs_f64() * 1e6 / n as f64,
        ready_s: ready.as_secs_f64(),
        rss_mib: rss,
        hwm_mib: hwm,
        state_entries: metric_sum(&metrics, "rtcrm_state_entries"),
        state_bytes: metric_sum(&metrics, "rtcrm_state_bytes"),
        command: proc.command.clone(),
        load,
    };
    progress(format!(
        "{phase}: {eps:.0} events/s, {:.1} µs CPU per event, RSS {rss:.0} MiB (peak {hwm:.0}), {n} triggers exactly; \
         state entries {}, state dir {:.1} MiB running, {:.1} MiB stopped",
        r.cpu_us_per_event,
        r.state_entries,
        mib(disk_running.0),
        mib(disk_stopped.0)
    ));
    let wm = reader(bootstrap)?;
    let changelog_records = if controls { high_watermark(&wm, &t.changelog(), args.partitions)? } else { 0 };
    let changelog_disk = broker.filter(|_| controls).map(|b| {
        (0..args.partitions).map(|p| du(&b.log_dir().join(format!("{}-{p}", t.changelog())))).fold((0, 0), |a, d| (a.0 + d.0, a.1 + d.1))
    });
    if controls {
        if changelog_records < n as i64 {
            bail!("{phase}: the changelog {} holds {changelog_records} records, fewer than the {n} states", t.changelog());
        }
        // The repartition topic, if rtcrm created it, must be empty.
        if let Ok(forwarded) = high_watermark(&wm, &t.repartition(), args.partitions) {
            if forwarded != 0 {
                bail!("{phase}: {forwarded} events in {}", t.repartition());
            }
        }
    }
    Ok((r, StatefulRun { topics: t, triggers_end: read_to, disk_running, disk_stopped, journal_stopped, changelog_disk, changelog_records }))
}

// =============================================================================================
// (3): restore
// =============================================================================================

/// One restore, from the rtcrm log.
struct Restore {
    /// Spawn → the last partition's `per-player state restored` line (log timestamp).
    start_to_restored_s: f64,
    /// Spawn → `partitions assigned`.
    start_to_assigned_s: f64,
    /// Spawn → `per-player state store opened`.
    start_to_opened_s: f64,
    /// The restore's own duration (the longest partition's, as logged).
    restore_s: f64,
    /// Changelog records applied, all partitions.
    records: u64,
    /// States after the restore (the store's approximate count), all partitions.
    states: u64,
    rss_mib: f64,
    hwm_mib: f64,
    command: String,
}

/// Waits for every partition's `per-player state restored` line.
fn wait_restored(proc: &mut Rtcrm, partitions: i32) -> Result<Restore> {
    let mut watch = LogWatch::new(&proc.log)?;
    let started_wall_us = proc.started_wall_us;
    let rel = |us: i64| (us - started_wall_us) as f64 / 1e6;
    let (mut opened, mut assigned) = (f64::NAN, f64::NAN);
    let mut restored: BTreeMap<i64, (f64, f64, u64, u64)> = BTreeMap::new();
    loop {
        check_interrupted()?;
        for v in watch.lines()? {
            let at = log_time_us(&v).map_or(f64::NAN, rel);
            match v["message"].as_str().unwrap_or_default() {
                "per-player state store opened" if opened.is_nan() => opened = at,
                "partitions assigned" if assigned.is_nan() => assigned = at,
                "per-player state restored" => {
                    let secs = v["seconds"].as_str().and_then(|s| s.parse().ok()).or(v["seconds"].as_f64()).unwrap_or(f64::NAN);
                    let p = v["partition"].as_i64().unwrap_or(-1);
                    restored.insert(p, (at, secs, v["records"].as_u64().unwrap_or(0), v["states"].as_u64().unwrap_or(0)));
                }
                "restoring the per-player state failed" => bail!("restore failed: {v}"),
                _ => {}
            }
        }
        if restored.len() >= partitions as usize {
            break;
        }
        proc.check_alive("while restoring")?;
        if proc.started.elapsed() > RESTORE_TIMEOUT {
            bail!("no `per-player state restored` for every partition within {RESTORE_TIMEOUT:?} (log {})", proc.log.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (rss, hwm) = proc.memory_mib();
    Ok(Restore {
        start_to_restored_s: restored.values().map(|r| r.0).fold(f64::NAN, f64::max),
        start_to_assigned_s: assigned,
        start_to_opened_s: opened,
        restore_s: restored.values().map(|r| r.1).fold(f64::NAN, f64::max),
        records: restored.values().map(|r| r.2).sum(),
        states: restored.values().map(|r| r.3).sum(),
        rss_mib: rss,
        hwm_mib: hwm,
        command: proc.command.clone(),
    })
}

/// The figures of (3) after one stateful run.
struct RestoreRound {
    changelog: Restore,
    /// RSS after the probe events (restored instance).
    rss_after_probe_mib: f64,
    /// The restored instance's state dir after it stopped: all, and its fjall journal files.
    disk: (u64, u64),
    local: Restore,
}

#[allow(clippy::too_many_arguments)]
fn restore_round(rt: &tokio::runtime::Runtime, bootstrap: &str, bin: &Path, args: &Args, work: &Path, run: &str, round: usize, n: u64, s: &StatefulRun) -> Result<RestoreRound> {
    let t = &s.topics;
    let instance = format!("sbench-{run}-restore-{round}");
    let state_dir = work.join(format!("state-restore-{round}"));
    let extra = ["--instance-id".to_string(), instance.clone()];

    // (3a) A new instance, an empty state dir, the same group: restore from the changelog.
    settle()?;
    let mut proc = Rtcrm::start(bin, bootstrap, t, args.workers, &state_dir, work.join(format!("rtcrm-restore-{round}.log")), &extra)?;
    let changelog = wait_restored(&mut proc, args.partitions)?;
    progress(format!(
        "restore {round} from the changelog: start → restored {:.2} s (assigned at {:.2} s, restore itself {:.2} s), {} records, {} states, RSS {:.0} MiB",
        changelog.start_to_restored_s, changelog.start_to_assigned_s, changelog.restore_s, changelog.records, changelog.states, changelog.rss_mib
    ));
    if changelog.records < n {
        bail!("restore {round}: {} changelog records applied, fewer than the {n} states (log {})", changelog.records, proc.log.display());
    }
    proc.wait_ready()?;

    // Probe: the restored state is in force (cooldown: no trigger for restored players), and new
    // players trigger.
    let k = args.probe.unwrap_or(1000).min(n);
    if k > 0 {
        let mut probe: Vec<(String, String)> =
            (1..=k).map(|p| event(p, &format!("sb-probe-old-{p}"), base_ms() + (p / 10) as i64 + 60_000)).collect();
        probe.extend((n + 1..=n + k).map(|p| event(p, &format!("sb-probe-new-{p}"), base_ms() + 200_000)));
        produce_all(rt, bootstrap, &t.events, &probe)?;
        let mut tally = Tally::new(n + 1, n + k);
        let mut finished = |got: i64| {
            let m = proc.metrics();
            metric_sum(&m, "rtcrm_events_total") >= 2.0 * k as f64 && metric_sum(&m, "rtcrm_triggers_total") <= got as f64
        };
        let read_to = collect(bootstrap, &t.triggers, s.triggers_end, &mut tally, &mut finished)?;
        // Let a wrong trigger of a restored player (they come first) or a duplicate show up.
        let deadline = Instant::now() + Duration::from_secs(30);
        while metric_sum(&proc.metrics(), "rtcrm_events_total") < 2.0 * k as f64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(1));
        collect_rest(bootstrap, &t.triggers, read_to, &mut tally)?;
        tally.check(&format!("restore {round} probe (log {})", proc.log.display()))?;
        let m = proc.metrics();
        let suppressed = metric_sum(&m, "rtcrm_suppressed_total");
        if suppressed != k as f64 {
            bail!("restore {round} probe: rtcrm_suppressed_total = {suppressed}, expected {k} (the restored players' cooldowns)");
        }
        let repartitioned = metric_sum(&m, "rtcrm_repartitioned_events_total");
        if repartitioned != 0.0 {
            bail!("restore {round} probe: rtcrm_repartitioned_events_total = {repartitioned}, expected 0");
        }
        progress(format!("restore {round} probe: {k} restored players suppressed by their cooldown, {k} new players triggered"));
    }
    let (rss_after_probe_mib, _) = proc.memory_mib();
    proc.stop_clean()?;
    let disk = (du(&state_dir).0, journal_du(&state_dir));

    // (3b) The same instance id and state dir: the restore from the local checkpoint.
    settle()?;
    let mut proc = Rtcrm::start(bin, bootstrap, t, args.workers, &state_dir, work.join(format!("rtcrm-local-{round}.log")), &extra)?;
    let local = wait_restored(&mut proc, args.partitions)?;
    progress(format!(
        "restart {round} with its local state: start → restored {:.2} s (opened at {:.2} s, assigned at {:.2} s, restore itself {:.2} s), {} records, {} states, RSS {:.0} MiB",
        local.start_to_restored_s, local.start_to_opened_s, local.start_to_assigned_s, local.restore_s, local.records, local.states, local.rss_mib
    ));
    proc.wait_ready()?;
    proc.stop_clean()?;
    Ok(RestoreRound { changelog, rss_after_probe_mib, disk, local })
}

// =============================================================================================
// Main
// =============================================================================================

fn main() {
    let started = Instant::now();
    let args = <Args as clap::Parser>::parse();
    if let Err(e) = bench(&args, started) {
        eprintln!("state_bench: error: {e:#}");
        std::process::exit(if INTERRUPTED.load(Ordering::SeqCst) { 130 } else { 1 });
    }
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
        eprintln!("state_bench: interrupted, cleaning up");
        INTERRUPTED.store(true, Ordering::SeqCst);
    });
    if !rtcrm.is_file() {
        bail!("{} is missing: build it with cargo build --release -p rtcrm (or pass --rtcrm PATH)", rtcrm.display());
    }
    let run = format!("{}-{}", SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(), std::process::id());
    let work = target_dir().join("state-bench").join(&run);
    std::fs::create_dir_all(&work)?;
    let load_before = loadavg();

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

    let n = args.events;
    let records = workload(n);

    // Warm-up (not reported): the broker's JVM compiles its produce and fetch paths.
    let warm = &records[..records.len().min(WARMUP_EVENTS as usize)];
    throughput_run(&rt, &bootstrap, broker.as_ref(), &rtcrm, args, &work, &run, "warmup", warm, false)?;

    let (mut plain, mut stateful, mut restores, mut disks) = (vec![], vec![], vec![], vec![]);
    for r in 0..args.runs {
        let (p, _) = throughput_run(&rt, &bootstrap, broker.as_ref(), &rtcrm, args, &work, &run, &format!("plain-{r}"), &records, false)?;
        plain.push(p);
        let (s, kept) = throughput_run(&rt, &bootstrap, broker.as_ref(), &rtcrm, args, &work, &run, &format!("state-{r}"), &records, true)?;
        stateful.push(s);
        restores.push(restore_round(&rt, &bootstrap, &rtcrm, args, &work, &run, r, n, &kept)?);
        disks.push(kept);
    }

    // The report.
    let per_m = 1_000_000.0 / n as f64;
    let med = |xs: &[ThroughputRun], f: fn(&ThroughputRun) -> f64| median(xs.iter().map(f).collect());
    let each = |xs: &[f64], prec: usize| xs.iter().map(|x| format!("{x:.prec$}")).collect::<Vec<_>>().join(", ");
    let mut out = String::new();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    writeln!(out, "## rtcrm per-player state benchmark\n")?;
    writeln!(
        out,
        "{n} events = {n} distinct players per run, {} partition(s), `--workers {}`, at-least-once; medians of {} rounds; {cores} cores; \
         load average before {load_before} / after {}\n",
        args.partitions,
        args.workers,
        args.runs,
        loadavg()
    )?;
    let (eps_plain, eps_state) = (med(&plain, |r| r.events_per_s), med(&stateful, |r| r.events_per_s));
    writeln!(out, "| figure | without controls (1) | cooldown + count (2) | ratio (2)/(1) |")?;
    writeln!(out, "| --- | ---: | ---: | ---: |")?;
    writeln!(out, "| events/s (median) | {eps_plain:.0} | {eps_state:.0} | {:.2} |", eps_state / eps_plain)?;
    let eps_of = |xs: &[ThroughputRun]| each(&xs.iter().map(|r| r.events_per_s).collect::<Vec<_>>(), 0);
    writeln!(out, "| events/s, each run | {} | {} | |", eps_of(&plain), eps_of(&stateful))?;
    let (cpu_p, cpu_s) = (med(&plain, |r| r.cpu_us_per_event), med(&stateful, |r| r.cpu_us_per_event));
    writeln!(out, "| CPU per event, µs | {cpu_p:.1} | {cpu_s:.1} | {:.2} |", cpu_s / cpu_p)?;
    let (rss_p, rss_s) = (med(&plain, |r| r.rss_mib), med(&stateful, |r| r.rss_mib));
    writeln!(out, "| RSS after the last trigger, MiB | {rss_p:.0} | {rss_s:.0} | +{:.0} |", rss_s - rss_p)?;
    writeln!(out, "| peak RSS (VmHWM), MiB | {:.0} | {:.0} | |", med(&plain, |r| r.hwm_mib), med(&stateful, |r| r.hwm_mib))?;
    writeln!(out, "| start → /readyz, s | {:.2} | {:.2} | |", med(&plain, |r| r.ready_s), med(&stateful, |r| r.ready_s))?;
    writeln!(out, "| triggers, every run | {n} = expected, 0 missing / duplicated | {n} = expected, 0 missing / duplicated | |")?;
    writeln!(out, "| `rtcrm_state_entries` / `rtcrm_state_bytes` | {:.0} / {:.0} | {:.0} / {:.0} | |", med(&plain, |r| r.state_entries), med(&plain, |r| r.state_bytes), med(&stateful, |r| r.state_entries), med(&stateful, |r| r.state_bytes))?;
    writeln!(out, "| load average at each run's start | {} | {} | |", plain.iter().map(|r| r.load.as_str()).collect::<Vec<_>>().join("; "), stateful.iter().map(|r| r.load.as_str()).collect::<Vec<_>>().join("; "))?;
    writeln!(out)?;

    let rmed = |f: fn(&RestoreRound) -> f64| median(restores.iter().map(f).collect());
    let reach = |f: fn(&RestoreRound) -> f64| each(&restores.iter().map(f).collect::<Vec<_>>(), 2);
    writeln!(out, "| restore of {} partition(s) holding {n} player states | median | each run |", args.partitions)?;
    writeln!(out, "| --- | ---: | ---: |")?;
    writeln!(out, "| (3a) new instance, empty state dir, from the changelog: start → restored, s | {:.2} | {} |", rmed(|r| r.changelog.start_to_restored_s), reach(|r| r.changelog.start_to_restored_s))?;
    writeln!(out, "| … of which start → partition assigned, s | {:.2} | {} |", rmed(|r| r.changelog.start_to_assigned_s), reach(|r| r.changelog.start_to_assigned_s))?;
    writeln!(out, "| … the restore itself (logged), s | {:.2} | {} |", rmed(|r| r.changelog.restore_s), reach(|r| r.changelog.restore_s))?;
    writeln!(out, "| … changelog records applied / states after | {:.0} / {:.0} | |", rmed(|r| r.changelog.records as f64), rmed(|r| r.changelog.states as f64))?;
    writeln!(out, "| (3b) same instance, its local state: start → restored, s | {:.2} | {} |", rmed(|r| r.local.start_to_restored_s), reach(|r| r.local.start_to_restored_s))?;
    writeln!(out, "| … of which start → store opened, s | {:.2} | {} |", rmed(|r| r.local.start_to_opened_s), reach(|r| r.local.start_to_opened_s))?;
    writeln!(out, "| … start → partition assigned, s | {:.2} | {} |", rmed(|r| r.local.start_to_assigned_s), reach(|r| r.local.start_to_assigned_s))?;
    writeln!(out, "| … the restore itself (logged), s; records applied | {:.2}; {:.0} | {} |", rmed(|r| r.local.restore_s), rmed(|r| r.local.records as f64), reach(|r| r.local.restore_s))?;
    writeln!(out, "| probe after (3a): restored players inside their cooldown / new players | {} suppressed, 0 triggers / {} triggers | |", args.probe.unwrap_or(1000).min(n), args.probe.unwrap_or(1000).min(n))?;
    writeln!(out)?;

    let dmed = |f: fn(&StatefulRun) -> u64| median(disks.iter().map(|d| f(d) as f64).collect()) as u64;
    writeln!(out, "| disk and memory of {n} states | MiB | per million states, MiB |")?;
    writeln!(out, "| --- | ---: | ---: |")?;
    let row = |out: &mut String, what: &str, mib_v: f64| writeln!(out, "| {what} | {mib_v:.1} | {:.1} |", mib_v * per_m);
    row(&mut out, "state dir after (2), running (`du -sk`)", mib(dmed(|d| d.disk_running.0)))?;
    row(&mut out, "state dir after (2), stopped (`du -sk`)", mib(dmed(|d| d.disk_stopped.0)))?;
    row(&mut out, "… of which fjall's journal files (`*.jnl`)", mib(dmed(|d| d.journal_stopped)))?;
    row(&mut out, "… apparent size (`du -sb`)", mib(dmed(|d| d.disk_stopped.1)))?;
    row(&mut out, "state dir of (3a), restored from the changelog (+ the probe), stopped (`du -sk`)", mib(rmed(|r| r.disk.0 as f64) as u64))?;
    row(&mut out, "… of which fjall's journal files (`*.jnl`)", mib(rmed(|r| r.disk.1 as f64) as u64))?;
    if disks.iter().all(|d| d.changelog_disk.is_some()) {
        row(&mut out, &format!("changelog partition dir(s) in the broker's log dir (`du -sk`; {} records)", dmed(|d| d.changelog_records as u64)), mib(dmed(|d| d.changelog_disk.unwrap().0)))?;
        row(&mut out, "… apparent size (`du -sb`)", mib(dmed(|d| d.changelog_disk.unwrap().1)))?;
    }
    // Resident memory is not proportional to the states (a process without any has ~60 MiB):
    // only the difference with (1) is given per million.
    let abs = |out: &mut String, what: &str, mib_v: f64| writeln!(out, "| {what} | {mib_v:.1} | |");
    abs(&mut out, "RSS after (2), the last trigger in (`VmRSS`)", rss_s)?;
    abs(&mut out, "RSS of (1) (no state), for comparison", rss_p)?;
    row(&mut out, "RSS (2) − (1)", rss_s - rss_p)?;
    abs(&mut out, "RSS after (3a), restored", rmed(|r| r.changelog.rss_mib))?;
    abs(&mut out, "peak RSS (`VmHWM`) of (3a) until restored", rmed(|r| r.changelog.hwm_mib))?;
    abs(&mut out, "RSS after (3a) and the probe", rmed(|r| r.rss_after_probe_mib))?;
    abs(&mut out, "RSS after (3b), restored from the local state", rmed(|r| r.local.rss_mib))?;
    writeln!(out)?;

    writeln!(out, "rtcrm commands (last round):")?;
    writeln!(out, "- (1): `{}`", plain.last().map_or("", |r| r.command.as_str()))?;
    writeln!(out, "- (2): `{}`", stateful.last().map_or("", |r| r.command.as_str()))?;
    writeln!(out, "- (3a): `{}`", restores.last().map_or("", |r| r.changelog.command.as_str()))?;
    writeln!(out, "- (3b): `{}`", restores.last().map_or("", |r| r.local.command.as_str()))?;
    writeln!(out)?;
    writeln!(out, "command: {}", shell_line(std::env::args()))?;
    writeln!(out, "wall time: {:.1} s", started.elapsed().as_secs_f64())?;
    print!("{out}");
    std::io::stdout().flush()?;
    Ok(())
}
