//! Where the event path's records go: one interface, two delivery guarantees (spec §8).
//!
//! - [`at_least_once::AtLeastOnce`] (default): an idempotent producer; a batch's offsets are
//!   stored only after every record it produced is acknowledged.
//! - [`exactly_once::ExactlyOnce`]: one Kafka transaction per commit interval holding the
//!   triggers, dead letters and consumed offsets of every batch in it (KIP-447).
//!
//! Workers call [`Sink::send`]; the consumer thread calls the other methods between polls and
//! in the rebalance callback. Errors are told apart by kind: a full producer queue is waited
//! out (and counted), a retriable failure is sent again with bounded backoff, and a record the
//! broker refuses for good — or that is over the topic's `max.message.bytes` before it is sent —
//! goes to the dead-letter topic with the reason. When even the dead letter cannot be written,
//! the failure is counted and logged at error level and the event's offset still passes: no
//! endless loop, no silent loss.

pub mod at_least_once;
pub mod exactly_once;

use crate::config::Settings;
use crate::events::batch::{Batch, Job};
use crate::events::consumer::EventConsumer;
use crate::telemetry::metrics::Metrics;
use anyhow::Result;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, ProducerContext, ThreadedProducer};
use std::sync::Arc;
use std::time::Duration;

/// What a record is, for error handling: a trigger or a forwarded event that fails for good is
/// replaced by its event's dead letter; a dead letter or a state change that fails for good is
/// counted and logged at error level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A trigger (to the triggers topic, or the control topic).
    Trigger { campaign: i64 },
    DeadLetter,
    /// A per-player state change of state partition `partition` (the changelog topic).
    Changelog { partition: i32 },
    /// An event forwarded to the repartition topic.
    Forward,
}

/// One record of the event path.
pub struct Record<'a> {
    pub kind: RecordKind,
    pub topic: &'a str,
    /// An explicit partition (changelog and repartition records), else by key.
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub headers: Option<OwnedHeaders>,
    /// A timer trigger: (state partition, state key), confirmed to the state once delivered
    /// (at-least-once) or committed (exactly-once).
    pub confirm: Option<(i32, String)>,
}

impl<'a> Record<'a> {
    /// A record of `kind` to `topic`, keyed, without headers.
    pub fn new(kind: RecordKind, topic: &'a str, key: Option<&'a [u8]>, payload: Option<&'a [u8]>) -> Record<'a> {
        Record { kind, topic, partition: None, key, payload, headers: None, confirm: None }
    }
}

/// Where the event path's records go, and how consumed offsets are committed.
pub trait Sink: Send + Sync {
    /// Sends one record produced for event `job` of `batch` (worker threads).
    fn send(&self, record: Record<'_>, batch: &Arc<Batch>, job: u32);

    /// Before the consumer thread dispatches a batch (exactly-once: a transaction is open).
    /// False: the batch must not be dispatched, because the consumer must first be rewound to
    /// its committed offsets (opening the transaction replaced its producer); its events are
    /// read again after the rewind.
    fn before_dispatch(&self, consumer: &EventConsumer) -> Result<bool>;

    /// After each poll, on the consumer thread: releases the offsets of done batches and
    /// commits when due. An error stops the event path (and the process).
    fn after_poll(&self, consumer: &EventConsumer) -> Result<()>;

    /// Whether the consumer was rewound to its committed offsets since the last call (the
    /// messages polled meanwhile must be dropped: they will be read again).
    fn take_rewind(&self, consumer: &EventConsumer) -> Result<bool>;

    /// Partitions are about to be revoked (in the rebalance callback): finish what is in
    /// flight and commit, so the next owner starts where this one stopped.
    fn before_revoke(&self, consumer: &EventConsumer);

    /// The assignment was lost (no commit is possible any more).
    fn lost(&self, consumer: &EventConsumer);

    /// At shutdown: finish what is in flight, deliver, commit.
    fn close(&self, consumer: &EventConsumer) -> Result<()>;

    /// Whether the per-player state may be scanned for due deadlines now (exactly-once: only
    /// between transactions, when the stores hold exactly the committed state).
    fn state_settled(&self) -> bool;
}

/// Most bytes of a reason in a dead-letter header (a filter's error text can be long).
const MAX_REASON_BYTES: usize = 1024;

fn truncated(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_BYTES {
        return reason;
    }
    let mut cut = MAX_REASON_BYTES;
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    &reason[..cut]
}

/// The dead-letter record of `job` (spec §1): the original key and bytes; headers name the
/// error and the source topic, partition and offset (and the campaign, for a refused trigger).
pub fn dead_letter<'a>(settings: &'a Settings, job: &'a Job, reason: &str, campaign: Option<i64>) -> Record<'a> {
    let (partition, offset) = (job.partition.to_string(), job.offset.to_string());
    let mut headers = OwnedHeaders::new()
        .insert(Header { key: "rtcrm.error", value: Some(truncated(reason)) })
        .insert(Header { key: "rtcrm.source.topic", value: Some(settings.event_topic.as_str()) })
        .insert(Header { key: "rtcrm.source.partition", value: Some(partition.as_str()) })
        .insert(Header { key: "rtcrm.source.offset", value: Some(offset.as_str()) });
    if let Some(id) = campaign {
        let id = id.to_string();
        headers = headers.insert(Header { key: "rtcrm.campaign", value: Some(id.as_str()) });
    }
    Record { headers: Some(headers), ..Record::new(RecordKind::DeadLetter, &settings.dlq_topic, job.key.as_deref(), job.bytes()) }
}

/// The largest record each output topic takes: its `max.message.bytes`, less framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLimits {
    pub trigger_bytes: usize,
    pub dead_letter_bytes: usize,
}

impl Default for RecordLimits {
    fn default() -> Self {
        let bytes = crate::kafka::DEFAULT_MAX_MESSAGE_BYTES - FRAMING_BYTES;
        RecordLimits { trigger_bytes: bytes, dead_letter_bytes: bytes }
    }
}

impl RecordLimits {
    /// From the topics' `max.message.bytes`.
    pub fn from_topics(trigger_topic: usize, dlq_topic: usize) -> RecordLimits {
        let usable = |max: usize| max.saturating_sub(FRAMING_BYTES).max(1024);
        RecordLimits { trigger_bytes: usable(trigger_topic), dead_letter_bytes: usable(dlq_topic) }
    }

    fn of(&self, kind: RecordKind) -> usize {
        match kind {
            RecordKind::Trigger { .. } => self.trigger_bytes,
            RecordKind::DeadLetter | RecordKind::Changelog { .. } | RecordKind::Forward => self.dead_letter_bytes,
        }
    }

    /// The producer's `batch.size`: one produce batch never exceeds the smaller topic limit.
    pub fn batch_size(&self) -> String {
        (self.trigger_bytes.min(self.dead_letter_bytes) + FRAMING_BYTES / 2).to_string()
    }
}

/// Why `record` cannot be sent at all: it is over its topic's `max.message.bytes` (less the
/// framing), so the broker would refuse it.
pub fn oversize(record: &Record<'_>, limits: &RecordLimits) -> Option<String> {
    let max_bytes = limits.of(record.kind);
    let size = record.key.map_or(0, <[u8]>::len) + record.payload.map_or(0, <[u8]>::len);
    (size > max_bytes).then(|| {
        format!("the record is {size} bytes, over the {max_bytes} bytes `{}` accepts (its max.message.bytes less framing)", record.topic)
    })
}

/// Room kept for Kafka's record and batch framing under a topic's `max.message.bytes`.
pub const FRAMING_BYTES: usize = 1024;

/// Whether the broker refused a record for good (sending it again cannot succeed).
pub fn is_permanent(err: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        err.rdkafka_error_code(),
        Some(
            MessageSizeTooLarge
                | InvalidRecord
                | InvalidMessage
                | InvalidMessageSize
                | InvalidTopic
                | MessageBatchTooLarge
                | TopicAuthorizationFailed
                | ClusterAuthorizationFailed
                | PolicyViolation
                | InvalidRequiredAcks
                | UnsupportedForMessageFormat
        )
    )
}

/// Enqueues `record`, waiting while the producer's queue is full (counted in
/// `rtcrm_producer_queue_full_waits_total`); any other error hands the record back.
#[allow(clippy::result_large_err)]
pub fn enqueue<'a, C: ProducerContext + 'static>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'a, [u8], [u8], C::DeliveryOpaque>,
    metrics: &Metrics,
) -> Result<(), (KafkaError, BaseRecord<'a, [u8], [u8], C::DeliveryOpaque>)> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                metrics.queue_full_waits.inc();
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(other) => return Err(other),
        }
    }
}

/// A record's parts as a `BaseRecord` for `producer.send`.
pub fn base_record<'a, D: rdkafka::util::IntoOpaque>(record: &Record<'a>, opaque: D) -> BaseRecord<'a, [u8], [u8], D> {
    let mut r = BaseRecord::with_opaque_to(record.topic, opaque);
    if let Some(k) = record.key {
        r = r.key(k);
    }
    if let Some(p) = record.payload {
        r = r.payload(p);
    }
    if let Some(h) = &record.headers {
        r = r.headers(h.clone());
    }
    if let Some(p) = record.partition {
        r = r.partition(p);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_errors_are_told_from_retriable_ones() {
        assert!(is_permanent(&KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)));
        assert!(is_permanent(&KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed)));
        assert!(!is_permanent(&KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)));
        assert!(!is_permanent(&KafkaError::MessageProduction(RDKafkaErrorCode::BrokerTransportFailure)));
        assert!(!is_permanent(&KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)));
    }

    #[test]
    fn oversize_records_and_long_reasons() {
        let r = Record::new(RecordKind::DeadLetter, "t", Some(b"12"), Some(&[b'x'; 100]));
        let limits = |trigger_bytes, dead_letter_bytes| RecordLimits { trigger_bytes, dead_letter_bytes };
        assert_eq!(oversize(&r, &limits(10, 102)), None, "a dead letter is checked against the dead-letter topic's limit");
        assert_eq!(oversize(&r, &limits(1000, 101)).unwrap(), "the record is 102 bytes, over the 101 bytes `t` accepts (its max.message.bytes less framing)");
        let trigger = Record { kind: RecordKind::Trigger { campaign: 1 }, ..r };
        assert!(oversize(&trigger, &limits(101, 1000)).is_some());
        assert_eq!(limits(5000, 2000).batch_size(), "2512");
        let long = "é".repeat(1000);
        assert!(truncated(&long).len() <= MAX_REASON_BYTES && long.starts_with(truncated(&long)));
    }
}
