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
use chrono::{DateTime, Utc};
use crate::campaigns::instances::InstanceBudget;
use crate::telemetry::stats::LastError;
use rtcrm_sandbox::{EvalError, Event, Sandbox, Verdict};
use std::borrow::Cow;
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
    let telemetry = &campaign.telemetry;
    telemetry.evaluations.inc();
    let result = match campaign.instances.take(tick) {
        Some(instance) => Ok(instance),
        None => sandbox.filter(&campaign.compiled, &telemetry.label.campaign, campaign.limits).map(|filter| budget.admit(filter)),
    }
    .and_then(|mut instance| {
        let verdict = instance.filter.eval(event);
        campaign.instances.put(instance);
        verdict
    });
    telemetry.stats.record(&result);
    match &result {
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
    result
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

/// A failed evaluation: recorded as the campaign's last error; after `--quarantine-after` in a
/// row, the campaign is quarantined and its status published.
fn failed(processor: &Arc<Processor>, campaign: &LiveCampaign, err: &EvalError, job: &Job) {
    if err.caused_by_event() {
        // The event's fault, not the filter's (spec §7): dead-lettered by the caller, never
        // counted toward quarantine.
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

/// One worker's evaluation state: scratch buffers reused across events.
pub struct Evaluator {
    processor: Arc<Processor>,
    pair: String,
    payload: Vec<u8>,
    triggered_at: String,
}

impl Evaluator {
    pub fn new(processor: Arc<Processor>) -> Evaluator {
        Evaluator { processor, pair: String::new(), payload: Vec::with_capacity(4096), triggered_at: String::new() }
    }

    /// Evaluates shard `shard` of `batch` against the campaigns in force now (one snapshot for
    /// the whole shard), sending its records to `sink`.
    pub fn shard(&mut self, batch: &Arc<Batch>, shard: usize, sink: &dyn Sink) {
        let set = self.processor.registry.snapshot();
        let tick = self.processor.instances.tick();
        self.triggered_at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        for &job in &batch.shards[shard] {
            self.process(&set, batch, job, sink, tick);
        }
        self.processor.instances.enforce(&set);
        self.processor.metrics.filter_instances.set(self.processor.instances.live() as i64);
    }

    fn process(&mut self, set: &CampaignSet, batch: &Arc<Batch>, index: u32, sink: &dyn Sink, tick: u64) {
        let job = &batch.jobs[index as usize];
        let processor = self.processor.clone();
        let settings = &processor.settings;
        let event = match &job.payload {
            Payload::Event(event) => event,
            Payload::Invalid { reason, .. } => {
                tracing::warn!(partition = job.partition, offset = job.offset, reason = %reason, "event sent to the dead-letter topic");
                self.processor.metrics.dead_letters.inc();
                sink.send(dead_letter(settings, job, reason, None), batch, index);
                return;
            }
        };
        let Some(meta) = EventMeta::read(event, settings.clock) else { return };
        let mut event_fault = None;
        for campaign in set.candidates(&meta.game, &meta.event_name, &mut self.pair) {
            if precheck(campaign, &meta).is_some() {
                continue;
            }
            match evaluate_filter(&self.processor, campaign, event, job, tick) {
                Ok(Verdict { matched: true, .. }) => self.trigger(campaign, event, job, batch, index, sink),
                Err(err) if err.caused_by_event() && event_fault.is_none() => {
                    event_fault = Some(format!("the event made the filter of campaign {} fail: {err}", campaign.def.id));
                }
                _ => {}
            }
        }
        // One dead letter per event, however many filters it made fail; the other campaigns'
        // triggers went out.
        if let Some(reason) = event_fault {
            tracing::warn!(partition = job.partition, offset = job.offset, reason = %reason, "event sent to the dead-letter topic");
            self.processor.metrics.dead_letters.inc();
            sink.send(dead_letter(settings, job, &reason, None), batch, index);
        }
    }

    /// Builds the trigger (spec §9) in the worker's buffer and sends it, keyed by the player.
    fn trigger(&mut self, campaign: &LiveCampaign, event: &Event, job: &Job, batch: &Arc<Batch>, index: u32, sink: &dyn Sink) {
        let settings = &self.processor.settings;
        let id = trigger_id(campaign.def.id, event, &settings.event_topic, job.partition, job.offset);
        let out = &mut self.payload;
        out.clear();
        out.extend_from_slice(b"{\"campaign\":");
        out.extend_from_slice(campaign.trigger_json.get().as_bytes());
        out.extend_from_slice(b",\"event\":");
        out.extend_from_slice(event.as_bytes());
        out.extend_from_slice(b",\"trigger_id\":");
        out.extend_from_slice(serde_json::to_string(&id).expect("a string serializes").as_bytes());
        out.extend_from_slice(b",\"triggered_at\":\"");
        out.extend_from_slice(self.triggered_at.as_bytes());
        out.extend_from_slice(b"\"}");
        let key = player_key(event);
        self.processor.metrics.triggers.inc();
        let record = Record {
            kind: RecordKind::Trigger { campaign: campaign.def.id },
            topic: &settings.trigger_topic,
            key: Some(key.as_bytes()),
            payload: Some(&self.payload),
            headers: None,
        };
        sink.send(record, batch, index);
    }
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
