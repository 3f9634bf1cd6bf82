//! The consumer thread: polls the events topic, owns the assigned partitions, cuts batches and
//! hands them to the workers, and drives the sink (offsets, transactions) between polls.
//!
//! Partition ownership follows the group's rebalances: a partition is owned from its
//! assignment; before it is revoked, the sink finishes every batch in flight, delivers and
//! commits (exactly-once: commits the open transaction), and messages of the revoked partitions
//! that were polled but not yet dispatched are dropped (their next owner reads them from the
//! commit).

use crate::events::batch::{Batch, Job, Tracker};
use crate::events::sink::at_least_once::AtLeastOnce;
use crate::events::sink::exactly_once::ExactlyOnce;
use crate::events::sink::Sink;
use crate::events::workers::Workers;
use crate::processor::Processor;
use crate::telemetry::logging::LogLimiter;
use anyhow::{anyhow, Context, Result};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Most events in one batch.
pub const MAX_BATCH: usize = 500;
/// How long one poll waits for the first message of a batch.
const POLL_WAIT: Duration = Duration::from_millis(50);

/// The events consumer.
pub type EventConsumer = BaseConsumer<EventsContext>;

/// Rebalance handling, errors and statistics of the events consumer.
pub struct EventsContext {
    processor: Arc<Processor>,
    sink: Arc<dyn Sink>,
    /// The partitions this process owns.
    owned: Mutex<BTreeSet<i32>>,
    /// Partitions revoked during the current poll.
    revoked: Mutex<BTreeSet<i32>>,
    /// A fatal consumer error (fenced static member, ...).
    fatal: Mutex<Option<String>>,
    /// The event path failed: revocations while closing commit nothing.
    abandoned: AtomicBool,
    limiter: LogLimiter,
}

impl EventsContext {
    fn check_fatal(&self) -> Result<()> {
        match self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            Some(reason) => Err(anyhow!(reason)),
            None => Ok(()),
        }
    }

    /// Drops the polled jobs of partitions revoked meanwhile.
    fn drop_revoked(&self, jobs: &mut Vec<Job>) {
        let revoked = std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|p| p.into_inner()));
        if !revoked.is_empty() {
            jobs.retain(|j| !revoked.contains(&j.partition));
        }
    }

    fn partitions(&self, rebalance_list: &rdkafka::TopicPartitionList) -> Vec<i32> {
        rebalance_list.elements_for_topic(&self.processor.settings.event_topic).iter().map(|e| e.partition()).collect()
    }

    fn owned_count(&self) -> usize {
        self.owned.lock().unwrap_or_else(|p| p.into_inner()).len()
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
        let owned: BTreeSet<i32> = self.owned.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let lag = stats
            .topics
            .get(&self.processor.settings.event_topic)
            .map(|t| t.partitions.values().filter(|p| owned.contains(&p.partition) && p.consumer_lag >= 0).map(|p| p.consumer_lag).sum())
            .unwrap_or(0);
        self.processor.metrics.consumer_lag.set(lag);
    }
}

impl ConsumerContext for EventsContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions = self.partitions(list);
            self.revoked.lock().unwrap_or_else(|p| p.into_inner()).extend(&partitions);
            if self.abandoned.load(Ordering::SeqCst) {
                tracing::info!(?partitions, "partitions released after a failure (nothing more is committed)");
            } else if consumer.assignment_lost() {
                self.sink.lost(consumer);
            } else {
                self.sink.before_revoke(consumer);
            }
            let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
            for p in &partitions {
                owned.remove(p);
            }
            tracing::info!(?partitions, "partitions revoked (drained and committed)");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions = self.partitions(list);
                let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
                owned.extend(&partitions);
                drop(owned);
                tracing::info!(?partitions, owned = self.owned_count(), "partitions assigned");
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
    let tracker = Arc::new(Tracker::default());
    let limits = *processor.record_limits.lock().unwrap_or_else(|p| p.into_inner());
    let sink: Arc<dyn Sink> = if exactly_once {
        Arc::new(ExactlyOnce::new(processor.clone(), tracker.clone(), limits, stop.clone())?)
    } else {
        Arc::new(AtLeastOnce::new(processor.clone(), tracker.clone(), limits)?)
    };
    let context = EventsContext {
        processor: processor.clone(),
        sink: sink.clone(),
        owned: Mutex::default(),
        revoked: Mutex::default(),
        fatal: Mutex::default(),
        abandoned: AtomicBool::new(false),
        limiter: LogLimiter::default(),
    };
    let consumer: EventConsumer =
        crate::kafka::event_consumer_config(settings, exactly_once).create_with_context(context).context("creating the events consumer")?;
    consumer.subscribe(&[&settings.event_topic]).with_context(|| format!("subscribing to `{}`", settings.event_topic))?;
    let workers = Workers::start(&processor, &sink, settings.workers)?;
    let consumed = consume(&processor, &consumer, &*sink, &workers, &tracker, &stop);
    tracing::info!("stopping: finishing in-flight events");
    // After a failure nothing more is committed: what was not, is processed again by the next
    // owner (at-least-once) or was never part of a committed transaction (exactly-once).
    let closed = if consumed.is_ok() {
        sink.close(&consumer)
    } else {
        consumer.context().abandoned.store(true, Ordering::SeqCst);
        Ok(())
    };
    workers.stop();
    consumer.unsubscribe();
    drop(consumer);
    consumed?;
    closed?;
    tracing::info!("events consumer stopped; offsets committed");
    Ok(())
}

fn consume(processor: &Processor, consumer: &EventConsumer, sink: &dyn Sink, workers: &Workers, tracker: &Arc<Tracker>, stop: &watch::Receiver<bool>) -> Result<()> {
    let metrics = &processor.metrics;
    let context = consumer.context();
    let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let limits = processor.sandbox.event_limits();
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
                Some(Ok(m)) => jobs.push(Job::new(m.partition(), m.offset(), m.key(), m.payload(), &limits)),
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
        }
        if !jobs.is_empty() {
            sink.before_dispatch()?;
            metrics.events.inc_by(jobs.len() as u64);
            let batch = Batch::dispatch(std::mem::take(&mut jobs), workers.len(), tracker);
            workers.dispatch(&batch)?;
        }
        sink.after_poll(consumer)?;
        metrics.in_flight_events.set(tracker.in_flight_events() as i64);
    }
}
