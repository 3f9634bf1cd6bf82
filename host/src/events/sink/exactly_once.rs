//! Exactly-once delivery (`--delivery exactly-once`, spec §8): consume–transform–produce in
//! Kafka transactions (KIP-447), with the same consumer thread and evaluation workers as
//! at-least-once.
//!
//! - A transaction opens before the first batch after a commit, and is committed every
//!   [`COMMIT_INTERVAL`] (it holds back read_committed readers meanwhile): the consumer thread
//!   stops dispatching, waits until every dispatched batch is evaluated (their records are all
//!   in the transaction), adds the consumed offsets, and commits. So a transaction holds exactly
//!   the records of the events whose offsets it commits.
//! - Revocation commits first (in the rebalance callback); a lost assignment aborts.
//! - Errors by kind (librdkafka's split): retriable → the same call again, with backoff, while
//!   `/healthz` reports it; abortable → abort, rewind every partition to its committed offset,
//!   evaluate again; fatal (this producer was fenced by another instance with the same
//!   `--instance-id`, or cannot go on) → the event path stops and the process exits non-zero.
//!   So do [`MAX_CONSECUTIVE_ABORTS`] aborts in a row: no silent loop.

use super::{base_record, dead_letter, enqueue, oversize, Record, RecordKind, Sink};
use crate::events::batch::{Batch, Tracker};
use crate::events::consumer::EventConsumer;
use crate::kafka::{client_config, ClientErrors};
use crate::processor::Processor;
use anyhow::{anyhow, bail, Context, Result};
use rdkafka::client::ClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a transaction stays open.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// Timeout of one transactional call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Aborted transactions in a row after which the event path gives up.
pub const MAX_CONSECUTIVE_ABORTS: u32 = 10;
/// The broker aborts a transaction left open this long (by a crashed instance).
const TRANSACTION_TIMEOUT_MS: &str = "30000";

struct TxnContext {
    errors: ClientErrors,
    processor: Arc<Processor>,
}

impl ClientContext for TxnContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.record("transactional producer", &error, reason);
    }
}

impl ProducerContext for TxnContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        // A failed record fails the commit (abortable): the batch is evaluated again.
        if let Err((e, _)) = result {
            self.processor.metrics.delivery_failed("transaction_aborted");
            tracing::debug!(error = %e, "a record of the open transaction failed");
        }
    }
}

#[derive(Default)]
struct Txn {
    open: bool,
    opened: Option<Instant>,
    /// The next offset to consume, per partition, for the events in this transaction.
    offsets: BTreeMap<i32, i64>,
    aborts_in_a_row: u32,
}

/// The exactly-once sink.
pub struct ExactlyOnce {
    producer: ThreadedProducer<TxnContext>,
    tracker: Arc<Tracker>,
    processor: Arc<Processor>,
    max_record_bytes: usize,
    txn: Mutex<Txn>,
    /// The consumer must seek back to the committed offsets (after an abort).
    rewind: AtomicBool,
    /// A failure inside the rebalance callback, reported at the next poll.
    failure: Mutex<Option<String>>,
    stop: watch::Receiver<bool>,
}

enum TxnError {
    Retry(RDKafkaError),
    Abort(String),
    Fatal(String),
}

fn classify(err: KafkaError) -> TxnError {
    match err {
        KafkaError::Transaction(e) if e.is_fatal() => TxnError::Fatal(e.to_string()),
        KafkaError::Transaction(e) if e.txn_requires_abort() => TxnError::Abort(e.to_string()),
        KafkaError::Transaction(e) if e.is_retriable() => TxnError::Retry(e),
        other => TxnError::Abort(other.to_string()),
    }
}

impl ExactlyOnce {
    /// The transactional producer, with transactions initialised. Its `transactional.id` is
    /// stable across restarts of an instance (group and instance id), so a restart fences its
    /// predecessor and aborts what it left open.
    pub fn new(processor: Arc<Processor>, tracker: Arc<Tracker>, max_record_bytes: usize, stop: watch::Receiver<bool>) -> Result<ExactlyOnce> {
        let settings = &processor.settings;
        let context = TxnContext { errors: processor.kafka_errors.clone(), processor: processor.clone() };
        let producer: ThreadedProducer<TxnContext> = client_config(settings, "transactions")
            .set("transactional.id", format!("rtcrm-{}-{}", settings.group_id, settings.instance_id))
            .set("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS)
            .set("message.timeout.ms", TRANSACTION_TIMEOUT_MS)
            .set("linger.ms", "5")
            .set("batch.size", (max_record_bytes + super::FRAMING_BYTES / 2).to_string())
            .create_with_context(context)
            .context("creating the transactional producer")?;
        let sink = ExactlyOnce {
            producer,
            tracker,
            processor,
            max_record_bytes,
            txn: Mutex::default(),
            rewind: AtomicBool::new(false),
            failure: Mutex::new(None),
            stop,
        };
        sink.retrying("initialising transactions", || sink.producer.init_transactions(CALL_TIMEOUT))
            .map_err(|e| anyhow!("{e} (does the broker support transactions?)"))?;
        Ok(sink)
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Runs a transactional call until it succeeds or fails other than retriably; retriable
    /// failures (the broker unreachable) are retried with backoff while `/healthz` says so.
    fn retrying(&self, what: &str, mut call: impl FnMut() -> Result<(), KafkaError>) -> Result<(), String> {
        let mut backoff = Duration::from_millis(100);
        let mut first = None;
        loop {
            match call().map_err(classify) {
                Ok(()) => {
                    if first.is_some() {
                        self.processor.health.set_delivery_failing(None);
                        tracing::info!("{what}: succeeded again");
                    }
                    return Ok(());
                }
                Err(TxnError::Retry(e)) => {
                    let since = *first.get_or_insert_with(Instant::now);
                    self.processor.health.set_delivery_failing(Some(format!(
                        "{what} has failed for {} s: {e}",
                        since.elapsed().as_secs()
                    )));
                    tracing::warn!(error = %e, "{what} failed; retrying in {} ms", backoff.as_millis());
                    if self.stopping() {
                        return Err(format!("{what} failed while stopping: {e}"));
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(TxnError::Abort(e)) => return Err(format!("abort: {e}")),
                Err(TxnError::Fatal(e)) => return Err(format!("fatal: {e}")),
            }
        }
    }

    fn merge(txn: &mut Txn, offsets: BTreeMap<i32, i64>) {
        for (partition, next) in offsets {
            let n = txn.offsets.entry(partition).or_insert(next);
            *n = (*n).max(next);
        }
    }

    /// Waits for every dispatched batch, then commits the open transaction with its offsets; an
    /// abortable failure aborts it and asks for a rewind. Err: the event path cannot go on.
    fn commit(&self, consumer: &EventConsumer, why: &str) -> Result<()> {
        let mut txn = self.txn.lock().unwrap_or_else(|p| p.into_inner());
        if !txn.open {
            return Ok(());
        }
        let drained = self.tracker.drain(|o| Self::merge(&mut txn, o), || !self.stopping());
        if !drained {
            bail!("stopped before the open transaction's events were evaluated");
        }
        let outcome = self.retrying(&format!("committing a transaction ({why})"), || {
            if !txn.offsets.is_empty() {
                let mut tpl = TopicPartitionList::new();
                for (partition, next) in &txn.offsets {
                    tpl.add_partition_offset(&self.processor.settings.event_topic, *partition, Offset::Offset(*next))?;
                }
                // Without group metadata (not a member right now) the commit cannot include the
                // offsets: abort and evaluate again.
                let metadata = consumer.group_metadata().ok_or(KafkaError::Global(RDKafkaErrorCode::State))?;
                self.producer.send_offsets_to_transaction(&tpl, &metadata, CALL_TIMEOUT)?;
            }
            self.producer.commit_transaction(CALL_TIMEOUT)
        });
        txn.open = false;
        txn.opened = None;
        txn.offsets.clear();
        match outcome {
            Ok(()) => {
                txn.aborts_in_a_row = 0;
                self.processor.metrics.transaction("committed");
                Ok(())
            }
            Err(e) if e.starts_with("abort: ") => {
                tracing::warn!(error = %e, "committing a transaction failed; aborting it and evaluating its events again");
                self.abort_open(&mut txn, &e)
            }
            Err(e) => Err(anyhow!("the transactional producer cannot go on (fenced by another instance with the same --instance-id?): {e}")),
        }
    }

    /// Aborts (the transaction is already closed for commits) and asks for a rewind.
    fn abort_open(&self, txn: &mut Txn, why: &str) -> Result<()> {
        txn.open = false;
        txn.offsets.clear();
        self.retrying("aborting a transaction", || self.producer.abort_transaction(CALL_TIMEOUT))
            .map_err(|e| anyhow!("aborting a transaction failed: {e}"))?;
        self.processor.metrics.transaction("aborted");
        self.rewind.store(true, Ordering::SeqCst);
        txn.aborts_in_a_row += 1;
        if txn.aborts_in_a_row >= MAX_CONSECUTIVE_ABORTS {
            bail!("{MAX_CONSECUTIVE_ABORTS} transactions in a row were aborted; last: {why}");
        }
        Ok(())
    }

    fn record_failure(&self, e: anyhow::Error) {
        tracing::error!(error = format!("{e:#}"), "exactly-once: in the rebalance callback");
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| format!("{e:#}"));
    }
}

impl Sink for ExactlyOnce {
    fn send(&self, record: Record<'_>, batch: &Arc<Batch>, job: u32) {
        let metrics = &self.processor.metrics;
        let refusal = match oversize(&record, self.max_record_bytes) {
            Some(reason) => reason,
            None => match enqueue(&self.producer, base_record(&record, ()), metrics) {
                Ok(()) => return,
                Err((e, _)) => format!("the producer refused the record: {e}"),
            },
        };
        let event = &batch.jobs[job as usize];
        match record.kind {
            RecordKind::Trigger { campaign } => {
                let reason = format!("the trigger of campaign {campaign} was refused: {refusal}");
                tracing::warn!(campaign, partition = event.partition, offset = event.offset, "{reason}; sending the event to the dead-letter topic");
                metrics.delivery_failed("dead_lettered");
                metrics.dead_letters.inc();
                self.send(dead_letter(&self.processor.settings, event, &reason, Some(campaign)), batch, job);
            }
            RecordKind::DeadLetter => {
                metrics.delivery_failed("lost_dead_letter");
                tracing::error!(partition = event.partition, offset = event.offset, "a dead letter could not be written ({refusal}); the event's offset passes without it");
            }
        }
    }

    fn before_dispatch(&self) -> Result<()> {
        if let Some(failure) = self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            bail!(failure);
        }
        let mut txn = self.txn.lock().unwrap_or_else(|p| p.into_inner());
        if !txn.open {
            self.retrying("beginning a transaction", || self.producer.begin_transaction())
                .map_err(|e| anyhow!("the transactional producer cannot go on: {e}"))?;
            txn.open = true;
            txn.opened = Some(Instant::now());
        }
        Ok(())
    }

    fn after_poll(&self, consumer: &EventConsumer) -> Result<()> {
        let due = {
            let mut txn = self.txn.lock().unwrap_or_else(|p| p.into_inner());
            Self::merge(&mut txn, self.tracker.pop_done());
            txn.open && txn.opened.is_some_and(|t| t.elapsed() >= COMMIT_INTERVAL)
        };
        if due {
            self.commit(consumer, "interval")?;
        }
        Ok(())
    }

    fn take_rewind(&self, consumer: &EventConsumer) -> Result<bool> {
        if !self.rewind.swap(false, Ordering::SeqCst) {
            return Ok(false);
        }
        let reset = match self.processor.settings.auto_offset_reset {
            crate::config::OffsetReset::Earliest => Offset::Beginning,
            crate::config::OffsetReset::Latest => Offset::End,
        };
        let mut committed = None;
        self.retrying_plain("reading committed offsets", || consumer.committed(CALL_TIMEOUT).map(|c| committed = Some(c)))?;
        for elem in committed.expect("read above").elements() {
            let offset = match elem.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => reset,
            };
            if let Err(e) = consumer.seek(elem.topic(), elem.partition(), offset, CALL_TIMEOUT) {
                tracing::warn!(error = %e, partition = elem.partition(), "rewinding to the committed offset");
            }
        }
        tracing::info!("rewound to the committed offsets");
        Ok(true)
    }

    fn before_revoke(&self, consumer: &EventConsumer) {
        if let Err(e) = self.commit(consumer, "partitions revoked") {
            self.record_failure(e);
        }
    }

    fn lost(&self, _consumer: &EventConsumer) {
        let mut txn = self.txn.lock().unwrap_or_else(|p| p.into_inner());
        if txn.open {
            self.tracker.drain(|_| {}, || !self.stopping());
            if let Err(e) = self.abort_open(&mut txn, "the assignment was lost") {
                drop(txn);
                self.record_failure(e);
            }
        }
    }

    fn close(&self, consumer: &EventConsumer) -> Result<()> {
        self.commit(consumer, "stopping")
    }
}

impl ExactlyOnce {
    /// [`ExactlyOnce::retrying`] for a plain consumer call: any error is retried (while not
    /// stopping), since the consumer's calls have no abort state.
    fn retrying_plain(&self, what: &str, mut call: impl FnMut() -> Result<(), KafkaError>) -> Result<()> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match call() {
                Ok(()) => return Ok(()),
                Err(e) if !self.stopping() => {
                    tracing::warn!(error = %e, "{what} failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => bail!("{what} failed while stopping: {e}"),
            }
        }
    }
}
