//! The backtest (spec §13): one campaign over the events the events topic retains between two
//! times (or a JSON-lines file), with the processor's evaluation code and limits and, for a
//! campaign with controls (spec §12), the processor's per-player decisions, producing nothing.
//!
//! The calling thread reads the source ([`source`]), parses each event once and cuts batches,
//! one per evaluation thread, split by player (so each player's events are decided in order by
//! one thread). Each thread decides its events with its own copy of the campaign (its own
//! filter instance and counters: nothing shared between threads on the evaluation path): spec
//! §4's checks, the player's presence, the filter ([`crate::dryrun::decision`]), then the
//! controls on the thread's in-memory per-player states ([`players`]: cooldown, cap, count,
//! holdout, variants, inactivity timers, the JavaScript filter's state, all through
//! [`crate::state::decide`]); it counts them ([`tally`]); the counts are merged into a
//! [`report::Report`]. Per-player state starts empty at the first event read.
//!
//! Bounds: `max_events` (records read), `max_seconds` (wall clock), and [`Progress::cancel`];
//! a backtest that stops early says why ([`report::Stopped`]) and reports what it read.

pub mod interval;
pub mod players;
pub mod report;
pub mod source;
pub mod tally;

use crate::campaigns::instances::InstanceBudget;
use crate::campaigns::registry::LiveCampaign;
use crate::config::Clock;
use crate::dryrun::backtest::interval::format_time;
use crate::dryrun::backtest::players::{Firing, Players};
use crate::dryrun::backtest::report::{Report, Stopped};
use crate::dryrun::backtest::source::{Flow, Raw, Source, SourceError};
use crate::dryrun::backtest::tally::Tally;
use crate::dryrun::decision::{dry_copy, filter_decision, player_of, Controlled, Decision};
use crate::events::evaluate::{event_time, player_key, precheck, trigger_id, trigger_payload, EventMeta, Extras};
use crate::state::controls::Millis;
use crate::state::partitioning::state_partition;
use chrono::{DateTime, Utc};
use rtcrm_sandbox::{Event, Sandbox};
use std::collections::BTreeMap;
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
    /// The player id as text (the trigger key), for a campaign with per-player state (`None`:
    /// the event has none).
    player: Option<String>,
    /// The state partition of the player (else the record's partition).
    home: i32,
    /// For an `inactivity` campaign: the time of [`Item::home`] after this record (the latest
    /// event time it has seen, see [`players`]); timers due by then fire before it is decided.
    clock: Option<Millis>,
}

impl Item {
    /// Which of `shards` threads decides it: by player (the player id as text for a campaign
    /// with per-player state, so that every event of a player is decided by one thread; else
    /// the raw `player_id`), else by message key, else by offset — as the processor's batches
    /// split events.
    fn shard(&self, key: Option<&[u8]>, shards: usize) -> usize {
        let basis = match &self.player {
            Some(player) => Some(player.as_bytes()),
            None => self.event.as_ref().and_then(|e| e.field("player_id")),
        };
        match basis.or(key) {
            Some(bytes) => (fnv1a(bytes) % shards as u64) as usize,
            None => self.offset.unsigned_abs() as usize % shards,
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The time an event is decided at: spec §4's clock, as the processor reads it, except that
/// with `processing` the record timestamp stands for the wall clock at the time it arrived.
fn decision_time(event: &Event, clock: Clock, timestamp_ms: Option<i64>) -> DateTime<Utc> {
    match timestamp_ms.and_then(DateTime::from_timestamp_millis) {
        Some(t) if clock == Clock::Processing => t,
        _ => event_time(event, clock),
    }
}

/// The reader's view of the partition times (spec §12), for an `inactivity` campaign.
struct Clocks {
    /// Partition → the latest event time seen there (Unix ms).
    latest: BTreeMap<i32, Millis>,
}

impl Clocks {
    fn saw(&mut self, partition: i32, t: Millis) -> Millis {
        let latest = self.latest.entry(partition).or_insert(t);
        *latest = (*latest).max(t);
        *latest
    }
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
    /// Decides `item` for `campaign` (the thread's own copy) on the thread's per-player states
    /// and counts it; timers of its partition due by its time fire first.
    fn evaluate(&self, campaign: &LiveCampaign, tally: &mut Tally, players: &mut Players, item: &Item, tick: u64) {
        tally.events += 1;
        if let Some(now) = item.clock {
            self.fire(campaign, tally, players, item.home, now);
        }
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
        let controls = &campaign.def.controls;
        let time = meta.time;
        let decision = match precheck(campaign, &meta) {
            Some(skip) => Decision::Skipped(skip),
            None if !controls.any() => filter_decision(self.sandbox, &self.budget, campaign, event, tick),
            None => {
                let read;
                let player = if controls.needs_state() {
                    item.player.as_deref()
                } else {
                    read = player_of(event);
                    read.as_deref()
                };
                match player {
                    None => Decision::NoPlayer,
                    Some(player) if !controls.needs_state() => {
                        // Holdout and variants only: the player's hash decides, no state.
                        match filter_decision(self.sandbox, &self.budget, campaign, event, tick) {
                            Decision::Matched { fuel, .. } => Decision::Matched { fuel, then: Controlled::stateless(campaign.def.id, player, controls) },
                            other => other,
                        }
                    }
                    Some(player) => self.stateful(campaign, players, event, player, time.timestamp_millis(), item, tick),
                }
            }
        };
        let variant = match &decision {
            Decision::Matched { then: Controlled::Trigger { variant }, .. } => variant.as_ref(),
            _ => None,
        };
        tally.record(&decision, (item.partition, item.offset), || player_key(event), time.timestamp().div_euclid(3600), || {
            let id = trigger_id(campaign.def.id, event, &self.trigger_topic, item.partition, item.offset);
            let mut out = Vec::new();
            let extras = Extras { variant: variant.cloned(), ..Extras::default() };
            trigger_payload(&mut out, campaign, event.as_bytes(), &id, &format_time(time), &extras);
            out
        });
    }

    /// The filter (with the player's JavaScript state, for a campaign with `state`) and the
    /// controls on the player's state, as the processor's stateful path decides them.
    #[allow(clippy::too_many_arguments)]
    fn stateful(&self, campaign: &LiveCampaign, players: &mut Players, event: &Event, player: &str, now: Millis, item: &Item, tick: u64) -> Decision {
        let controls = &campaign.def.controls;
        let current = if controls.state.is_some() { players.js_state(controls, player, now) } else { None };
        match crate::dryrun::decision::run(self.sandbox, &self.budget, campaign, event, tick, current.as_ref().map(|j| j.get())) {
            // As in the processor, a failed evaluation leaves the player's state as it was.
            Err(err) => Decision::FilterError(err),
            Ok((verdict, js)) => {
                let id = if verdict.matched { trigger_id(campaign.def.id, event, &self.trigger_topic, item.partition, item.offset) } else { String::new() };
                let decided = players.decide(controls, players::Event {
                    campaign_id: campaign.def.id,
                    player,
                    now,
                    matched: verdict.matched,
                    bytes: event.as_bytes(),
                    trigger_id: &id,
                    js,
                    at: (item.partition, item.offset),
                    home: item.home,
                });
                match decided {
                    Some(then) => Decision::Matched { fuel: verdict.fuel_used, then },
                    None => Decision::FilterFalse { fuel: verdict.fuel_used },
                }
            }
        }
    }

    /// Fires the thread's timers of partition `home` due at partition time `now`, and counts them.
    fn fire(&self, campaign: &LiveCampaign, tally: &mut Tally, players: &mut Players, home: i32, now: Millis) {
        players.fire_due(&campaign.def.controls, campaign.def.id, home, now, &mut |f| self.count_firing(campaign, tally, f));
    }

    /// Counts one firing: a trigger at its due time (`triggered_at`, and the histogram's hour),
    /// carrying the player's last matching event and `"reason": "inactivity"`.
    fn count_firing(&self, campaign: &LiveCampaign, tally: &mut Tally, f: Firing) {
        let due = f.armed.due;
        tally.record_firing(&f.outcome, f.at, &f.player, due.div_euclid(3_600_000), || {
            let variant = match &f.outcome {
                Controlled::Trigger { variant } => variant.clone(),
                _ => None,
            };
            let at = DateTime::from_timestamp_millis(due).map_or_else(|| due.to_string(), format_time);
            let mut out = Vec::new();
            trigger_payload(&mut out, campaign, f.armed.event.get().as_bytes(), &f.armed.id, &at, &Extras { control: false, variant, inactivity: true });
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
    let controls = &spec.campaign.def.controls;
    // The partition times, for a campaign with inactivity timers (see `players`), and their
    // values at the end of the reading, for the threads' last firings.
    let mut clocks = controls.inactivity_ms.is_some().then(|| Clocks { latest: BTreeMap::new() });
    let final_clocks: std::sync::OnceLock<BTreeMap<i32, Millis>> = std::sync::OnceLock::new();
    let (view, tally) = std::thread::scope(|scope| {
        let mut senders = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        for _ in 0..threads {
            let (tx, rx) = sync_channel::<Vec<Item>>(QUEUE_DEPTH);
            senders.push(tx);
            let (context, stop, final_clocks) = (&context, &stop, &final_clocks);
            handles.push(scope.spawn(move || {
                // Each thread its own copy: its instance and counters are not shared, so the
                // threads never contend on the campaign's atomics and pool.
                let campaign = dry_copy(&spec.campaign);
                let mut tally = Tally::new(spec.samples);
                let mut players = Players::default();
                // After a stop, the queue is drained without deciding anything more.
                while let Ok(batch) = rx.recv() {
                    let tick = context.budget.tick();
                    let mut decided = 0;
                    for item in &batch {
                        if stop.halt(progress, deadline) {
                            break;
                        }
                        context.evaluate(&campaign, &mut tally, &mut players, item, tick);
                        decided += 1;
                        // The shared counter every 64 events (a contended atomic per event costs).
                        if decided % 64 == 0 {
                            progress.events.fetch_add(64, Ordering::Relaxed);
                        }
                    }
                    progress.events.fetch_add(decided % 64, Ordering::Relaxed);
                }
                // The end of the interval: timers due by their partition's final time fire; the
                // others stay armed (reported, not triggers). A halted run decides nothing more.
                let pending = match final_clocks.get() {
                    Some(clocks) if !stop.halted.load(Ordering::Relaxed) => {
                        let (controls, id) = (&campaign.def.controls, campaign.def.id);
                        players.finish(controls, id, clocks, &mut |f| context.count_firing(&campaign, &mut tally, f))
                    }
                    _ => players.armed(),
                };
                tally.timers_pending = pending;
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
            let mut item = Item { partition: raw.partition, offset: raw.offset, timestamp_ms: raw.timestamp_ms, event, player: None, home: raw.partition, clock: None };
            if controls.needs_state() {
                if let Some(event) = &item.event {
                    item.player = player_of(event);
                    if let Some(player) = &item.player {
                        item.home = state_partition(player, raw.partitions);
                    }
                }
            }
            if let (Some(clocks), Some(event)) = (clocks.as_mut(), &item.event) {
                item.clock = Some(advance(clocks, &spec.campaign, spec.clock, event, &item));
            }
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
        if let Some(clocks) = clocks.take() {
            let _ = final_clocks.set(clocks.latest);
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
    Ok(report::build(spec.campaign.def.id, &spec.campaign.def.controls, clock, view, tally, stop.get(), seconds))
}

/// Advances the partition times with one event, as the processor's event path does: the time
/// of the partition it was read on, and, when the processor would forward it to its player's
/// state partition for this campaign (spec §4's checks pass, it has a player, and another
/// partition holds the player's state), that partition's time too, as the forwarded copy
/// arrives there. Returns the time of the event's state partition after it.
fn advance(clocks: &mut Clocks, campaign: &LiveCampaign, clock: Clock, event: &Event, item: &Item) -> Millis {
    let time = decision_time(event, clock, item.timestamp_ms);
    let own = clocks.saw(item.partition, time.timestamp_millis());
    if item.home == item.partition {
        return own;
    }
    let forwarded = EventMeta::read(event, clock).is_some_and(|mut meta| {
        meta.time = time;
        precheck(campaign, &meta).is_none()
    });
    if forwarded {
        clocks.saw(item.home, time.timestamp_millis())
    } else {
        clocks.latest.get(&item.home).copied().unwrap_or(Millis::MIN)
    }
}

#[cfg(test)]
mod tests;
