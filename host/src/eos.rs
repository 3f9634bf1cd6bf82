//! Exactly-once delivery (`--delivery exactly-once`, spec §8): consume–transform–produce in Kafka
//! transactions (KIP-447).
//!
//! One thread polls the events, evaluates them (the same [`Worker`] as at-least-once mode, with
//! a transactional producer) and, per batch, commits the triggers, the dead letters and the
//! consumed offsets in one transaction. Readers of the triggers topic with
//! `isolation.level=read_committed` then see each trigger once, even across crashes.
//!
//! - A batch ends after [`BATCH_EVENTS`] events or [`BATCH_TIME`], whichever comes first.
//! - A rebalance that takes partitions away commits the open transaction first (in the consumer's
//!   rebalance callback), so no offset of a revoked partition is committed later.
//! - An abortable error aborts the transaction and rewinds to the committed offsets: the batch is
//!   evaluated again. A fatal error (this producer was fenced by a newer instance with the same
//!   `--instance-id`) stops the processor with an error.
//! - Evaluation runs on one thread: parallelism comes from running more instances.

use crate::events::{Job, Worker};
use crate::Shared;
use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Most events in one transaction.
const BATCH_EVENTS: usize = 500;
/// Longest a transaction stays open (it holds back read_committed readers meanwhile).
const BATCH_TIME: Duration = Duration::from_millis(100);
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// The open transaction, shared with the rebalance callback.
struct Txn {
    producer: FutureProducer,
    open: bool,
    /// Next offset to consume, per partition, for the events processed in this transaction.
    offsets: BTreeMap<i32, i64>,
}

impl Txn {
    /// Commits the open transaction with its offsets (an empty one is committed too).
    fn commit(&mut self, consumer: &BaseConsumer<EosContext>, topic: &str) -> Result<(), KafkaError> {
        if !self.open {
            return Ok(());
        }
        if !self.offsets.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (partition, next) in &self.offsets {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
            }
            let metadata = consumer.group_metadata().ok_or(KafkaError::NoMessageReceived)?;
            self.producer.send_offsets_to_transaction(&tpl, &metadata, TXN_TIMEOUT)?;
        }
        self.producer.commit_transaction(TXN_TIMEOUT)?;
        self.open = false;
        self.offsets.clear();
        Ok(())
    }

    fn abort(&mut self) {
        if self.open {
            if let Err(e) = self.producer.abort_transaction(TXN_TIMEOUT) {
                tracing::error!(error = %e, "aborting a transaction");
            }
        }
        self.open = false;
        self.offsets.clear();
    }
}

/// Commits before partitions are taken away; tracks the assignment for readiness and metrics.
pub struct EosContext {
    shared: Arc<Shared>,
    txn: Arc<Mutex<Txn>>,
    /// Set when the transaction had to be aborted inside a callback: the loop rewinds.
    rewind: Arc<AtomicBool>,
}

impl ClientContext for EosContext {}

impl ConsumerContext for EosContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = rebalance {
            let mut txn = self.txn.lock().unwrap();
            if let Err(e) = txn.commit(consumer, &self.shared.settings.event_topic) {
                tracing::warn!(error = %e, "committing the transaction before a rebalance failed; aborting it");
                txn.abort();
                self.rewind.store(true, Ordering::SeqCst);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        crate::events::record_assignment(&self.shared, consumer, rebalance);
    }
}

/// Runs the exactly-once loop on its own thread until `shutdown`.
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (shared, stop) = (shared.clone(), stop.clone());
        std::thread::Builder::new().name("rtcrm-eos".into()).spawn(move || run_loop(shared, stop))?
    };
    let _ = shutdown.changed().await;
    stop.store(true, Ordering::SeqCst);
    tracing::info!("stopping: committing the open transaction");
    tokio::task::spawn_blocking(move || thread.join()).await?.map_err(|_| anyhow::anyhow!("the exactly-once loop panicked"))?
}

fn run_loop(shared: Arc<Shared>, stop: Arc<AtomicBool>) -> Result<()> {
    let settings = shared.settings.clone();
    let producer = crate::kafka::transactional_producer(&settings)?;
    let txn = Arc::new(Mutex::new(Txn { producer: producer.clone(), open: false, offsets: BTreeMap::new() }));
    let rewind = Arc::new(AtomicBool::new(false));
    let consumer: BaseConsumer<EosContext> = crate::kafka::event_consumer_config(&settings)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create_with_context(EosContext { shared: shared.clone(), txn: txn.clone(), rewind: rewind.clone() })
        .context("creating the events consumer")?;
    consumer.subscribe(&[&settings.event_topic]).with_context(|| format!("subscribing to `{}`", settings.event_topic))?;
    let mut worker = Worker::new(shared.clone(), producer.clone());
    let mut batch_started = Instant::now();
    let mut in_batch = 0usize;
    while !stop.load(Ordering::SeqCst) {
        if rewind.swap(false, Ordering::SeqCst) {
            rewind_to_committed(&consumer)?;
        }
        let message = consumer.poll(Duration::from_millis(20));
        if let Some(message) = message {
            let Some(job) = Job::received(message) else { continue };
            let mut t = txn.lock().unwrap();
            if !t.open {
                t.producer.begin_transaction().context("beginning a transaction")?;
                t.open = true;
                batch_started = Instant::now();
                in_batch = 0;
            }
            t.offsets.insert(job.partition, job.offset + 1);
            drop(t);
            // Deliveries are part of the transaction: its commit waits for them.
            drop(worker.process(job));
            in_batch += 1;
        }
        let due = in_batch >= BATCH_EVENTS || batch_started.elapsed() >= BATCH_TIME;
        if due {
            commit_or_abort(&txn, &consumer, &settings.event_topic)?;
            in_batch = 0;
            batch_started = Instant::now();
        }
    }
    commit_or_abort(&txn, &consumer, &settings.event_topic)?;
    consumer.unsubscribe();
    Ok(())
}

/// Commits the open transaction; on an abortable error aborts it and rewinds, so the batch is
/// evaluated again; a fatal error ends the loop.
fn commit_or_abort(txn: &Mutex<Txn>, consumer: &BaseConsumer<EosContext>, topic: &str) -> Result<()> {
    let mut t = txn.lock().unwrap();
    match t.commit(consumer, topic) {
        Ok(()) => Ok(()),
        Err(KafkaError::Transaction(e)) if e.is_fatal() => {
            bail!("the transactional producer failed fatally (fenced by another instance with the same --instance-id?): {e}")
        }
        Err(e) => {
            tracing::warn!(error = %e, "committing a transaction failed; aborting it and evaluating the batch again");
            t.abort();
            drop(t);
            rewind_to_committed(consumer)
        }
    }
}

/// Seeks every owned partition back to its committed offset (without one: where a new group
/// starts, `--auto-offset-reset`).
fn rewind_to_committed(consumer: &BaseConsumer<EosContext>) -> Result<()> {
    let reset = match consumer.context().shared.settings.auto_offset_reset {
        crate::config::OffsetReset::Earliest => Offset::Beginning,
        crate::config::OffsetReset::Latest => Offset::End,
    };
    let committed = consumer.committed(Duration::from_secs(10)).context("reading committed offsets")?;
    for elem in committed.elements() {
        let offset = match elem.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => reset,
        };
        if let Err(e) = consumer.seek(elem.topic(), elem.partition(), offset, Duration::from_secs(10)) {
            tracing::warn!(error = %e, partition = elem.partition(), "rewinding");
        }
    }
    Ok(())
}
