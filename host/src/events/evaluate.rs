//! Matching and evaluation of one event against the campaigns in force (spec §4, §9): the
//! cheap checks first, then the filter, then the trigger.
//!
//! [`precheck`] and [`evaluate_filter`] are the single implementation of spec §4's checks and of
//! running a filter under its limits; everything that decides whether a campaign matches an
//! event goes through them.

use crate::campaigns::definition::{parse_time, Window};
use crate::campaigns::registry::{CampaignSet, LiveCampaign, State};
use crate::config::Clock;
use crate::events::batch::{Batch, Job, Payload};
use crate::events::sink::{dead_letter, Record, RecordKind, Sink};
use crate::processor::Processor;
use crate::state::controls::Controls;
use crate::state::decide::{self, Input, Outcome, PlayerState, Position, Source};
use crate::state::partitioning::state_partition;
use crate::state::store::{split_key, state_key, Deadline, DeadlineKind, PartitionStore};
use crate::state::stores::States;
use rdkafka::message::{Header, OwnedHeaders};
use chrono::{DateTime, Utc};
use crate::campaigns::instances::InstanceBudget;
use crate::telemetry::stats::LastError;
use rtcrm_sandbox::{EvalError, Event, Sandbox, Verdict};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// Top-level field `key` when it is a JSON string; borrowed from the event when it has no
/// escapes (no allocation for `game` and `event_name` on the hot path).
pub fn str_field<'e>(event: &'e Event, key: &str) -> Option<Cow<'e, str>> {
    let raw = event.field(key)?;
    if raw.len() >= 2 && raw[0] == b'"' && raw[raw.len() - 1] == b'"' && !raw.contains(&b'\\') {
        return std::str::from_utf8(&raw[1..raw.len() - 1]).ok().map(Cow::Borrowed);
    }
    serde_json::from_slice::<String>(raw).ok().map(Cow::Owned)
}

/// The time an event's campaign windows are checked against (spec §4).
pub fn event_time(event: &Event, clock: Clock) -> DateTime<Utc> {
    if clock == Clock::Event {
        for field in ["created_at", "received_at"] {
            if let Some(t) = str_field(event, field).as_deref().and_then(parse_time) {
                return t;
            }
        }
    }
    Utc::now()
}

/// The trigger key: the player id as text, empty when the event has none.
pub fn player_key(event: &Event) -> String {
    match event.field("player_id") {
        Some(raw) if raw.first() == Some(&b'"') => serde_json::from_slice::<String>(raw).unwrap_or_default(),
        Some(raw) if raw != b"null" => String::from_utf8_lossy(raw).into_owned(),
        _ => String::new(),
    }
}

/// What the matching checks read from an event.
pub struct EventMeta<'e> {
    pub game: Cow<'e, str>,
    pub event_name: Cow<'e, str>,
    /// The time the windows are checked against.
    pub time: DateTime<Utc>,
}

impl<'e> EventMeta<'e> {
    /// `None` when the event has no string `game` or `event_name` (no campaign can match it).
    pub fn read(event: &'e Event, clock: Clock) -> Option<EventMeta<'e>> {
        Some(EventMeta { game: str_field(event, "game")?, event_name: str_field(event, "event_name")?, time: event_time(event, clock) })
    }
}

/// The cheap check that excludes a campaign, in spec §4's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    Disabled,
    /// Quarantined after consecutive failures (spec §7).
    Quarantined,
    OtherGame,
    OtherEventName,
    /// `t <= start_date`.
    BeforeStart,
    /// `t >= end_date`.
    AfterEnd,
}

/// Spec §4's checks 1–4 for `campaign` and the event: `None` when the filter is to decide.
pub fn precheck(campaign: &LiveCampaign, meta: &EventMeta<'_>) -> Option<Skip> {
    let def = &campaign.def;
    if !def.enabled {
        Some(Skip::Disabled)
    } else if campaign.is_quarantined() {
        Some(Skip::Quarantined)
    } else if def.game != meta.game {
        Some(Skip::OtherGame)
    } else if def.event_name != meta.event_name {
        Some(Skip::OtherEventName)
    } else {
        match def.window(meta.time) {
            Window::Before => Some(Skip::BeforeStart),
            Window::After => Some(Skip::AfterEnd),
            Window::Inside => None,
        }
    }
}

/// Runs `campaign`'s filter on `event` with an instance from its pool (built when none is
/// idle, and counted in `budget`; `tick` is the budget's clock for this batch), and records the
/// outcome in the campaign's own counters (evaluations, matches, errors by kind, fuel) and its
/// consecutive failures. The same code serves the processor, the backtest and explain.
pub fn run_filter(sandbox: &Sandbox, budget: &Arc<InstanceBudget>, campaign: &LiveCampaign, event: &Event, tick: u64) -> Result<Verdict, EvalError> {
    run_with(sandbox, budget, campaign, tick, |filter| filter.eval(event).map(|v| (v, ()))).map(|(v, ())| v)
}

/// [`run_filter`] for a campaign with `state` (spec §12): the filter is called with the player's
/// stored state (`None`: none yet) and returns its verdict and the state it left, as compact
/// JSON. On any error no new state is returned, so the caller keeps the stored one.
pub fn run_filter_with_state(
    sandbox: &Sandbox,
    budget: &Arc<InstanceBudget>,
    campaign: &LiveCampaign,
    event: &Event,
    tick: u64,
    state: Option<&str>,
    max_bytes: usize,
) -> Result<(Verdict, String), EvalError> {
    run_with(sandbox, budget, campaign, tick, |filter| filter.eval_with_state(event, state, max_bytes))
}

fn run_with<T>(
    sandbox: &Sandbox,
    budget: &Arc<InstanceBudget>,
    campaign: &LiveCampaign,
    tick: u64,
    eval: impl FnOnce(&mut rtcrm_sandbox::Filter) -> Result<(Verdict, T), EvalError>,
) -> Result<(Verdict, T), EvalError> {
    let telemetry = &campaign.telemetry;
    telemetry.evaluations.inc();
    let result = match campaign.instances.take(tick) {
        Some(instance) => Ok(instance),
        None => sandbox.filter(&campaign.compiled, &telemetry.label.campaign, campaign.limits).map(|filter| budget.admit(filter)),
    }
    .and_then(|mut instance| {
        let outcome = eval(&mut instance.filter);
        campaign.instances.put(instance);
        outcome
    });
    let (verdict, rest) = match result {
        Ok((verdict, rest)) => (Ok(verdict), Some(rest)),
        Err(e) => (Err(e), None),
    };
    telemetry.stats.record(&verdict);
    match &verdict {
        Ok(verdict) => {
            campaign.succeeded();
            telemetry.fuel.observe(verdict.fuel_used);
            if verdict.matched {
                telemetry.matches.inc();
            }
        }
        Err(err) => {
            telemetry.error(err.kind()).inc();
        }
    }
    verdict.map(|v| (v, rest.expect("set with the verdict")))
}

/// The processor's evaluation: [`run_filter`], timed, and a failure recorded with its event
/// (partition and offset) for `/api/campaigns`, logged at warning level (at most once per
/// campaign per 10 s), and counted toward quarantine.
pub fn evaluate_filter(processor: &Arc<Processor>, campaign: &LiveCampaign, event: &Event, job: &Job, tick: u64) -> Result<Verdict, EvalError> {
    let started = Instant::now();
    let result = run_filter(&processor.sandbox, &processor.instances, campaign, event, tick);
    processor.metrics.latency.observe(started.elapsed().as_nanos() as u64);
    if let Err(err) = &result {
        failed(processor, campaign, err, job);
    }
    result
}

/// [`evaluate_filter`] with the player's state ([`run_filter_with_state`]).
fn evaluate_filter_with_state(processor: &Arc<Processor>, campaign: &LiveCampaign, event: &Event, job: &Job, tick: u64, state: Option<&str>, max_bytes: usize) -> Result<(Verdict, String), EvalError> {
    let started = Instant::now();
    let result = run_filter_with_state(&processor.sandbox, &processor.instances, campaign, event, tick, state, max_bytes);
    processor.metrics.latency.observe(started.elapsed().as_nanos() as u64);
    if let Err(err) = &result {
        failed(processor, campaign, err, job);
    }
    result
}

/// A failed evaluation: recorded as the campaign's last error; after `--quarantine-after` in a
/// row, the campaign is quarantined and its status published.
fn failed(processor: &Arc<Processor>, campaign: &LiveCampaign, err: &EvalError, job: &Job) {
    if err.caused_by_event() || err.caused_by_host() {
        // The event's fault (spec §7: dead-lettered by the caller) or the host's (its budget of
        // instances), not the filter's: never counted toward quarantine.
        return;
    }
    let id = campaign.def.id;
    let kind = err.kind();
    campaign.telemetry.stats.record_error(LastError {
        kind,
        message: err.to_string(),
        partition: job.partition,
        offset: job.offset,
        at_ms: Utc::now().timestamp_millis(),
    });
    if processor.evaluation_errors_log.allow(&campaign.telemetry.label.campaign) {
        tracing::warn!(
            campaign = id,
            kind = %kind,
            partition = job.partition,
            offset = job.offset,
            error = %err,
            "evaluation failed (further failures of this campaign are not logged for 10 s)"
        );
        processor.filter_log.error(&campaign.telemetry.label.campaign, kind.as_str(), &err.to_string(), job.partition, job.offset);
    }
    let threshold = processor.settings.quarantine_after;
    if campaign.failed(threshold) {
        tracing::warn!(campaign = id, kind = %kind, error = %err, "campaign quarantined after {threshold} consecutive failures");
        processor.registry.quarantine(id, err);
        let reason = format!("{threshold} consecutive failed evaluations; last: {kind}: {err}");
        let (p, digest) = (processor.clone(), campaign.def.digest.clone());
        processor.runtime.spawn(async move {
            crate::campaigns::status::publish(&p, Some(id), State::Quarantined, Some(&reason), &digest).await;
            p.metrics.update_campaigns(&p.registry);
        });
    }
}

/// What a trigger carries besides spec §9's fields (spec §12).
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// A control-group player's would-be trigger: to the control topic, with `"group": "control"`.
    pub control: bool,
    pub variant: Option<String>,
    /// `"reason": "inactivity"` for an inactivity timer's trigger.
    pub inactivity: bool,
}

/// One worker's evaluation state: scratch buffers reused across events, and its shard (it
/// evaluates the players hashed to it, and owns their per-player state changes).
pub struct Evaluator {
    processor: Arc<Processor>,
    states: Arc<States>,
    shard: usize,
    pair: String,
    payload: Vec<u8>,
    triggered_at: String,
    /// Verdicts evaluated ahead for the current shard, by (job, the campaign's position among
    /// the event's candidates); see [`Evaluator::prefetch`].
    prefetched: HashMap<(u32, usize), Result<Verdict, EvalError>>,
}

impl Evaluator {
    pub fn new(processor: Arc<Processor>, states: Arc<States>, shard: usize) -> Evaluator {
        Evaluator {
            processor,
            states,
            shard,
            pair: String::new(),
            payload: Vec::with_capacity(4096),
            triggered_at: String::new(),
            prefetched: HashMap::new(),
        }
    }

    /// Evaluates ahead, campaign by campaign, the filters of this shard's events whose verdict
    /// depends on the event alone (campaigns without per-player state), when there are several
    /// campaigns: each instance then runs many events in a row, its memory hot in this core's
    /// caches, instead of every campaign's instance in turn for every event. Triggers are still
    /// sent event by event, in the events' order ([`Evaluator::event`] takes the verdicts from
    /// here); a campaign quarantined meanwhile is evaluated no further, and the verdicts it
    /// gave before still count, as they would have event by event.
    fn prefetch(&mut self, set: &CampaignSet, batch: &Arc<Batch>, shard: usize, tick: u64) {
        self.prefetched.clear();
        let clock = self.processor.settings.clock;
        // Per campaign (by address within this snapshot), its (job, position) pairs in order.
        let mut slots: HashMap<*const LiveCampaign, usize> = HashMap::new();
        let mut work: Vec<(&Arc<LiveCampaign>, Vec<(u32, usize)>)> = Vec::new();
        for &index in &batch.shards[shard] {
            let job = &batch.jobs[index as usize];
            let Payload::Event(event) = &job.payload else { continue };
            if job.source == Source::Repartitioned {
                continue; // only campaigns with state are evaluated there
            }
            let Some(meta) = EventMeta::read(event, clock) else { continue };
            let mut has_player = None;
            for (position, campaign) in set.candidates(&meta.game, &meta.event_name, &mut self.pair).iter().enumerate() {
                let controls = &campaign.def.controls;
                if controls.needs_state() || precheck(campaign, &meta).is_some() {
                    continue;
                }
                if controls.any() && !*has_player.get_or_insert_with(|| job.player().is_some()) {
                    continue;
                }
                let slot = *slots.entry(Arc::as_ptr(campaign)).or_insert_with(|| {
                    work.push((campaign, Vec::new()));
                    work.len() - 1
                });
                work[slot].1.push((index, position));
            }
        }
        if work.len() < 2 {
            return; // one campaign: evaluated inline, as it comes
        }
        for (campaign, jobs) in work {
            for (index, position) in jobs {
                if campaign.is_quarantined() {
                    break;
                }
                let job = &batch.jobs[index as usize];
                let Payload::Event(event) = &job.payload else { continue };
                let verdict = evaluate_filter(&self.processor, campaign, event, job, tick);
                self.prefetched.insert((index, position), verdict);
            }
        }
    }

    /// Evaluates shard `shard` of `batch` against the campaigns in force now (one snapshot for
    /// the whole shard), sending its records to `sink`.
    pub fn shard(&mut self, batch: &Arc<Batch>, shard: usize, sink: &dyn Sink) {
        debug_assert_eq!(shard, self.shard);
        let set = self.processor.registry.snapshot();
        let tick = self.processor.instances.tick();
        self.triggered_at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        self.prefetch(&set, batch, shard, tick);
        for &job in &batch.shards[shard] {
            self.process(&set, batch, job, sink, tick);
        }
        self.prefetched.clear();
        self.processor.instances.enforce(&set);
        self.processor.metrics.filter_instances.set(self.processor.instances.live() as i64);
    }

    fn process(&mut self, set: &CampaignSet, batch: &Arc<Batch>, index: u32, sink: &dyn Sink, tick: u64) {
        let job = &batch.jobs[index as usize];
        match &job.payload {
            Payload::Event(event) => self.event(set, event, batch, index, sink, tick),
            Payload::Invalid { reason, .. } => {
                tracing::warn!(partition = job.partition, offset = job.offset, reason = %reason, "event sent to the dead-letter topic");
                self.processor.metrics.dead_letters.inc();
                sink.send(dead_letter(&self.processor.settings, job, reason, None), batch, index);
            }
            Payload::Deadline(deadline) => self.deadline(set, deadline, batch, index, sink),
            Payload::Confirmed(key) => self.confirmed(set, key, batch, index, sink),
        }
    }

    fn event(&mut self, set: &CampaignSet, event: &Event, batch: &Arc<Batch>, index: u32, sink: &dyn Sink, tick: u64) {
        let processor = self.processor.clone();
        let settings = &processor.settings;
        let job = &batch.jobs[index as usize];
        let Some(meta) = EventMeta::read(event, settings.clock) else { return };
        let repartitioned = job.source == Source::Repartitioned;
        let player = job.player();
        let mut event_fault = None;
        let mut forward_to = None;
        let mut note_fault = |err: &EvalError, campaign: &LiveCampaign| {
            if err.caused_by_event() && event_fault.is_none() {
                event_fault = Some(format!("the event made the filter of campaign {} fail: {err}", campaign.def.id));
            }
        };
        for (position, campaign) in set.candidates(&meta.game, &meta.event_name, &mut self.pair).iter().enumerate() {
            // A verdict evaluated ahead passed the checks then; only a quarantine can have come
            // since, from a later event, and it must not take back this event's trigger.
            let mut prefetched = if self.prefetched.is_empty() { None } else { self.prefetched.remove(&(index, position)) };
            if prefetched.is_none() && precheck(campaign, &meta).is_some() {
                continue;
            }
            let controls = &campaign.def.controls;
            // Campaigns without per-player state are evaluated where the event was first read.
            if repartitioned && !controls.needs_state() {
                continue;
            }
            if !controls.any() {
                let verdict = prefetched.take().unwrap_or_else(|| evaluate_filter(&processor, campaign, event, job, tick));
                match verdict {
                    Ok(Verdict { matched: true, .. }) => {
                        let id = self.trigger_id(campaign.def.id, event, job);
                        self.trigger(campaign, event.as_bytes(), &id, player.as_deref().unwrap_or(""), Extras::default(), None, batch, index, sink);
                    }
                    Err(err) => note_fault(&err, campaign),
                    _ => {}
                }
                continue;
            }
            let Some(player) = player.as_deref() else {
                campaign.telemetry.no_player.inc();
                continue;
            };
            if !controls.needs_state() {
                // Holdout and variants only: decided by the player's hash, no state.
                let verdict = prefetched.take().unwrap_or_else(|| evaluate_filter(&processor, campaign, event, job, tick));
                match verdict {
                    Ok(Verdict { matched: true, .. }) => {
                        let control = decide::in_control_group(campaign.def.id, player, controls.holdout_bp);
                        let variant = if control { None } else { decide::variant(campaign.def.id, player, controls) };
                        let id = self.trigger_id(campaign.def.id, event, job);
                        self.trigger(campaign, event.as_bytes(), &id, player, Extras { control, variant, inactivity: false }, None, batch, index, sink);
                    }
                    Err(err) => note_fault(&err, campaign),
                    _ => {}
                }
                continue;
            }
            let home = state_partition(player, self.states.partitions);
            if home != job.partition {
                if !repartitioned {
                    forward_to = Some(home);
                } else {
                    tracing::warn!(partition = job.partition, home, player, "a repartitioned event on the wrong partition; skipped");
                }
                continue;
            }
            if let Err(err) = self.stateful(campaign, event, &meta, player, home, batch, index, sink, tick) {
                note_fault(&err, campaign);
            }
        }
        if let Some(partition) = forward_to {
            self.forward(event, partition, player.as_deref().unwrap_or(""), batch, index, sink);
        }
        // One dead letter per event, however many filters it made fail; the other campaigns'
        // triggers went out.
        if let Some(reason) = event_fault {
            tracing::warn!(partition = job.partition, offset = job.offset, reason = %reason, "event sent to the dead-letter topic");
            processor.metrics.dead_letters.inc();
            sink.send(dead_letter(settings, job, &reason, None), batch, index);
        }
    }

    /// Spec §12's checks for one stateful campaign and the event, on the player's stored state.
    #[allow(clippy::too_many_arguments)]
    fn stateful(
        &mut self,
        campaign: &LiveCampaign,
        event: &Event,
        meta: &EventMeta<'_>,
        player: &str,
        partition: i32,
        batch: &Arc<Batch>,
        index: u32,
        sink: &dyn Sink,
        tick: u64,
    ) -> Result<(), EvalError> {
        let job = &batch.jobs[index as usize];
        let Some(store) = self.states.store(partition) else {
            tracing::error!(partition, "no state store for an owned partition; the event is not evaluated for campaign {}", campaign.def.id);
            return Ok(());
        };
        let controls = &campaign.def.controls;
        let key = state_key(campaign.def.id, player);
        let (stored, prev_bytes) = self.load(&store, &key);
        let mut prev = stored.clone();
        let now = meta.time.timestamp_millis();
        // A timer due before this event fires first, as if the deadline scan had come in between
        // (the outcome never depends on when the scan runs).
        if controls.inactivity_ms.is_some() && !decide::is_replay(prev.as_ref(), controls, Position::of(job.source, job.offset, job.origin)) {
            if let Some((outcome, armed, mut fired)) = prev.clone().and_then(|p| decide::fire(controls, campaign.def.id, player, p, now)) {
                let two_phase = self.processor.settings.delivery != crate::config::Delivery::ExactlyOnce;
                if !two_phase {
                    fired.pending = None;
                }
                let confirm = (two_phase && fired.pending.is_some() && self.states.sending(partition, &key)).then(|| (partition, key.clone()));
                self.trigger_or_count(campaign, outcome, armed.event.get().as_bytes(), &armed.id, player, confirm, batch, index, sink);
                prev = Some(fired);
            }
        }
        let at = Position::of(job.source, job.offset, job.origin);
        let trigger_id = self.trigger_id(campaign.def.id, event, job);
        let fired_first = prev != stored;
        let evaluated = if decide::is_replay(prev.as_ref(), controls, at) {
            Ok((true, None))
        } else if let Some(options) = controls.state {
            // `filter(event, state)`: the state as the campaign sees it now (another
            // `state_version` or past its ttl: none). Kept only when the evaluation succeeds
            // (on an error below, only a timer that fired first is written).
            let current = prev.clone().map(|p| p.current(controls, now)).and_then(|p| p.js);
            evaluate_filter_with_state(&self.processor, campaign, event, job, tick, current.as_ref().map(|j| j.get()), options.max_bytes).map(|(verdict, next)| {
                // `{}` for a player without a state yet is no state.
                let js = if current.is_none() && next == "{}" { None } else { decide::Json::new(next) };
                (verdict.matched, js)
            })
        } else {
            evaluate_filter(&self.processor, campaign, event, job, tick).map(|verdict| (verdict.matched, None))
        };
        let (matched, js) = match evaluated {
            Ok(decided) => decided,
            Err(err) => {
                // The timer that fired before this event stays fired (its trigger went out);
                // the event itself changes nothing.
                if fired_first {
                    if let Some(fired) = &prev {
                        self.save(&store, campaign, &key, stored.as_ref(), prev_bytes, Some(fired), batch, index, sink);
                    }
                }
                return Err(err);
            }
        };
        let input = Input {
            campaign_id: campaign.def.id,
            player,
            now,
            at,
            matched,
            event: event.as_bytes(),
            trigger_id: &trigger_id,
            js,
            via: (job.source == Source::Repartitioned).then_some(job.offset),
        };
        let (outcome, next) = decide::decide(controls, prev.clone(), &input);
        if let Some(next) = next.or(fired_first.then_some(prev).flatten()) {
            self.save(&store, campaign, &key, stored.as_ref(), prev_bytes, Some(&next), batch, index, sink);
        }
        self.trigger_or_count(campaign, outcome, event.as_bytes(), &trigger_id, player, None, batch, index, sink);
        Ok(())
    }

    /// What a decision leads to: a trigger (or its repetition after a replay), or a count.
    #[allow(clippy::too_many_arguments)]
    fn trigger_or_count(&mut self, campaign: &LiveCampaign, outcome: Outcome, event: &[u8], trigger_id: &str, player: &str, confirm: Option<(i32, String)>, batch: &Arc<Batch>, index: u32, sink: &dyn Sink) {
        let telemetry = &campaign.telemetry;
        let controls = &campaign.def.controls;
        let inactivity = confirm.is_some() || controls.inactivity_ms.is_some();
        match outcome {
            Outcome::Trigger { control, variant } => {
                self.trigger(campaign, event, trigger_id, player, Extras { control, variant, inactivity }, confirm, batch, index, sink)
            }
            Outcome::Replayed { triggered: true } => {
                let control = decide::in_control_group(campaign.def.id, player, controls.holdout_bp);
                let variant = if control { None } else { decide::variant(campaign.def.id, player, controls) };
                self.trigger(campaign, event, trigger_id, player, Extras { control, variant, inactivity }, confirm, batch, index, sink)
            }
            Outcome::Cooldown { .. } => {
                telemetry.cooldown.inc();
            }
            Outcome::Cap { .. } => {
                telemetry.cap.inc();
            }
            Outcome::Counting { .. } => {
                telemetry.counting.inc();
            }
            Outcome::NoMatch | Outcome::Armed { .. } | Outcome::Replayed { triggered: false } => {}
        }
    }

    /// The stored state under `key` and its size (a corrupt one counts as none, and is logged).
    fn load(&self, store: &PartitionStore, key: &str) -> (Option<PlayerState>, usize) {
        match store.get_sized(self.shard, key) {
            Ok(Some((state, bytes))) => (Some(state), bytes),
            Ok(None) => (None, 0),
            Err(e) => {
                tracing::error!(error = %e, "reading a per-player state; treating it as empty");
                (None, 0)
            }
        }
    }

    /// Records a state change in the store and the changelog (`next` None: deleted).
    #[allow(clippy::too_many_arguments)]
    fn save(&mut self, store: &PartitionStore, campaign: &LiveCampaign, key: &str, prev: Option<&PlayerState>, prev_bytes: usize, next: Option<&PlayerState>, batch: &Arc<Batch>, index: u32, sink: &dyn Sink) {
        let json = store.put(self.shard, key, prev, next, &campaign.def.controls);
        let telemetry = &campaign.telemetry;
        telemetry.state_entries.inc_by(i64::from(next.is_some()) - i64::from(prev.is_some()));
        telemetry.state_bytes.inc_by(json.as_ref().map_or(0, Vec::len) as i64 - prev_bytes as i64);
        let armed = |s: Option<&PlayerState>| i64::from(s.is_some_and(|s| s.inactive.is_some()));
        telemetry.timers.inc_by(armed(next) - armed(prev));
        let settings = &self.processor.settings;
        let record = Record {
            partition: Some(store.partition),
            ..Record::new(RecordKind::Changelog { partition: store.partition }, &settings.changelog_topic, Some(key.as_bytes()), json.as_deref())
        };
        sink.send(record, batch, index);
    }

    /// A per-player deadline came due: an inactivity timer fires, a fired timer's trigger is sent
    /// again (after a restore), or a state that holds nothing needed is deleted.
    fn deadline(&mut self, set: &CampaignSet, deadline: &Deadline, batch: &Arc<Batch>, index: u32, sink: &dyn Sink) {
        let job = &batch.jobs[index as usize];
        let Some(store) = self.states.store(job.partition) else { return };
        let Some((campaign_id, player)) = split_key(&deadline.key) else {
            store.remove_deadline(self.shard, deadline);
            return;
        };
        let (prev, prev_bytes) = self.load(&store, &deadline.key);
        let Some(campaign) = set.get(campaign_id) else {
            // The campaign is gone: so is its state.
            store.remove_deadline(self.shard, deadline);
            if let Some(prev) = &prev {
                let _ = store.put(self.shard, &deadline.key, Some(prev), None, &Controls::default());
                let settings = &self.processor.settings;
                let record = Record {
                    partition: Some(store.partition),
                    ..Record::new(RecordKind::Changelog { partition: store.partition }, &settings.changelog_topic, Some(deadline.key.as_bytes()), None)
                };
                sink.send(record, batch, index);
            }
            return;
        };
        let controls = &campaign.def.controls;
        let two_phase = self.processor.settings.delivery != crate::config::Delivery::ExactlyOnce;
        let now = store.now();
        match (deadline.kind, prev) {
            (DeadlineKind::Inactivity, Some(prev)) => match decide::fire(controls, campaign_id, player, prev.clone(), now) {
                Some((outcome, armed, mut next)) => {
                    if !two_phase {
                        // Exactly-once: the trigger and the disarmed state commit together.
                        next.pending = None;
                    }
                    self.save(&store, campaign, &deadline.key, Some(&prev), prev_bytes, Some(&next), batch, index, sink);
                    let confirm = (two_phase && next.pending.is_some() && self.states.sending(store.partition, &deadline.key))
                        .then(|| (store.partition, deadline.key.clone()));
                    if !matches!(outcome, Outcome::Trigger { .. }) {
                        tracing::debug!(campaign = campaign_id, player, ?outcome, "an inactivity timer fired without a trigger");
                    }
                    self.trigger_or_count(campaign, outcome, armed.event.get().as_bytes(), &armed.id, player, confirm, batch, index, sink);
                }
                None => store.remove_deadline(self.shard, deadline),
            },
            (DeadlineKind::Pending, Some(prev)) => match &prev.pending {
                Some(fired) if self.states.sending(store.partition, &deadline.key) => {
                    let extras = Extras { control: fired.control, variant: fired.variant.clone(), inactivity: true };
                    let confirm = Some((store.partition, deadline.key.clone()));
                    self.trigger(campaign, fired.armed.event.get().as_bytes(), &fired.armed.id, player, extras, confirm, batch, index, sink);
                }
                Some(_) => {}
                None => store.remove_deadline(self.shard, deadline),
            },
            (DeadlineKind::Expiry, Some(prev)) => {
                if two_phase && prev.may_be_replayed(|source| self.states.committed(source, store.partition)) {
                    // At-least-once: an event this state applied is not committed yet. Were the
                    // state deleted now, a crash would replay that event onto no state, as if it
                    // were new. The deadline stays, and comes due again at the next scan.
                } else if prev.deletable_at(controls).is_some_and(|until| until <= now) {
                    self.save(&store, campaign, &deadline.key, Some(&prev), prev_bytes, None, batch, index, sink);
                } else {
                    store.remove_deadline(self.shard, deadline);
                }
            }
            (_, None) => store.remove_deadline(self.shard, deadline),
        }
    }

    /// A fired timer's trigger was delivered: its pending firing is cleared.
    fn confirmed(&mut self, set: &CampaignSet, key: &str, batch: &Arc<Batch>, index: u32, sink: &dyn Sink) {
        let job = &batch.jobs[index as usize];
        let (Some(store), Some((campaign_id, _))) = (self.states.store(job.partition), split_key(key)) else { return };
        let Some(campaign) = set.get(campaign_id) else { return };
        let (prev, prev_bytes) = self.load(&store, key);
        if let Some(next) = prev.clone().and_then(decide::delivered) {
            self.save(&store, campaign, key, prev.as_ref(), prev_bytes, Some(&next), batch, index, sink);
        }
    }

    /// Forwards the event to the repartition topic's `partition` (its player's state partition).
    fn forward(&mut self, event: &Event, partition: i32, player: &str, batch: &Arc<Batch>, index: u32, sink: &dyn Sink) {
        let job = &batch.jobs[index as usize];
        let settings = &self.processor.settings;
        let (p, o) = (job.partition.to_string(), job.offset.to_string());
        let headers = OwnedHeaders::new()
            .insert(Header { key: "rtcrm.source.partition", value: Some(p.as_str()) })
            .insert(Header { key: "rtcrm.source.offset", value: Some(o.as_str()) });
        self.processor.metrics.repartitioned.inc();
        let record = Record {
            partition: Some(partition),
            headers: Some(headers),
            ..Record::new(RecordKind::Forward, &settings.repartition_topic, Some(player.as_bytes()), Some(event.as_bytes()))
        };
        sink.send(record, batch, index);
    }

    /// The trigger id of `event` (spec §9); a repartitioned event without `event_id` keeps the
    /// position it had in the events topic.
    fn trigger_id(&self, campaign: i64, event: &Event, job: &Job) -> String {
        let (partition, offset) = job.origin.unwrap_or((job.partition, job.offset));
        trigger_id(campaign, event, &self.processor.settings.event_topic, partition, offset)
    }

    /// Builds a trigger (spec §9, plus spec §12's `variant`, `group` and `reason`) in the
    /// worker's buffer and sends it, keyed by the player: to the control topic for a
    /// control-group player.
    #[allow(clippy::too_many_arguments)]
    fn trigger(&mut self, campaign: &LiveCampaign, event: &[u8], id: &str, player: &str, extras: Extras, confirm: Option<(i32, String)>, batch: &Arc<Batch>, index: u32, sink: &dyn Sink) {
        let settings = &self.processor.settings;
        trigger_payload(&mut self.payload, campaign, event, id, &self.triggered_at, &extras);
        let topic = if extras.control {
            campaign.telemetry.control_matches.inc();
            &settings.control_topic
        } else {
            self.processor.metrics.triggers.inc();
            &settings.trigger_topic
        };
        let record = Record { confirm, ..Record::new(RecordKind::Trigger { campaign: campaign.def.id }, topic, Some(player.as_bytes()), Some(&self.payload)) };
        sink.send(record, batch, index);
    }
}

/// A trigger's JSON (spec §9, plus spec §12's `variant`, `group` and `reason`) into `out`: the
/// original's two fields first, unchanged in shape.
pub fn trigger_payload(out: &mut Vec<u8>, campaign: &LiveCampaign, event: &[u8], trigger_id: &str, triggered_at: &str, extras: &Extras) {
    out.clear();
    out.extend_from_slice(b"{\"campaign\":");
    out.extend_from_slice(campaign.trigger_json.get().as_bytes());
    out.extend_from_slice(b",\"event\":");
    out.extend_from_slice(event);
    out.extend_from_slice(b",\"trigger_id\":");
    out.extend_from_slice(serde_json::to_string(trigger_id).expect("a string serializes").as_bytes());
    // RFC 3339 text needs no escaping.
    out.extend_from_slice(b",\"triggered_at\":\"");
    out.extend_from_slice(triggered_at.as_bytes());
    out.push(b'"');
    if let Some(variant) = &extras.variant {
        out.extend_from_slice(b",\"variant\":");
        out.extend_from_slice(serde_json::to_string(variant).expect("a string serializes").as_bytes());
    }
    if extras.control {
        out.extend_from_slice(b",\"group\":\"control\"");
    }
    if extras.inactivity {
        out.extend_from_slice(b",\"reason\":\"inactivity\"");
    }
    out.push(b'}');
}

/// Deterministic per (event, campaign) (spec §9): `<campaign id>:<event_id>`, or
/// `<campaign id>:<topic>-<partition>-<offset>` when the event has no `event_id`.
pub fn trigger_id(campaign: i64, event: &Event, topic: &str, partition: i32, offset: i64) -> String {
    match str_field(event, "event_id") {
        Some(event_id) => format!("{campaign}:{event_id}"),
        None => format!("{campaign}:{topic}-{partition}-{offset}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(json: &str) -> Event {
        Event::parse(json.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn the_event_clock_prefers_created_at_then_received_at() {
        let t = event_time(&ev(r#"{"created_at":"2023-11-20T11:00:00.00Z","received_at":"2023-11-20T11:00:02Z"}"#), Clock::Event);
        assert_eq!(t, parse_time("2023-11-20T11:00:00Z").unwrap());
        let t = event_time(&ev(r#"{"created_at":"garbage","received_at":"2023-11-20T11:00:02Z"}"#), Clock::Event);
        assert_eq!(t, parse_time("2023-11-20T11:00:02Z").unwrap());
        let before = Utc::now();
        assert!(event_time(&ev(r#"{"created_at":"2023-11-20T11:00:00Z"}"#), Clock::Processing) >= before);
        assert!(event_time(&ev("{}"), Clock::Event) >= before);
    }

    #[test]
    fn the_trigger_key_is_the_player_id_as_text() {
        assert_eq!(player_key(&ev(r#"{"player_id":12345}"#)), "12345");
        assert_eq!(player_key(&ev(r#"{"player_id":"p-9"}"#)), "p-9");
        assert_eq!(player_key(&ev(r#"{"player_id":null}"#)), "");
        assert_eq!(player_key(&ev("{}")), "");
    }

    #[test]
    fn string_fields_are_borrowed_unless_escaped() {
        let e = ev(r#"{"game":"foe","event_name":"fi\u0067ht","n":1}"#);
        assert!(matches!(str_field(&e, "game"), Some(Cow::Borrowed("foe"))));
        assert_eq!(str_field(&e, "event_name").as_deref(), Some("fight"));
        assert_eq!(str_field(&e, "n"), None);
        assert_eq!(trigger_id(7, &ev(r#"{"event_id":"a\"b"}"#), "t", 0, 1), "7:a\"b");
        assert_eq!(trigger_id(7, &ev(r#"{"event_id":5}"#), "t", 2, 9), "7:t-2-9");
    }
}
