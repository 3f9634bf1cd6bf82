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
//!   evaluate again; fatal (the producer was fenced: the coordinator aborted a transaction that
//!   outlived its timeout during an outage and bumped the epoch, or another instance took the
//!   same `--instance-id`) → a new transactional producer is started and every partition is
//!   rewound, at most [`MAX_RECREATIONS`] times per [`RECREATION_WINDOW`]. A second instance with
//!   the same `--instance-id` first takes this one's static group membership (transactions are
//!   initialised only once the consumer has partitions), which fences this consumer at its next
//!   heartbeat: a fenced producer waits [`FENCE_GRACE`] for that before it starts a new one, so
//!   the process exits non-zero with the reason instead of fencing the other instance's producer
//!   back. So do [`MAX_CONSECUTIVE_ABORTS`] aborts in a row: no silent loop.
//! - A batch is dispatched only into a transaction of the current producer: when opening the
//!   transaction replaced the producer, the batch is dropped and read again after the rewind.
//! - A record the producer refuses at enqueue for a reason other than its size dooms the open
//!   transaction (it is aborted instead of committed without the record).
//! - Abandoned offset commits are cleared: after an outage the group coordinator may hold a
//!   transactional offset commit of this `transactional.id` that belongs to no open transaction
//!   (see [`ExactlyOnce::clear_abandoned`]). Before its first transaction, and whenever an assigned
//!   partition has long waited for its committed offset, a producer runs an empty transaction
//!   that only adds the group's offsets, and aborts it: the abort marker discards them.

use super::{base_record, RecordLimits, dead_letter, enqueue, is_permanent, oversize, Record, RecordKind, Sink};
use arc_swap::ArcSwap;
use crate::events::batch::{Batch, Offsets, Tracker};
use crate::state::decide::Source;
use crate::state::stores::States;
use crate::events::consumer::EventConsumer;
use crate::kafka::{client_config, ClientErrors};
use crate::processor::Processor;
use anyhow::{anyhow, bail, Context, Result};
use rdkafka::client::ClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a transaction stays open.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// Timeout of one transactional call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `send_offsets_to_transaction` is waited for before its producer is given up and
/// replaced. librdkafka returns from it after its 30 s socket timeout at most, except when its
/// group-coordinator request hangs (confluentinc/librdkafka#5456, #5511): then never.
const HUNG_CALL_LIMIT: Duration = Duration::from_secs(45);
/// How long one attempt to read the committed offsets of a rewind may block the poll loop.
const REWIND_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Aborted transactions in a row after which the event path gives up.
pub const MAX_CONSECUTIVE_ABORTS: u32 = 10;
/// The broker aborts a transaction left open this long (by a crashed instance).
const TRANSACTION_TIMEOUT_MS: &str = "30000";
/// How long a transactional call is retried (the broker unreachable or its transaction
/// coordinator unavailable) before the producer is replaced and the events are processed again
/// from the committed offsets: the consumer thread never waits longer than this for one call,
/// so it keeps polling within the group's `max.poll.interval.ms`.
const RETRY_LIMIT: Duration = Duration::from_secs(90);
/// How long an assigned partition waits for its committed offset before the producer clears
/// abandoned offset commits again, and how often it does so at most while one waits.
const CLEAR_WHEN_WAITING: Duration = Duration::from_secs(15);
/// How soon a clearing that could not be done is tried again.
const CLEAR_RETRY: Duration = Duration::from_secs(1);
/// New transactional producers started after fatal errors, at most, per window.
pub const MAX_RECREATIONS: usize = 5;
pub const RECREATION_WINDOW: Duration = Duration::from_secs(600);
/// How long a fenced producer waits, before it starts a new one, for the events consumer to
/// learn that another instance took its static membership (at its next heartbeat, every 3 s by
/// librdkafka's default): then the process stops instead of fencing the other instance's
/// producer in turn.
const FENCE_GRACE: Duration = Duration::from_secs(5);

struct TxnContext {
    errors: ClientErrors,
    processor: Arc<Processor>,
    /// The highest changelog offset written in the open transaction, per partition.
    changelog: Arc<Mutex<HashMap<i32, i64>>>,
}

impl ClientContext for TxnContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.record("transactional producer", &error, reason);
    }
}

impl ProducerContext for TxnContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) if m.topic() == self.processor.settings.changelog_topic => {
                let mut offsets = self.changelog.lock().unwrap_or_else(|p| p.into_inner());
                let o = offsets.entry(m.partition()).or_insert(m.offset());
                *o = (*o).max(m.offset());
            }
            Ok(_) => {}
            // A failed record fails the commit (abortable): the batch is evaluated again.
            Err((e, _)) => {
                self.processor.metrics.delivery_failed("transaction_aborted");
                tracing::debug!(error = %e, "a record of the open transaction failed");
            }
        }
    }
}

#[derive(Default)]
struct Txn {
    open: bool,
    opened: Option<Instant>,
    /// The next offset to consume, per (topic, partition), for the events in this transaction.
    offsets: Offsets,

    aborts_in_a_row: u32,
}

type TxnProducer = ThreadedProducer<TxnContext>;

/// The exactly-once sink.
pub struct ExactlyOnce {
    producer: ArcSwap<TxnProducer>,
    /// When producers were recreated after fatal errors (within the window).
    recreated: Mutex<Vec<Instant>>,
    /// A record was refused at enqueue (not for its size): the open transaction must abort.
    doomed: AtomicBool,
    tracker: Arc<Tracker>,
    processor: Arc<Processor>,
    limits: RecordLimits,
    txn: Mutex<Txn>,
    /// The consumer must seek back to the committed offsets (after an abort).
    rewind: AtomicBool,
    /// Since when a rewind waits for the committed offsets (the group coordinator does not
    /// answer, or holds them back behind another member's open transaction).
    rewind_pending_since: Mutex<Option<Instant>>,
    /// A failure inside the rebalance callback, reported at the next poll.
    failure: Mutex<Option<String>>,
    stop: watch::Receiver<bool>,
    states: Arc<States>,
    /// Changelog offsets of the open transaction (written by the delivery reports).
    changelog: Arc<Mutex<HashMap<i32, i64>>>,
    /// Timer triggers sent in the open transaction (confirmed by its commit). Not under the
    /// `txn` lock: workers add to it while a commit waits for them.
    confirm: Mutex<Vec<(i32, String)>>,
    /// The current producer has not yet cleared abandoned offset commits.
    clear_due: AtomicBool,
    /// When abandoned offset commits were last cleared, or tried to be.
    last_clear: Mutex<Option<Instant>>,
    /// Transactions are initialised on the current producer (done once the consumer has an
    /// assignment: see [`ExactlyOnce::initialise_when_assigned`]).
    initialised: AtomicBool,
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
    /// The transactional producer. Its `transactional.id` is stable across restarts of an
    /// instance (group and instance id), so a restart fences its predecessor and aborts what it
    /// left open, once the consumer has its assignment.
    pub fn new(processor: Arc<Processor>, tracker: Arc<Tracker>, limits: RecordLimits, stop: watch::Receiver<bool>, states: Arc<States>) -> Result<ExactlyOnce> {
        let changelog = Arc::new(Mutex::new(HashMap::new()));
        let producer = Self::create_producer(&processor, &limits, &changelog)?;
        let sink = ExactlyOnce {
            producer: ArcSwap::from_pointee(producer),
            recreated: Mutex::new(Vec::new()),
            doomed: AtomicBool::new(false),
            tracker,
            processor,
            limits,
            txn: Mutex::default(),
            rewind: AtomicBool::new(false),
            rewind_pending_since: Mutex::new(None),
            failure: Mutex::new(None),
            stop,
            states,
            changelog,
            confirm: Mutex::new(Vec::new()),
            clear_due: AtomicBool::new(true),
            last_clear: Mutex::new(None),
            initialised: AtomicBool::new(false),
        };
        Ok(sink)
    }

    /// Initialises transactions on the first producer once the consumer has partitions, and
    /// says whether they are. Not before: initialising fences every other producer with this
    /// `transactional.id`, and a second instance started with the same `--instance-id` must
    /// first take the static group membership, so that the first instance's consumer is fenced
    /// too and the first instance stops (see [`FENCE_GRACE`]) instead of fencing back. A
    /// predecessor's open transaction holds back the committed offsets of the partitions it
    /// consumed (until this aborts it), never the assignment itself.
    fn initialise_when_assigned(&self, consumer: &EventConsumer) -> Result<bool> {
        if self.initialised.load(Ordering::SeqCst) {
            return Ok(true);
        }
        if consumer.assignment().map_or(true, |a| a.count() == 0) {
            return Ok(false);
        }
        self.initialise()?;
        Ok(true)
    }

    fn initialise(&self) -> Result<()> {
        self.init().map_err(|e| anyhow!("{e:#} (does the broker support transactions?)"))?;
        self.initialised.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn create_producer(processor: &Arc<Processor>, limits: &RecordLimits, changelog: &Arc<Mutex<HashMap<i32, i64>>>) -> Result<TxnProducer> {
        let settings = &processor.settings;
        let context = TxnContext { errors: processor.kafka_errors.clone(), processor: processor.clone(), changelog: changelog.clone() };
        client_config(settings, "transactions")
            .set("transactional.id", format!("rtcrm-{}-{}", settings.group_id, settings.instance_id))
            .set("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS)
            .set("message.timeout.ms", TRANSACTION_TIMEOUT_MS)
            .set("linger.ms", "5")
            .set("batch.size", limits.batch_size())
            .create_with_context(context)
            .context("creating the transactional producer")
    }

    /// Initialises transactions on the current producer (fences and aborts what an earlier
    /// producer with the same `transactional.id` left open).
    fn init(&self) -> Result<()> {
        let producer = self.producer.load_full();
        self.retrying("initialising transactions", || producer.init_transactions(CALL_TIMEOUT)).map_err(|e| anyhow!(e))
    }

    /// After a fatal producer error: a new producer, and a rewind to the committed offsets.
    /// Unless the consumer learns within [`FENCE_GRACE`] that another instance took this
    /// instance's static membership: then this instance stops with that reason.
    fn recreate(&self, consumer: &EventConsumer, why: &str) -> Result<()> {
        let waited = Instant::now();
        while waited.elapsed() < FENCE_GRACE && !self.stopping() {
            if let Some((code, reason)) = consumer.client().fatal_error() {
                bail!(
                    "the transactional producer was fenced ({why}), and the events consumer too ({code:?}: {reason}): another \
                     process joined the group with the same --instance-id (give every instance its own), or this one's group \
                     session ran out in an outage and its rejoin took its static membership (restart it)"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut recent = self.recreated.lock().unwrap_or_else(|p| p.into_inner());
        recent.retain(|t| t.elapsed() < RECREATION_WINDOW);
        if recent.len() >= MAX_RECREATIONS {
            bail!(
                "the transactional producer failed fatally {} times within {} s; last: {why}",
                recent.len() + 1,
                RECREATION_WINDOW.as_secs()
            );
        }
        recent.push(Instant::now());
        drop(recent);
        tracing::warn!(
            error = why,
            "the transactional producer cannot go on (fenced after a transaction timed out, or by another instance with \
             the same --instance-id); starting a new one and processing again from the committed offsets"
        );
        self.changelog.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.states.discard_all();
        self.producer.store(Arc::new(Self::create_producer(&self.processor, &self.limits, &self.changelog)?));
        self.init()?;
        self.doomed.store(false, Ordering::SeqCst);
        self.rewind.store(true, Ordering::SeqCst);
        self.clear_due.store(true, Ordering::SeqCst);
        *self.last_clear.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.processor.metrics.transaction("producer_recreated");
        Ok(())
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
                    if since.elapsed() >= RETRY_LIMIT {
                        return Err(format!("{what} kept failing for {} s: {e}", since.elapsed().as_secs()));
                    }
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

    fn merge(txn: &mut Txn, offsets: Offsets) {
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
        if self.doomed.swap(false, Ordering::SeqCst) {
            return self.abort_open(consumer, &mut txn, "a record of the transaction was refused by the producer");
        }
        let producer = self.producer.load_full();
        // A timed-out call is resumed by calling it again, and only it: librdkafka refuses any
        // other transactional call while one is in progress ("Conflicting commit_transaction API
        // call is already in progress"), so offsets sent once are not sent again.
        let mut offsets_sent = txn.offsets.is_empty();
        let mut hung = false;
        let outcome = self.retrying(&format!("committing a transaction ({why})"), || {
            if !offsets_sent {
                let mut tpl = TopicPartitionList::new();
                for ((source, partition), next) in &txn.offsets {
                    let topic = match source {
                        Source::Events => &self.processor.settings.event_topic,
                        Source::Repartitioned => &self.processor.settings.repartition_topic,
                    };
                    tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
                }
                send_offsets(&producer, consumer, tpl, &mut hung)?;
                offsets_sent = true;
            }
            producer.commit_transaction(CALL_TIMEOUT)
        });
        txn.open = false;
        txn.opened = None;
        txn.offsets.clear();
        if hung {
            self.processor.metrics.transaction("aborted");
            return self.recreate(consumer, &format!(
                "sending the offsets to the transaction did not return within {} s (librdkafka's coordinator request can hang after an outage: confluentinc/librdkafka#5456)",
                HUNG_CALL_LIMIT.as_secs()
            ));
        }
        match outcome {
            Ok(()) => {
                txn.aborts_in_a_row = 0;
                self.processor.metrics.transaction("committed");
                // The state changes of the transaction are now the committed state.
                for (partition, offset) in std::mem::take(&mut *self.changelog.lock().unwrap_or_else(|p| p.into_inner())) {
                    if let Some(store) = self.states.store(partition) {
                        store.changelog_acked(offset);
                    }
                }
                for (partition, key) in std::mem::take(&mut *self.confirm.lock().unwrap_or_else(|p| p.into_inner())) {
                    self.states.confirm(partition, key);
                }
                self.states.flush_all().map_err(|e| anyhow!("writing the committed per-player state: {e}"))?;
                Ok(())
            }
            Err(e) if e.starts_with("abort: ") => {
                tracing::warn!(error = %e, "committing a transaction failed; aborting it and evaluating its events again");
                self.abort_open(consumer, &mut txn, &e)
            }
            Err(e) => {
                txn.aborts_in_a_row = 0;
                self.processor.metrics.transaction("aborted");
                self.recreate(consumer, &e)
            }
        }
    }

    /// Aborts (the transaction is already closed for commits) and asks for a rewind.
    fn abort_open(&self, consumer: &EventConsumer, txn: &mut Txn, why: &str) -> Result<()> {
        txn.open = false;
        txn.offsets.clear();
        self.confirm.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.changelog.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.states.discard_all();
        let producer = self.producer.load_full();
        if let Err(e) = self.retrying("aborting a transaction", || producer.abort_transaction(CALL_TIMEOUT)) {
            self.processor.metrics.transaction("aborted");
            return self.recreate(consumer, &format!("aborting a transaction failed: {e}"));
        }
        self.processor.metrics.transaction("aborted");
        self.rewind.store(true, Ordering::SeqCst);
        txn.aborts_in_a_row += 1;
        if txn.aborts_in_a_row >= MAX_CONSECUTIVE_ABORTS {
            bail!("{MAX_CONSECUTIVE_ABORTS} transactions in a row were aborted; last: {why}");
        }
        Ok(())
    }

    /// Clears abandoned offset commits of this `transactional.id`, when due: before the current
    /// producer's first transaction, and every [`CLEAR_WHEN_WAITING`] while an assigned partition
    /// has waited that long for its committed offset. Call only while no transaction is open.
    ///
    /// Why: the group coordinator can hold a transactional offset commit (TxnOffsetCommit) of an
    /// earlier producer with this `transactional.id` after that producer's transaction was
    /// aborted. A failed run of the 60 s outage test (Kafka 4.3.1, librdkafka 2.12.1) points to
    /// it: a producer given up after a hung call retried its offset commit once the broker was
    /// back, the new producer's `init_transactions` aborted its transaction meanwhile, and
    /// exactly the partitions of that commit never got a stable offset again (the broker's
    /// state itself was not inspected). No marker will ever end such a commit, so the group
    /// coordinator answers every stable offset fetch of its partitions with
    /// UNSTABLE_OFFSET_COMMIT, and their owner waits for its committed offsets forever; the next
    /// committed transaction of this producer id would instead make those offsets, whose records
    /// were aborted, the committed ones. The pending offsets of a producer id are ended by the
    /// next transaction marker of that producer id on the group's offsets partition, whatever
    /// partitions it names: an aborted transaction that only adds an offset commit discards
    /// them, and changes nothing else.
    fn clear_abandoned(&self, consumer: &EventConsumer) -> Result<()> {
        let waiting = consumer.context().waiting_for_offsets().is_some_and(|w| w >= CLEAR_WHEN_WAITING);
        let due = self.clear_due.load(Ordering::SeqCst);
        let mut last = self.last_clear.lock().unwrap_or_else(|p| p.into_inner());
        let pause = if due { CLEAR_RETRY } else { CLEAR_WHEN_WAITING };
        if !(due || waiting) || last.is_some_and(|t| t.elapsed() < pause) {
            return Ok(());
        }
        // Any partition of the assignment serves: the transaction is aborted.
        let Some((topic, partition)) =
            consumer.assignment().ok().and_then(|a| a.elements().first().map(|e| (e.topic().to_owned(), e.partition())))
        else {
            return Ok(());
        };
        if consumer.group_metadata().is_none() {
            return Ok(());
        }
        *last = Some(Instant::now());
        drop(last);
        let producer = self.producer.load_full();
        let (mut begun, mut sent, mut hung) = (false, false, false);
        let outcome = self.retrying("clearing abandoned offset commits", || {
            if !begun {
                producer.begin_transaction()?;
                begun = true;
            }
            if !sent {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(&topic, partition, Offset::Offset(0))?;
                send_offsets(&producer, consumer, tpl, &mut hung)?;
                sent = true;
            }
            producer.abort_transaction(CALL_TIMEOUT)
        });
        match outcome {
            Ok(()) => {
                self.clear_due.store(false, Ordering::SeqCst);
                self.processor.metrics.transaction("abandoned_offsets_cleared");
                let reason = if due { "before the producer's first transaction" } else { "an assigned partition waits for its committed offset" };
                tracing::info!(reason, "cleared abandoned transactional offset commits (an empty transaction, aborted)");
                Ok(())
            }
            // Stopping: the next start of this instance clears before its first transaction.
            Err(_) if self.stopping() => Ok(()),
            Err(e) if hung => self.recreate(consumer, &format!(
                "sending the offsets of a clearing transaction did not return within {} s (confluentinc/librdkafka#5456): {e}",
                HUNG_CALL_LIMIT.as_secs()
            )),
            Err(e) if e.starts_with("abort: ") => {
                // Ends the failed transaction, if one was begun; the clearing is tried again.
                tracing::warn!(error = %e, "clearing abandoned offset commits failed; trying again");
                if begun {
                    if let Err(e) = self.retrying("aborting a transaction", || producer.abort_transaction(CALL_TIMEOUT)) {
                        return self.recreate(consumer, &format!("aborting a clearing transaction failed: {e}"));
                    }
                }
                Ok(())
            }
            Err(e) => self.recreate(consumer, &e),
        }
    }

    fn record_failure(&self, e: anyhow::Error) {
        tracing::error!(error = format!("{e:#}"), "exactly-once: in the rebalance callback");
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| format!("{e:#}"));
    }
}

impl Sink for ExactlyOnce {
    fn send(&self, record: Record<'_>, batch: &Arc<Batch>, job: u32) {
        let metrics = &self.processor.metrics;
        if let Some(confirm) = &record.confirm {
            self.confirm.lock().unwrap_or_else(|p| p.into_inner()).push(confirm.clone());
        }
        let refusal = match oversize(&record, &self.limits) {
            Some(reason) => reason,
            None => match enqueue(&self.producer.load(), base_record(&record, ()), metrics) {
                Ok(()) => return,
                Err((e, _)) if is_permanent(&e) => format!("the producer refused the record: {e}"),
                Err((e, _)) => {
                    // The producer, not the record, failed: the transaction must not commit.
                    tracing::warn!(error = %e, "the transactional producer refused a record; the transaction will be aborted");
                    self.doomed.store(true, Ordering::SeqCst);
                    return;
                }
            },
        };
        let event = &batch.jobs[job as usize];
        match record.kind {
            RecordKind::Trigger { .. } | RecordKind::Forward => {
                let (what, campaign) = match record.kind {
                    RecordKind::Trigger { campaign } => (format!("the trigger of campaign {campaign}"), Some(campaign)),
                    _ => ("the event's copy for the repartition topic".to_string(), None),
                };
                let reason = format!("{what} was refused: {refusal}");
                tracing::warn!(campaign, partition = event.partition, offset = event.offset, "{reason}; sending the event to the dead-letter topic");
                metrics.delivery_failed("dead_lettered");
                metrics.dead_letters.inc();
                self.send(dead_letter(&self.processor.settings, event, &reason, campaign), batch, job);
            }
            RecordKind::Changelog { partition } => {
                metrics.delivery_failed("lost_state_change");
                tracing::error!(partition, "a per-player state change could not be written to the changelog ({refusal}); it holds on this instance only");
            }
            RecordKind::DeadLetter => {
                metrics.delivery_failed("lost_dead_letter");
                tracing::error!(partition = event.partition, offset = event.offset, "a dead letter could not be written ({refusal}); the event's offset passes without it");
            }
        }
    }

    fn before_dispatch(&self, consumer: &EventConsumer) -> Result<bool> {
        if let Some(failure) = self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            bail!(failure);
        }
        if !self.initialised.load(Ordering::SeqCst) {
            self.initialise()?;
        }
        let mut txn = self.txn.lock().unwrap_or_else(|p| p.into_inner());
        if !txn.open {
            self.clear_abandoned(consumer)?;
            let producer = self.producer.load_full();
            if let Err(e) = self.retrying("beginning a transaction", || producer.begin_transaction()) {
                self.recreate(consumer, &e)?;
                self.clear_abandoned(consumer)?;
                let producer = self.producer.load_full();
                self.retrying("beginning a transaction", || producer.begin_transaction())
                    .map_err(|e| anyhow!("the transactional producer cannot go on: {e}"))?;
            }
            txn.open = true;
            txn.opened = Some(Instant::now());
        }
        Ok(!self.rewind.load(Ordering::SeqCst))
    }

    fn after_poll(&self, consumer: &EventConsumer) -> Result<()> {
        if !self.initialise_when_assigned(consumer)? {
            return Ok(());
        }
        let due = {
            let mut txn = self.txn.lock().unwrap_or_else(|p| p.into_inner());
            Self::merge(&mut txn, self.tracker.pop_done());
            txn.open && txn.opened.is_some_and(|t| t.elapsed() >= COMMIT_INTERVAL)
        };
        if due {
            self.commit(consumer, "interval")?;
        }
        let txn = self.txn.lock().unwrap_or_else(|p| p.into_inner());
        if !txn.open {
            self.clear_abandoned(consumer)?;
        }
        Ok(())
    }

    fn take_rewind(&self, consumer: &EventConsumer) -> Result<bool> {
        if !self.rewind.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let reset = match self.processor.settings.auto_offset_reset {
            crate::config::OffsetReset::Earliest => Offset::Beginning,
            crate::config::OffsetReset::Latest => Offset::End,
        };
        // A short wait: the poll loop must go on serving the group (a rebalance may be what the
        // answer waits for), discarding what it reads, until the committed offsets are known.
        let committed = match consumer.committed(REWIND_CALL_TIMEOUT) {
            Ok(committed) => committed,
            Err(e) => {
                let mut since = self.rewind_pending_since.lock().unwrap_or_else(|p| p.into_inner());
                let since = *since.get_or_insert_with(Instant::now);
                if since.elapsed() >= RETRY_LIMIT {
                    bail!(
                        "reading the committed offsets to rewind to kept failing for {} s (the group coordinator does not answer): {e}",
                        since.elapsed().as_secs()
                    );
                }
                if since.elapsed() < REWIND_CALL_TIMEOUT {
                    tracing::warn!(error = %e, "reading the committed offsets to rewind to failed; discarding what is read meanwhile and retrying");
                }
                return Ok(true);
            }
        };
        self.rewind.store(false, Ordering::SeqCst);
        *self.rewind_pending_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
        for elem in committed.elements() {
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

    fn lost(&self, consumer: &EventConsumer) {
        let mut txn = self.txn.lock().unwrap_or_else(|p| p.into_inner());
        if txn.open {
            self.tracker.drain(|_| {}, || !self.stopping());
            if let Err(e) = self.abort_open(consumer, &mut txn, "the assignment was lost") {
                drop(txn);
                self.record_failure(e);
            }
        }
    }

    fn close(&self, consumer: &EventConsumer) -> Result<()> {
        self.commit(consumer, "stopping")
    }

    fn state_settled(&self) -> bool {
        !self.txn.lock().unwrap_or_else(|p| p.into_inner()).open
    }
}

/// Adds `offsets` to the producer's open transaction, on a thread of its own: `hung` is set
/// when the call has not returned within [`HUNG_CALL_LIMIT`] (the producer must be replaced).
/// Without group metadata (not a member right now) the offsets cannot be sent: an abortable
/// failure.
fn send_offsets(producer: &Arc<TxnProducer>, consumer: &EventConsumer, offsets: TopicPartitionList, hung: &mut bool) -> Result<(), KafkaError> {
    let metadata = consumer.group_metadata().ok_or(KafkaError::Global(RDKafkaErrorCode::State))?;
    let p = producer.clone();
    match on_own_thread(HUNG_CALL_LIMIT, move || p.send_offsets_to_transaction(&offsets, &metadata, CALL_TIMEOUT)) {
        Some(result) => result,
        None => {
            *hung = true;
            Err(KafkaError::Global(RDKafkaErrorCode::OperationTimedOut))
        }
    }
}

/// Runs `call` on a thread of its own and waits up to `limit` for its result; None if it has not
/// returned by then (the thread is left to finish, or not, on its own).
fn on_own_thread<T: Send + 'static>(limit: Duration, call: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new().name("rtcrm-txn-call".into()).spawn(move || {
        let _ = tx.send(call());
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "starting a thread for a transactional call failed; the call is given up");
        return None;
    }
    rx.recv_timeout(limit).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_that_does_not_return_in_time_is_given_up() {
        assert_eq!(on_own_thread(Duration::from_secs(5), || 7), Some(7));
        let t0 = Instant::now();
        assert_eq!(on_own_thread(Duration::from_millis(200), || std::thread::sleep(Duration::from_secs(3))), None);
        assert!(t0.elapsed() < Duration::from_secs(2), "the wait ends at the limit");
    }
}
