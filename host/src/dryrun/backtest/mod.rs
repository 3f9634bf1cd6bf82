//! The backtest (spec §13): one campaign over the events the events topic retains between two
//! times (or a JSON-lines file), with the processor's evaluation code and limits, producing
//! nothing.
//!
//! The calling thread reads the source ([`source`]), parses each event once and cuts batches,
//! one per evaluation thread, split by player as the processor splits them (so when spec §12's
//! per-player state lands, each player's events are decided in order by one thread). Each
//! thread decides its events ([`crate::dryrun::decision::decide`]) with its own copy of the
//! campaign (its own filter instance and counters: nothing shared between threads on the
//! evaluation path) and counts them ([`tally`]); the counts are merged into a
//! [`report::Report`].
//!
//! Bounds: `max_events` (records read), `max_seconds` (wall clock), and [`Progress::cancel`];
//! a backtest that stops early says why ([`report::Stopped`]) and reports what it read.

pub mod interval;
pub mod report;
pub mod source;
pub mod tally;

use crate::campaigns::instances::InstanceBudget;
use crate::campaigns::registry::LiveCampaign;
use crate::config::Clock;
use crate::dryrun::backtest::interval::format_time;
use crate::dryrun::backtest::report::{Report, Stopped};
use crate::dryrun::backtest::source::{Flow, Raw, Source, SourceError};
use crate::dryrun::backtest::tally::Tally;
use crate::dryrun::decision::{decide, dry_copy};
use crate::events::evaluate::{player_key, trigger_id, trigger_payload, EventMeta, Extras};
use chrono::DateTime;
use rtcrm_sandbox::{Event, Sandbox};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events per batch handed to an evaluation thread.
const BATCH: usize = 512;
/// Batches queued per evaluation thread before the reader waits.
const QUEUE_DEPTH: usize = 4;
/// Sample triggers a report shows by default.
pub const DEFAULT_SAMPLES: usize = 3;

/// What to run.
pub struct Spec {
    /// The campaign: a [`crate::dryrun::decision::dry_copy`] or a version compiled for the run.
    pub campaign: Arc<LiveCampaign>,
    /// Which time the windows are checked against. With `processing`, an event's record
    /// timestamp stands for the wall clock at the time it arrived (a file's events: the wall
    /// clock now).
    pub clock: Clock,
    /// Evaluation threads (at least 1).
    pub threads: usize,
    /// Stop after this many records read.
    pub max_events: Option<u64>,
    /// Stop after this long.
    pub max_duration: Option<Duration>,
    /// Sample triggers to keep.
    pub samples: usize,
}

/// A running backtest's progress, shared with whoever watches it (the CLI's progress line, the
/// HTTP API), and its cancellation switch.
#[derive(Debug, Default)]
pub struct Progress {
    /// Events decided so far.
    pub events: AtomicU64,
    /// Records read (in the interval); the evaluation threads are up to a few batches behind.
    pub read: AtomicU64,
    /// How far the source is (records for a topic, bytes for a file), of [`Progress::total`].
    pub position: AtomicU64,
    /// The source's size in the same unit; 0 while unknown.
    pub total: AtomicU64,
    cancelled: AtomicBool,
}

impl Progress {
    /// Asks the backtest to stop; it reports what it has read so far.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// How far the backtest is, 0 to 1: how far the source has been read, times the share of
    /// what was read that has been decided (None while the source's size is unknown).
    pub fn fraction(&self) -> Option<f64> {
        let total = self.total.load(Ordering::Relaxed);
        let read = self.read.load(Ordering::Relaxed);
        let decided = if read == 0 { 1.0 } else { self.events.load(Ordering::Relaxed) as f64 / read as f64 };
        (total > 0).then(|| (self.position.load(Ordering::Relaxed) as f64 / total as f64 * decided).min(1.0))
    }
}

/// One record on its way to an evaluation thread.
struct Item {
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    event: Option<Event>,
}

impl Item {
    /// Which of `shards` threads decides it: by player (the raw `player_id`), else by message
    /// key, else by offset — as the processor's batches split events.
    fn shard(&self, key: Option<&[u8]>, shards: usize) -> usize {
        let basis = self.event.as_ref().and_then(|e| e.field("player_id")).or(key);
        match basis {
            Some(bytes) => (fnv1a(bytes) % shards as u64) as usize,
            None => self.offset.unsigned_abs() as usize % shards,
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// What the evaluation threads share.
struct Context<'a> {
    sandbox: &'a Sandbox,
    budget: Arc<InstanceBudget>,
    clock: Clock,
    /// The topic part of trigger ids of events without `event_id`.
    trigger_topic: String,
}

impl Context<'_> {
    /// Decides `item` for `campaign` (the thread's own copy) and counts it.
    fn evaluate(&self, campaign: &LiveCampaign, tally: &mut Tally, item: &Item, tick: u64) {
        tally.events += 1;
        let Some(event) = &item.event else {
            tally.not_events += 1;
            return;
        };
        let Some(mut meta) = EventMeta::read(event, self.clock) else {
            tally.no_game_or_event_name += 1;
            return;
        };
        if self.clock == Clock::Processing {
            if let Some(t) = item.timestamp_ms.and_then(DateTime::from_timestamp_millis) {
                meta.time = t;
            }
        }
        let decision = decide(self.sandbox, &self.budget, campaign, event, &meta, tick);
        let time = meta.time;
        tally.record(&decision, (item.partition, item.offset), || player_key(event), time.timestamp().div_euclid(3600), || {
            let id = trigger_id(campaign.def.id, event, &self.trigger_topic, item.partition, item.offset);
            let mut out = Vec::new();
            trigger_payload(&mut out, campaign, event.as_bytes(), &id, &format_time(time), &Extras::default());
            out
        });
    }
}

/// Why a backtest failed (a backtest that stops early does not fail: see [`Stopped`]).
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error(transparent)]
    Source(#[from] SourceError),
    /// An evaluation thread panicked (a bug: the report would be incomplete).
    #[error("an evaluation thread of the backtest panicked (see the log)")]
    Panicked,
}

/// Why a backtest stops early. The event limit stops the reading only (what was read is
/// decided); a cancellation or the time limit halts every thread.
#[derive(Default)]
struct StopReason {
    halted: AtomicBool,
    why: std::sync::Mutex<Option<Stopped>>,
}

impl StopReason {
    fn set(&self, why: Stopped) {
        let mut current = self.why.lock().unwrap_or_else(|p| p.into_inner());
        // A halt says more than the event limit it may follow.
        if current.is_none() || (*current == Some(Stopped::MaxEvents) && why != Stopped::MaxEvents) {
            *current = Some(why);
        }
    }

    fn get(&self) -> Option<Stopped> {
        *self.why.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether every thread is to stop now: cancelled, or past the deadline.
    fn halt(&self, progress: &Progress, deadline: Option<Instant>) -> bool {
        if self.halted.load(Ordering::Relaxed) {
            return true;
        }
        let why = if progress.is_cancelled() {
            Stopped::Cancelled
        } else if deadline.is_some_and(|d| Instant::now() >= d) {
            Stopped::MaxSeconds
        } else {
            return false;
        };
        self.set(why);
        self.halted.store(true, Ordering::Relaxed);
        true
    }
}

/// Runs the backtest on the calling thread (reading) and `spec.threads` evaluation threads.
pub fn run(sandbox: &Sandbox, spec: &Spec, source: &Source, progress: &Progress) -> Result<Report, BacktestError> {
    let threads = spec.threads.max(1);
    let context = Context {
        sandbox,
        // One instance per thread, plus one spare for a rebuild after a trap.
        budget: InstanceBudget::new(threads + 1),
        clock: spec.clock,
        trigger_topic: source.trigger_topic(),
    };
    let started = Instant::now();
    let deadline = spec.max_duration.map(|d| started + d);
    let stop = StopReason::default();
    // The rate is measured from the first record (connecting and looking offsets up excluded).
    let mut first_record: Option<Instant> = None;
    let (view, tally) = std::thread::scope(|scope| {
        let mut senders = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        for _ in 0..threads {
            let (tx, rx) = sync_channel::<Vec<Item>>(QUEUE_DEPTH);
            senders.push(tx);
            let (context, stop) = (&context, &stop);
            handles.push(scope.spawn(move || {
                // Each thread its own copy: its instance and counters are not shared, so the
                // threads never contend on the campaign's atomics and pool.
                let campaign = dry_copy(&spec.campaign);
                let mut tally = Tally::new(spec.samples);
                // After a stop, the queue is drained without deciding anything more.
                while let Ok(batch) = rx.recv() {
                    let tick = context.budget.tick();
                    let mut decided = 0;
                    for item in &batch {
                        if stop.halt(progress, deadline) {
                            break;
                        }
                        context.evaluate(&campaign, &mut tally, item, tick);
                        decided += 1;
                        // The shared counter every 64 events (a contended atomic per event costs).
                        if decided % 64 == 0 {
                            progress.events.fetch_add(64, Ordering::Relaxed);
                        }
                    }
                    progress.events.fetch_add(decided % 64, Ordering::Relaxed);
                }
                tally
            }));
        }
        let mut shards: Vec<Vec<Item>> = (0..threads).map(|_| Vec::with_capacity(BATCH)).collect();
        let mut read = 0u64;
        // Asked by the source while no record arrives.
        let idle = || if stop.halt(progress, deadline) { Flow::Stop } else { Flow::Continue };
        let mut send_failed = false;
        let result = source.read(progress, &idle, &mut |raw: Raw<'_>| {
            first_record.get_or_insert_with(Instant::now);
            if spec.max_events.is_some_and(|max| read >= max) {
                stop.set(Stopped::MaxEvents);
                return Flow::Stop;
            }
            // Reading the clock costs ~20 ns: every 64 records is often enough.
            if read % 64 == 0 && stop.halt(progress, deadline) {
                return Flow::Stop;
            }
            read += 1;
            progress.read.store(read, Ordering::Relaxed);
            // Under the host's event limits, as the processor parses (over them: a dead letter).
            let event = raw.payload.and_then(|bytes| sandbox.parse_event(bytes.to_vec()).ok());
            let item = Item { partition: raw.partition, offset: raw.offset, timestamp_ms: raw.timestamp_ms, event };
            let shard = item.shard(raw.key, threads);
            shards[shard].push(item);
            if shards[shard].len() >= BATCH {
                let batch = std::mem::replace(&mut shards[shard], Vec::with_capacity(BATCH));
                if senders[shard].send(batch).is_err() {
                    send_failed = true;
                    return Flow::Stop;
                }
            }
            Flow::Continue
        });
        for (shard, batch) in shards.into_iter().enumerate() {
            if !batch.is_empty() && senders[shard].send(batch).is_err() {
                send_failed = true;
            }
        }
        drop(senders);
        let mut total = Tally::new(spec.samples);
        let mut panicked = send_failed;
        for handle in handles {
            match handle.join() {
                Ok(t) => total.merge(t),
                Err(_) => panicked = true,
            }
        }
        (result.map_err(BacktestError::from).and_then(|view| if panicked { Err(BacktestError::Panicked) } else { Ok(view) }), total)
    });
    let view = view?;
    let clock = match spec.clock {
        Clock::Event => "event",
        Clock::Processing => "processing",
    };
    let seconds = first_record.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok(report::build(spec.campaign.def.id, clock, view, tally, stop.get(), seconds))
}
