//! The consumer thread: polls the events topic (and the repartition topic), owns the assigned
//! partitions and their per-player state, cuts batches and hands them to the workers, runs the
//! partitions' due deadlines (inactivity timers, expiries), and drives the sink (offsets,
//! transactions) between polls.
//!
//! Partition ownership follows the group's rebalances. On assignment a partition's state store
//! is opened and restored (from its checkpoint and the changelog) on a thread of its own; the
//! partition is paused meanwhile and whatever was already fetched for it is held back, so no
//! event is evaluated before its state is there. Before a partition is revoked, the sink
//! finishes every batch in flight, delivers and commits (exactly-once: commits the open
//! transaction), the state store is flushed and released, and messages polled for it but not yet
//! dispatched are dropped (their next owner reads them from the commit). Partition `p` of both
//! topics shares one store (the range assignor gives both to the same member).

use crate::events::batch::{Batch, Job, Payload, Tracker};
use crate::events::evaluate::event_time;
use crate::events::sink::at_least_once::AtLeastOnce;
use crate::events::sink::exactly_once::ExactlyOnce;
use crate::events::sink::Sink;
use crate::events::workers::Workers;
use crate::processor::Processor;
use crate::state::decide::Source;
use crate::state::store::DeadlineKind;
use crate::state::stores::States;
use crate::telemetry::logging::LogLimiter;
use anyhow::{anyhow, Context, Result};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::TopicPartitionList;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Most events in one batch.
pub const MAX_BATCH: usize = 500;
/// How long one poll waits for the first message of a batch.
const POLL_WAIT: Duration = Duration::from_millis(50);
/// How often due deadlines are looked for (and, at-least-once, the stores flushed).
const DEADLINE_SCAN: Duration = Duration::from_millis(250);
/// How long an at-least-once deadline scan waits for the batches in flight to be done (no batch
/// is dispatched meanwhile); the scan is tried again at the next interval if they are not.
const SCAN_SETTLE: Duration = Duration::from_secs(1);
/// Most deadlines run per scan and partition.
const DEADLINES_PER_SCAN: usize = 2_000;
/// How long an assigned partition may wait for its committed offset before `/healthz` says so.
const WAITING_UNHEALTHY: Duration = Duration::from_secs(30);

/// The events consumer.
pub type EventConsumer = BaseConsumer<EventsContext>;

/// Rebalance handling, errors and statistics of the events consumer.
pub struct EventsContext {
    processor: Arc<Processor>,
    sink: Arc<dyn Sink>,
    states: Arc<States>,
    /// The events-topic partitions this process owns.
    owned: Mutex<BTreeSet<i32>>,
    /// (topic, partition) revoked during the current poll.
    revoked: Mutex<BTreeSet<(Source, i32)>>,
    /// State partitions whose store is restoring (their topic partitions are paused).
    restoring: Mutex<BTreeSet<i32>>,
    /// Jobs polled for partitions still restoring, held back in order.
    held: Mutex<BTreeMap<i32, Vec<Job>>>,
    /// A fatal consumer error (fenced static member, ...).
    fatal: Mutex<Option<String>>,
    /// The event path failed: revocations while closing commit nothing.
    abandoned: AtomicBool,
    limiter: LogLimiter,
    /// Since when some assigned partition has not been fetching (read from the statistics).
    waiting: Mutex<Option<(Instant, Vec<String>)>>,
}

impl EventsContext {
    fn check_fatal(&self) -> Result<()> {
        if let Some(reason) = self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(anyhow!(reason));
        }
        match self.states.failure() {
            Some(reason) => Err(anyhow!(reason)),
            None => Ok(()),
        }
    }

    /// How long some assigned partition has not been fetching: its consumer still waits for
    /// its committed offset (see `Health::set_partitions_waiting`). Known to within the
    /// statistics interval.
    pub fn waiting_for_offsets(&self) -> Option<Duration> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(since, _)| since.elapsed())
    }

    /// Notes which assigned partitions are not fetching, from librdkafka's statistics, and
    /// reports them in `/healthz` once they have waited [`WAITING_UNHEALTHY`].
    fn note_waiting(&self, stats: &Statistics) {
        let settings = &self.processor.settings;
        // Both topics' partition p are assigned together (range assignor, co-partitioned).
        let owned = self.owned.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut waiting: Vec<String> = [&settings.event_topic, &settings.repartition_topic]
            .into_iter()
            .filter_map(|topic| stats.topics.get(topic.as_str()).map(|t| (topic, t)))
            .flat_map(|(topic, t)| {
                t.partitions
                    .values()
                    .filter(|p| owned.contains(&p.partition) && p.fetch_state != "active")
                    .map(move |p| format!("{topic}[{}]", p.partition))
            })
            .collect();
        waiting.sort();
        let mut slot = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if waiting.is_empty() {
            *slot = None;
        } else {
            let since = slot.as_ref().map_or_else(Instant::now, |(since, _)| *since);
            *slot = Some((since, waiting));
        }
        let report = slot.as_ref().filter(|(since, _)| since.elapsed() >= WAITING_UNHEALTHY).map(|(since, partitions)| {
            format!(
                "{} assigned partition(s) ({}) have waited {} s for their committed offsets: the group coordinator does not \
                 answer, or holds them back behind an unfinished transactional offset commit",
                partitions.len(),
                partitions.join(", "),
                since.elapsed().as_secs()
            )
        });
        self.processor.health.set_partitions_waiting(report);
    }

    fn source(&self, topic: &str) -> Source {
        if topic == self.processor.settings.repartition_topic {
            Source::Repartitioned
        } else {
            Source::Events
        }
    }

    /// Drops the polled jobs of partitions revoked meanwhile.
    fn drop_revoked(&self, jobs: &mut Vec<Job>) {
        let revoked = std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|p| p.into_inner()));
        if !revoked.is_empty() {
            jobs.retain(|j| !revoked.contains(&(j.source, j.partition)));
        }
    }

    fn owned_count(&self) -> usize {
        self.owned.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Both topics' partition `p`, as far as they are assigned.
    fn topic_partitions(&self, consumer: &BaseConsumer<Self>, p: i32) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        if let Ok(assigned) = consumer.assignment() {
            for e in assigned.elements().iter().filter(|e| e.partition() == p) {
                tpl.add_partition(e.topic(), p);
            }
        }
        tpl
    }
}

impl ClientContext for EventsContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.processor.kafka_errors.record("events consumer", &error, reason);
        if matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal | RDKafkaErrorCode::FencedInstanceId)) {
            let hint = if reason.to_ascii_lowercase().contains("fenced") {
                " (another process joined the group with the same --instance-id)"
            } else {
                ""
            };
            self.fatal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(|| format!("the events consumer failed fatally: {reason}{hint}"));
        }
    }

    fn stats(&self, stats: Statistics) {
        let owned = self.owned.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let lag = stats
            .topics
            .get(&self.processor.settings.event_topic)
            .map(|t| t.partitions.values().filter(|p| owned.contains(&p.partition) && p.consumer_lag >= 0).map(|p| p.consumer_lag).sum())
            .unwrap_or(0);
        self.processor.metrics.consumer_lag.set(lag);
        self.note_waiting(&stats);
    }
}

impl ConsumerContext for EventsContext {
    /// Committed offsets (at-least-once: automatic and on revocation) tell the per-player state
    /// which events can no longer be replayed (see `PlayerState::may_be_replayed`).
    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, offsets: &TopicPartitionList) {
        if result.is_err() {
            return;
        }
        for e in offsets.elements() {
            if let rdkafka::Offset::Offset(next) = e.offset() {
                self.states.record_committed(self.source(e.topic()), e.partition(), next);
            }
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else { return };
        let revoked: Vec<(Source, i32)> = list.elements().iter().map(|e| (self.source(e.topic()), e.partition())).collect();
        self.revoked.lock().unwrap_or_else(|p| p.into_inner()).extend(&revoked);
        if self.abandoned.load(Ordering::SeqCst) {
            tracing::info!(?revoked, "partitions released after a failure (nothing more is committed)");
            return;
        }
        if consumer.assignment_lost() {
            self.sink.lost(consumer);
        } else {
            self.sink.before_revoke(consumer);
        }
        // A state partition is released when neither topic's partition of its number stays.
        let remaining: BTreeSet<i32> = consumer
            .assignment()
            .map(|a| a.elements().iter().filter(|e| !revoked.contains(&(self.source(e.topic()), e.partition()))).map(|e| e.partition()).collect())
            .unwrap_or_default();
        let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        for (source, p) in &revoked {
            if *source == Source::Events {
                owned.remove(p);
            }
            if !remaining.contains(p) {
                self.states.release(&self.processor, *p);
                self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(p);
                self.restoring.lock().unwrap_or_else(|p| p.into_inner()).remove(p);
            }
        }
        tracing::info!(?revoked, "partitions revoked (drained, committed, state flushed)");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let assigned: Vec<(Source, i32)> = list.elements().iter().map(|e| (self.source(e.topic()), e.partition())).collect();
                self.owned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(assigned.iter().filter(|(s, _)| *s == Source::Events).map(|(_, p)| *p));
                let numbers: BTreeSet<i32> = assigned.iter().map(|(_, p)| *p).collect();
                for p in numbers {
                    match self.states.assign(&self.processor, p) {
                        Ok(true) => {
                            self.restoring.lock().unwrap_or_else(|p| p.into_inner()).insert(p);
                            if let Err(e) = consumer.pause(&self.topic_partitions(consumer, p)) {
                                tracing::warn!(partition = p, error = %e, "pausing a partition while its state is restored");
                            }
                        }
                        Ok(false) => {}
                        Err(e) => {
                            self.fatal.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| format!("opening the per-player state: {e}"));
                        }
                    }
                }
                tracing::info!(?assigned, owned = self.owned_count(), "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "consumer group rebalance failed"),
        }
        self.processor.metrics.assigned_partitions.set(self.owned_count() as i64);
        self.processor.health.set_events_assigned();
    }
}

/// The event path until `stop`: then every consumed event is finished, its records delivered
/// and its offset committed. An error (a fatal Kafka error, a dead worker) stops the process.
pub fn run(processor: Arc<Processor>, stop: watch::Receiver<bool>) -> Result<()> {
    // No event is evaluated before every campaign in the topic is loaded.
    while !processor.health.campaigns_loaded() {
        if *stop.borrow() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let settings = &processor.settings;
    let exactly_once = settings.delivery == crate::config::Delivery::ExactlyOnce;
    let partitions = crate::kafka::partition_count(rdkafka::producer::Producer::client(&processor.producer), &settings.event_topic, Duration::from_secs(30))?
        .with_context(|| format!("the events topic `{}` does not exist", settings.event_topic))?;
    let states = States::open(&processor, partitions as i32)?;
    let tracker = Arc::new(Tracker::default());
    let limits = *processor.record_limits.lock().unwrap_or_else(|p| p.into_inner());
    let sink: Arc<dyn Sink> = if exactly_once {
        Arc::new(ExactlyOnce::new(processor.clone(), tracker.clone(), limits, stop.clone(), states.clone())?)
    } else {
        Arc::new(AtLeastOnce::new(processor.clone(), tracker.clone(), limits, states.clone())?)
    };
    let context = EventsContext {
        processor: processor.clone(),
        sink: sink.clone(),
        states: states.clone(),
        owned: Mutex::default(),
        revoked: Mutex::default(),
        restoring: Mutex::default(),
        held: Mutex::default(),
        fatal: Mutex::default(),
        abandoned: AtomicBool::new(false),
        limiter: LogLimiter::default(),
        waiting: Mutex::default(),
    };
    let consumer: EventConsumer =
        crate::kafka::event_consumer_config(settings, exactly_once).create_with_context(context).context("creating the events consumer")?;
    consumer
        .subscribe(&[&settings.event_topic, &settings.repartition_topic])
        .with_context(|| format!("subscribing to `{}` and `{}`", settings.event_topic, settings.repartition_topic))?;
    let workers = Workers::start(&processor, &sink, &states, settings.workers)?;
    let consumed = consume(&processor, &consumer, &*sink, &workers, &tracker, &states, &stop);
    tracing::info!("stopping: finishing in-flight events");
    // After a failure nothing more is committed: what was not, is processed again by the next
    // owner (at-least-once) or was never part of a committed transaction (exactly-once).
    let closed = if consumed.is_ok() {
        let closed = sink.close(&consumer);
        if closed.is_ok() && !exactly_once {
            if let Err(e) = states.flush_all() {
                tracing::warn!(error = %e, "flushing the per-player state at shutdown");
            }
        }
        closed
    } else {
        consumer.context().abandoned.store(true, Ordering::SeqCst);
        Ok(())
    };
    workers.stop();
    consumer.unsubscribe();
    drop(consumer);
    for store in states.all() {
        let _ = store.persist();
    }
    consumed?;
    closed?;
    tracing::info!("events consumer stopped; offsets committed");
    Ok(())
}

/// Turns a polled message into a job (the repartition topic's records carry their origin).
fn job(context: &EventsContext, m: &rdkafka::message::BorrowedMessage<'_>, limits: &rtcrm_sandbox::EventLimits) -> Job {
    let mut job = Job::new(m.partition(), m.offset(), m.key(), m.payload(), limits);
    job.source = context.source(m.topic());
    if job.source == Source::Repartitioned {
        let header = |name: &str| -> Option<i64> {
            let headers = m.headers()?;
            let h = headers.iter().find(|h| h.key == name)?;
            std::str::from_utf8(h.value?).ok()?.parse().ok()
        };
        if let (Some(p), Some(o)) = (header("rtcrm.source.partition"), header("rtcrm.source.offset")) {
            job.origin = Some((p as i32, o));
        }
    }
    job
}

#[allow(clippy::too_many_arguments)]
fn consume(
    processor: &Processor,
    consumer: &EventConsumer,
    sink: &dyn Sink,
    workers: &Workers,
    tracker: &Arc<Tracker>,
    states: &Arc<States>,
    stop: &watch::Receiver<bool>,
) -> Result<()> {
    let metrics = &processor.metrics;
    let context = consumer.context();
    let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let limits = processor.sandbox.event_limits();
    let mut last_scan = Instant::now();
    let mut deadline_batch: Option<Arc<Batch>> = None;
    let exactly_once = processor.settings.delivery == crate::config::Delivery::ExactlyOnce;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        context.check_fatal()?;
        workers.check()?;
        // The first message waits up to POLL_WAIT; the rest of the batch is what is already there.
        let mut wait = POLL_WAIT;
        while jobs.len() < MAX_BATCH {
            match consumer.poll(wait) {
                None => break,
                Some(Ok(m)) => jobs.push(job(context, &m, &limits)),
                Some(Err(e)) => {
                    if context.limiter.allow("poll") {
                        tracing::warn!(error = %e, "consuming events");
                    }
                    break;
                }
            }
            wait = Duration::ZERO;
        }
        context.drop_revoked(&mut jobs);
        if sink.take_rewind(consumer)? {
            jobs.clear();
            context.held.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
        let jobs_now = release_restored(context, consumer, states, std::mem::take(&mut jobs));
        if !jobs_now.is_empty() {
            if sink.before_dispatch(consumer)? {
                advance_clocks(processor, states, &jobs_now);
                metrics.events.inc_by(jobs_now.iter().filter(|j| j.offset >= 0).count() as u64);
                let batch = Batch::dispatch(jobs_now, workers.len(), tracker);
                workers.dispatch(&batch)?;
            } else {
                // The consumer is rewound at the next turn: these events are read again.
                context.held.lock().unwrap_or_else(|p| p.into_inner()).clear();
            }
        }
        sink.after_poll(consumer)?;
        if last_scan.elapsed() >= DEADLINE_SCAN && deadline_batch.as_ref().is_none_or(|b| b.is_done()) && sink.state_settled() {
            last_scan = Instant::now();
            // At-least-once writes the partition clocks to disk with the scan: every event they
            // have seen must be evaluated by then. Otherwise the clock restored after a crash is
            // ahead of the states written with it, and fires timers that the replayed events
            // re-arm. (Exactly-once writes them with its transactions.)
            if exactly_once || tracker.wait_all_done(SCAN_SETTLE) {
                deadline_batch = run_deadlines(processor, consumer, states, sink, workers, tracker)?;
            }
        }
        metrics.in_flight_events.set(tracker.in_flight_events() as i64);
    }
}

/// The jobs that may be dispatched now: those of partitions whose state is restored, after the
/// jobs held back for partitions that have just finished restoring (which are resumed).
fn release_restored(context: &EventsContext, consumer: &EventConsumer, states: &States, jobs: Vec<Job>) -> Vec<Job> {
    let mut held = context.held.lock().unwrap_or_else(|p| p.into_inner());
    let mut restoring = context.restoring.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = Vec::with_capacity(jobs.len());
    let done: Vec<i32> = restoring.iter().copied().filter(|p| states.store(*p).is_some_and(|s| s.is_restored())).collect();
    for p in done {
        restoring.remove(&p);
        out.extend(held.remove(&p).unwrap_or_default());
        if let Err(e) = consumer.resume(&context.topic_partitions(consumer, p)) {
            tracing::warn!(partition = p, error = %e, "resuming a restored partition");
        }
    }
    for job in jobs {
        if restoring.contains(&job.partition) {
            held.entry(job.partition).or_default().push(job);
        } else {
            out.push(job);
        }
    }
    out
}

/// Advances the partition clocks with the batch's event times (spec §12: time per partition).
fn advance_clocks(processor: &Processor, states: &States, jobs: &[Job]) {
    let mut latest: BTreeMap<i32, i64> = BTreeMap::new();
    for job in jobs {
        if let Payload::Event(event) = &job.payload {
            let t = event_time(event, processor.settings.clock).timestamp_millis();
            let e = latest.entry(job.partition).or_insert(t);
            *e = (*e).max(t);
        }
    }
    for (p, t) in latest {
        if let Some(store) = states.store(p) {
            store.saw(t);
        }
    }
}

/// Dispatches the due deadlines and confirmed timer triggers of every restored partition as one
/// batch (state work only; it commits no offset). At-least-once flushes the stores first, so the
/// scan sees every change made so far.
fn run_deadlines(processor: &Processor, consumer: &EventConsumer, states: &Arc<States>, sink: &dyn Sink, workers: &Workers, tracker: &Arc<Tracker>) -> Result<Option<Arc<Batch>>> {
    if processor.settings.delivery != crate::config::Delivery::ExactlyOnce {
        states.flush_all().map_err(|e| anyhow!("writing the per-player state: {e}"))?;
    }
    let mut jobs = Vec::new();
    for store in states.all().into_iter().filter(|s| s.is_restored()) {
        let p = store.partition;
        for key in states.take_confirmed(p) {
            jobs.push(Job::state_work(p, Payload::Confirmed(key)));
        }
        let now = store.now();
        for deadline in store.due(now, DEADLINES_PER_SCAN).map_err(|e| anyhow!("{e}"))? {
            if deadline.kind == DeadlineKind::Pending && states.is_in_flight(p, &deadline.key) {
                continue;
            }
            jobs.push(Job::state_work(p, Payload::Deadline(deadline)));
        }
    }
    if jobs.is_empty() {
        return Ok(None);
    }
    // Not now if the consumer must first be rewound: the next scan finds these deadlines again.
    if !sink.before_dispatch(consumer)? {
        return Ok(None);
    }
    let batch = Batch::dispatch(jobs, workers.len(), tracker);
    workers.dispatch(&batch)?;
    Ok(Some(batch))
}
