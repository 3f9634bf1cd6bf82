//! At-least-once delivery (the default, spec §8): an idempotent producer (`acks=all`, no
//! duplicates or reordering from its own retries); each record holds its batch open until the
//! broker acknowledges it, so a batch's offsets are stored — and then committed by the consumer's
//! auto-commit — only after every trigger it produced is delivered. A crash can repeat triggers
//! (with the same `trigger_id`), never lose one.
//!
//! A failed delivery goes to the retry thread: sent again with bounded backoff when the error is
//! retriable; when the broker refused the record for good, a trigger is replaced by its event's
//! dead letter, and a dead letter is counted and logged at error level, releasing the offset.

use super::{base_record, RecordLimits, dead_letter, enqueue, is_permanent, oversize, Record, RecordKind, Sink};
use crate::events::batch::{Batch, Offsets, Tracker};
use crate::state::decide::Source;
use crate::state::stores::States;
use crate::events::consumer::EventConsumer;
use crate::kafka::{client_config, ClientErrors};
use crate::processor::Processor;
use crate::telemetry::logging::LogLimiter;
use anyhow::{anyhow, Context, Result};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message, OwnedHeaders};
use rdkafka::producer::{Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Longest wait between rounds of re-sending failed records.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a revocation or shutdown waits for in-flight deliveries.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// What a record in flight belongs to.
struct Pending {
    batch: Arc<Batch>,
    job: u32,
    kind: RecordKind,
    attempt: u32,
    /// A timer trigger to confirm to the state once delivered.
    confirm: Option<(i32, String)>,
}

/// A failed delivery, for the retry thread.
struct Failed {
    pending: Box<Pending>,
    error: KafkaError,
    topic: String,
    partition: i32,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
}

struct DeliveryContext {
    errors: ClientErrors,
    failed: Mutex<mpsc::Sender<Failed>>,
    /// A fatal producer error (the idempotent producer cannot go on).
    fatal: Arc<Mutex<Option<String>>>,
    /// Deliveries are failing (cleared by the next success).
    failing: Arc<AtomicBool>,
    processor: Arc<Processor>,
    states: Arc<States>,
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.record("producer", &error, reason);
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.fatal.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| format!("the producer failed fatally: {reason}"));
        }
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Box<Pending>) {
        match result {
            Ok(message) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    self.processor.health.set_delivery_failing(None);
                }
                if let RecordKind::Changelog { partition } = pending.kind {
                    if let Some(store) = self.states.store(partition) {
                        store.changelog_acked(message.offset());
                    }
                }
                let Pending { batch, confirm, .. } = *pending;
                if let Some((partition, key)) = confirm {
                    self.states.confirm(partition, key);
                }
                batch.release();
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight), _)) => {
                // The producer is being destroyed at shutdown, after the drain gave up.
                pending.batch.release();
            }
            Err((error, message)) => {
                let failed = Failed {
                    pending,
                    error: error.clone(),
                    topic: message.topic().to_owned(),
                    partition: message.partition(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                    headers: message.headers().map(|h| h.detach()),
                };
                if let Err(mpsc::SendError(failed)) = self.failed.lock().unwrap_or_else(|p| p.into_inner()).send(failed) {
                    tracing::error!(error = %failed.error, "a failed delivery cannot be retried (shutting down); its event's offset passes");
                    failed.pending.batch.release();
                }
            }
        }
    }
}

type DataProducer = ThreadedProducer<DeliveryContext>;

/// The at-least-once sink.
pub struct AtLeastOnce {
    producer: Arc<DataProducer>,
    tracker: Arc<Tracker>,
    processor: Arc<Processor>,
    outlet: Arc<Outlet>,
    fatal: Arc<Mutex<Option<String>>>,
}

/// Sending a held record, shared by the workers and the redelivery thread: what cannot be sent
/// is dead-lettered or counted; a failing producer stops the event path.
struct Outlet {
    processor: Arc<Processor>,
    fatal: Arc<Mutex<Option<String>>>,
    limits: RecordLimits,
}

impl AtLeastOnce {
    /// The idempotent data producer and its retry thread.
    pub fn new(processor: Arc<Processor>, tracker: Arc<Tracker>, limits: RecordLimits, states: Arc<States>) -> Result<AtLeastOnce> {
        let settings = &processor.settings;
        let (tx, rx) = mpsc::channel();
        let fatal = Arc::new(Mutex::new(None));
        let failing = Arc::new(AtomicBool::new(false));
        let context = DeliveryContext {
            errors: processor.kafka_errors.clone(),
            failed: Mutex::new(tx),
            fatal: fatal.clone(),
            failing: failing.clone(),
            processor: processor.clone(),
            states,
        };
        let producer: DataProducer = client_config(settings, "triggers")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            // Small batches, sent at once: a trigger should reach the player within milliseconds.
            .set("linger.ms", "1")
            .set("batch.size", limits.batch_size())
            // librdkafka retries on its own this long; then the retry thread takes over.
            .set("message.timeout.ms", "120000")
            .create_with_context(context)
            .context("creating the Kafka producer for triggers")?;
        let producer = Arc::new(producer);
        let outlet = Arc::new(Outlet { processor: processor.clone(), fatal: fatal.clone(), limits });
        let (weak, retry_outlet) = (Arc::downgrade(&producer), outlet.clone());
        std::thread::Builder::new()
            .name("rtcrm-redelivery".into())
            .spawn(move || redeliver(rx, weak, retry_outlet, failing))
            .context("starting the redelivery thread")?;
        Ok(AtLeastOnce { producer, tracker, processor, outlet, fatal })
    }

    fn check_fatal(&self) -> Result<()> {
        match self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            Some(reason) => Err(anyhow!(reason)),
            None => Ok(()),
        }
    }

    fn store(&self, consumer: &EventConsumer, offsets: Offsets) {
        store_offsets(consumer, &self.processor.settings, offsets);
    }

    fn drain_and_commit(&self, consumer: &EventConsumer, why: &str) -> bool {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let drained = self.tracker.drain(|o| self.store(consumer, o), || Instant::now() < deadline);
        if !drained {
            tracing::warn!(
                events = self.tracker.in_flight_events(),
                "{why}: deliveries still pending after {} s; their events will be processed again",
                DRAIN_TIMEOUT.as_secs()
            );
        }
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "{why}: committing offsets failed; the next owner starts from the last commit"),
        }
        drained
    }
}

/// Stores the next offsets to consume (ignored for partitions no longer assigned: their next
/// owner re-reads from the last commit, which is at-least-once).
fn store_offsets(consumer: &EventConsumer, settings: &crate::config::Settings, offsets: Offsets) {
    let mut tpl = TopicPartitionList::new();
    for ((source, partition), next) in offsets {
        let topic = match source {
            Source::Events => &settings.event_topic,
            Source::Repartitioned => &settings.repartition_topic,
        };
        if tpl.add_partition_offset(topic, partition, Offset::Offset(next)).is_err() {
            continue;
        }
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        tracing::debug!(error = %e, "offsets not stored (partitions revoked meanwhile)");
    }
}

impl Sink for AtLeastOnce {
    fn send(&self, record: Record<'_>, batch: &Arc<Batch>, job: u32) {
        batch.hold();
        let pending = Box::new(Pending { batch: batch.clone(), job, kind: record.kind, attempt: 0, confirm: record.confirm.clone() });
        self.outlet.send(&self.producer, &record, pending);
    }

    fn before_dispatch(&self, _consumer: &EventConsumer) -> Result<bool> {
        self.check_fatal().map(|()| true)
    }

    fn after_poll(&self, consumer: &EventConsumer) -> Result<()> {
        let offsets = self.tracker.pop_done();
        if !offsets.is_empty() {
            self.store(consumer, offsets);
        }
        self.check_fatal()
    }

    fn take_rewind(&self, _consumer: &EventConsumer) -> Result<bool> {
        Ok(false)
    }

    fn before_revoke(&self, consumer: &EventConsumer) {
        self.drain_and_commit(consumer, "partitions revoked");
    }

    fn lost(&self, _consumer: &EventConsumer) {
        tracing::warn!("the events assignment was lost; its next owner processes from the last commit");
    }

    fn state_settled(&self) -> bool {
        true
    }

    fn close(&self, consumer: &EventConsumer) -> Result<()> {
        self.drain_and_commit(consumer, "stopping");
        if let Err(e) = self.producer.flush(Duration::from_secs(10)) {
            tracing::warn!(error = %e, "flushing the producer at shutdown");
        }
        self.check_fatal()
    }
}

impl Outlet {
    /// Sends a record that holds its batch (the hold passes to its delivery report).
    fn send(&self, producer: &DataProducer, record: &Record<'_>, pending: Box<Pending>) {
        if let Some(reason) = oversize(record, &self.limits) {
            return self.refused(producer, pending, &reason);
        }
        match enqueue(producer, base_record(record, pending), &self.processor.metrics) {
            Ok(()) => {}
            Err((e, back)) if is_permanent(&e) => self.refused(producer, back.delivery_opaque, &format!("the producer refused the record: {e}")),
            Err((e, _)) => {
                // The producer failed, not the record: the batch keeps its hold (it is never
                // committed) and the event path stops at the next poll.
                tracing::error!(error = %e, "the producer refused a record; stopping without committing its event");
                self.fatal
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(|| format!("the producer cannot take records: {e}"));
            }
        }
    }

    /// A record that cannot be delivered: a trigger is replaced by its event's dead letter (which
    /// inherits the hold); a dead letter is counted and logged at error level, and releases it.
    fn refused(&self, producer: &DataProducer, pending: Box<Pending>, reason: &str) {
        let (processor, metrics) = (&self.processor, &self.processor.metrics);
        let event = &pending.batch.jobs[pending.job as usize];
        match pending.kind {
            RecordKind::Trigger { .. } | RecordKind::Forward => {
                metrics.delivery_failed("dead_lettered");
                metrics.dead_letters.inc();
                let (what, campaign) = match pending.kind {
                    RecordKind::Trigger { campaign } => (format!("the trigger of campaign {campaign}"), Some(campaign)),
                    _ => ("the event's copy for the repartition topic".to_string(), None),
                };
                let reason = format!("{what} was refused: {reason}");
                tracing::warn!(campaign, partition = event.partition, offset = event.offset, "{reason}; sending the event to the dead-letter topic");
                let batch = pending.batch.clone();
                let record = dead_letter(&processor.settings, &batch.jobs[pending.job as usize], &reason, campaign);
                let letter = Box::new(Pending { batch: batch.clone(), job: pending.job, kind: RecordKind::DeadLetter, attempt: 0, confirm: None });
                self.send(producer, &record, letter);
            }
            RecordKind::Changelog { partition } => {
                metrics.delivery_failed("lost_state_change");
                tracing::error!(
                    partition,
                    topic = %processor.settings.changelog_topic,
                    "a per-player state change could not be written to the changelog ({reason}); it holds on this instance only"
                );
                pending.batch.release();
            }
            RecordKind::DeadLetter => {
                metrics.delivery_failed("lost_dead_letter");
                tracing::error!(
                    partition = event.partition,
                    offset = event.offset,
                    topic = %processor.settings.dlq_topic,
                    "a dead letter could not be written ({reason}); the event's offset passes without it"
                );
                pending.batch.release();
            }
        }
    }
}

/// The redelivery thread: re-sends retriable failures in rounds (backoff doubling up to
/// [`MAX_BACKOFF`]); refused records are dead-lettered. A record refused as too large on its
/// first attempt is sent once more on its own (the broker refuses a whole produce batch when the
/// batch is over the topic's limit, so the others in it were not at fault).
fn redeliver(rx: mpsc::Receiver<Failed>, producer: Weak<DataProducer>, outlet: Arc<Outlet>, failing: Arc<AtomicBool>) {
    let processor = outlet.processor.clone();
    let limiter = LogLimiter::default();
    while let Ok(first) = rx.recv() {
        let mut round = vec![first];
        round.extend(rx.try_iter());
        let Some(producer) = producer.upgrade() else {
            for failed in round {
                tracing::error!(error = %failed.error, "a failed delivery cannot be retried (shutting down); its event's offset passes");
                failed.pending.batch.release();
            }
            continue;
        };
        let attempt = round.iter().map(|f| f.pending.attempt).max().unwrap_or(0);
        let mut retriable = Vec::new();
        for failed in round {
            let too_large = failed.error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge);
            if too_large && failed.pending.attempt == 0 {
                let _ = producer.flush(Duration::from_secs(10));
                resend(&outlet, &producer, failed);
                let _ = producer.flush(Duration::from_secs(10));
            } else if is_permanent(&failed.error) {
                outlet.refused(&producer, failed.pending, &failed.error.to_string());
            } else {
                retriable.push(failed);
            }
        }
        if retriable.is_empty() {
            continue;
        }
        if !failing.swap(true, Ordering::Relaxed) || limiter.allow("redelivery") {
            let error = retriable[0].error.to_string();
            tracing::warn!(records = retriable.len(), %error, "deliveries failed; sending them again");
            processor.health.set_delivery_failing(Some(format!("deliveries failing: {error}")));
        }
        std::thread::sleep((Duration::from_millis(100) * 2u32.saturating_pow(attempt.min(5))).min(MAX_BACKOFF));
        for failed in retriable {
            resend(&outlet, &producer, failed);
        }
    }
}

fn resend(outlet: &Outlet, producer: &DataProducer, failed: Failed) {
    outlet.processor.metrics.delivery_failed("retried");
    let Failed { mut pending, topic, partition, key, payload, headers, .. } = failed;
    pending.attempt += 1;
    let record = Record {
        partition: Some(partition),
        headers,
        confirm: None,
        ..Record::new(pending.kind, &topic, key.as_deref(), payload.as_deref())
    };
    outlet.send(producer, &record, pending);
}
