//! The stores of the partitions this process owns: opened and restored on assignment (before
//! the partition's events are evaluated), flushed and released on revocation.

use crate::kafka::{client_config, KafkaContext};
use crate::processor::Processor;
use crate::state::controls::Controls;
use crate::state::decide::Source;
use crate::state::store::{Census, PartitionStore, StateDb, StateError};
use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Changelog records applied per restore batch.
const RESTORE_BATCH: usize = 10_000;

/// The owned partitions' stores.
pub struct States {
    db: Arc<StateDb>,
    /// Overlays per store: the number of workers.
    shards: usize,
    /// Partitions of the events topic (and so of the changelog and repartition topics).
    pub partitions: i32,
    stores: RwLock<HashMap<i32, Arc<PartitionStore>>>,
    /// Timer triggers delivered (at-least-once) or committed (exactly-once), per partition: the
    /// keys whose pending firing can now be cleared.
    confirmed: Mutex<HashMap<i32, Vec<String>>>,
    /// Keys whose timer trigger is in flight (not confirmed yet), per partition.
    in_flight: Mutex<HashMap<i32, HashSet<String>>>,
    /// Restores that failed.
    failures: Mutex<Vec<String>>,
    /// The next offset to read, per (source, partition), as last committed (at-least-once).
    committed: Mutex<HashMap<(Source, i32), i64>>,
}

impl States {
    pub fn open(processor: &Processor, partitions: i32) -> Result<Arc<States>> {
        let mut dir = processor.settings.process_state_dir();
        let db = match StateDb::open(&dir) {
            // Another live process holds the directory: one with the same group and instance id,
            // which this one is about to fence (a takeover). The changelog is the source of
            // truth, so this process keeps its state in a directory of its own and restores it
            // from there.
            Err(StateError::Store { source: fjall::Error::Locked, .. }) => {
                let own = dir.with_file_name(format!(
                    "{}.takeover-{}",
                    dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                    std::process::id()
                ));
                tracing::warn!(
                    locked = %dir.display(),
                    dir = %own.display(),
                    "the state directory is in use by another rtcrm process with the same --group-id and --instance-id;                      restoring the per-player state from the changelog into a directory of this process"
                );
                dir = own;
                StateDb::open(&dir)
            }
            other => other,
        }
        .with_context(|| format!("opening the per-player state in {}", dir.display()))?;
        tracing::info!(dir = %dir.display(), partitions, "per-player state store opened");
        let states = States::new(db, processor.settings.workers, partitions);
        // The HTTP API reads players' states through the processor.
        processor.states.store(Some(states.clone()));
        Ok(states)
    }

    fn new(db: Arc<StateDb>, shards: usize, partitions: i32) -> Arc<States> {
        Arc::new(States {
            db,
            shards,
            partitions,
            stores: RwLock::default(),
            confirmed: Mutex::default(),
            in_flight: Mutex::default(),
            failures: Mutex::default(),
            committed: Mutex::default(),
        })
    }

    /// States over `db` without a processor, with `owned` partitions opened and restored (tests).
    #[cfg(test)]
    pub fn detached(db: Arc<StateDb>, partitions: i32, owned: &[i32]) -> Arc<States> {
        let states = States::new(db, 1, partitions);
        for p in owned {
            let store = states.db.partition(*p, 1).expect("opening a test partition");
            store.set_restored();
            states.stores.write().unwrap_or_else(|p| p.into_inner()).insert(*p, store);
        }
        states
    }

    /// Records offsets the consumer group committed (`next`: the next offset to read).
    pub fn record_committed(&self, source: Source, partition: i32, next: i64) {
        let mut committed = self.committed.lock().unwrap_or_else(|p| p.into_inner());
        let entry = committed.entry((source, partition)).or_insert(next);
        *entry = (*entry).max(next);
    }

    /// The next offset to read of `source`'s `partition`, as last committed by this process.
    pub fn committed(&self, source: Source, partition: i32) -> Option<i64> {
        self.committed.lock().unwrap_or_else(|p| p.into_inner()).get(&(source, partition)).copied()
    }

    /// The store of an owned partition (restored or not).
    pub fn store(&self, partition: i32) -> Option<Arc<PartitionStore>> {
        self.stores.read().unwrap_or_else(|p| p.into_inner()).get(&partition).cloned()
    }

    /// Every owned partition's store.
    pub fn all(&self) -> Vec<Arc<PartitionStore>> {
        self.stores.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Opens the store of a newly owned `partition` and restores it on a thread of its own;
    /// `false` when it was owned already.
    pub fn assign(self: &Arc<Self>, processor: &Arc<Processor>, partition: i32) -> Result<bool, StateError> {
        if self.store(partition).is_some() {
            return Ok(false);
        }
        let store = self.db.partition(partition, self.shards)?;
        self.stores.write().unwrap_or_else(|p| p.into_inner()).insert(partition, store.clone());
        let processor = processor.clone();
        let states = self.clone();
        std::thread::Builder::new()
            .name(format!("rtcrm-restore-{partition}"))
            .spawn(move || {
                let started = Instant::now();
                // Not revoked (and maybe assigned again) meanwhile.
                let still_owned = || states.store(partition).is_some_and(|s| Arc::ptr_eq(&s, &store));
                match restore(&processor, &store) {
                    Ok(records) => {
                        // What the partition holds before its events are evaluated (they change
                        // the gauges from there on), counted after they are let through.
                        let restored = store.snapshot();
                        store.set_restored();
                        tracing::info!(
                            partition,
                            records,
                            states = store.approximate_len(),
                            seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
                            "per-player state restored"
                        );
                        let census = store.census(&restored);
                        if still_owned() {
                            count_in_gauges(&processor, store.partition, census, 1);
                        }
                    }
                    Err(e) if !still_owned() => {
                        // Revoked while restoring: the next owner restores it.
                        tracing::info!(partition, error = format!("{e:#}"), "restoring the per-player state of a revoked partition stopped");
                    }
                    Err(e) => {
                        // The partition stays held back; the event path reports it.
                        tracing::error!(partition, error = format!("{e:#}"), "restoring the per-player state failed");
                        states.failed(partition, format!("{e:#}"));
                    }
                }
            })
            .map(|_| true)
            .map_err(|e| StateError::Store { dir: "restore thread".into(), source: fjall::Error::Io(e) })
    }

    fn failed(&self, partition: i32, reason: String) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).push(format!("restoring the per-player state of partition {partition}: {reason}"));
    }

    /// A restore that failed (the event path must stop), if any.
    pub fn failure(&self) -> Option<String> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).first().cloned()
    }

    /// Flushes and releases the store of a revoked partition (its states leave the gauges).
    pub fn release(&self, processor: &Processor, partition: i32) {
        let store = self.stores.write().unwrap_or_else(|p| p.into_inner()).remove(&partition);
        if let Some(store) = store {
            if let Err(e) = store.flush().and_then(|_| store.persist()) {
                tracing::warn!(partition, error = %e, "flushing the per-player state of a revoked partition");
            }
            if store.is_restored() {
                count_in_gauges(processor, partition, store.census(&store.snapshot()), -1);
            }
        }
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&partition);
        self.confirmed.lock().unwrap_or_else(|p| p.into_inner()).remove(&partition);
    }

    /// Writes every owned store's changes to disk.
    pub fn flush_all(&self) -> Result<(), StateError> {
        for store in self.all() {
            store.flush()?;
        }
        Ok(())
    }

    /// Drops every store's changes not on disk (an aborted transaction), and forgets the timer
    /// triggers in flight (they were aborted too: their timers fire again).
    pub fn discard_all(&self) {
        for store in self.all() {
            store.discard();
        }
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.confirmed.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// A timer trigger for `key` of `partition` is being sent; `false` if one is in flight.
    pub fn sending(&self, partition: i32, key: &str) -> bool {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).entry(partition).or_default().insert(key.to_owned())
    }

    /// Whether a timer trigger for `key` of `partition` is in flight.
    pub fn is_in_flight(&self, partition: i32, key: &str) -> bool {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).get(&partition).is_some_and(|s| s.contains(key))
    }

    /// The timer trigger of `key` of `partition` is delivered (or committed).
    pub fn confirm(&self, partition: i32, key: String) {
        self.confirmed.lock().unwrap_or_else(|p| p.into_inner()).entry(partition).or_default().push(key);
    }

    /// The confirmed keys of `partition`, taken (they are no longer in flight).
    pub fn take_confirmed(&self, partition: i32) -> Vec<String> {
        let keys = self.confirmed.lock().unwrap_or_else(|p| p.into_inner()).remove(&partition).unwrap_or_default();
        if !keys.is_empty() {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(set) = in_flight.get_mut(&partition) {
                for k in &keys {
                    set.remove(k);
                }
            }
        }
        keys
    }
}

/// Adds (`sign` 1) or removes (-1) a partition's census to the per-campaign gauges
/// `rtcrm_state_entries`, `rtcrm_state_bytes` and `rtcrm_timers_pending`.
fn count_in_gauges(processor: &Processor, partition: i32, census: Result<BTreeMap<i64, Census>, StateError>, sign: i64) {
    let census = match census {
        Ok(census) => census,
        Err(e) => {
            tracing::warn!(partition, error = %e, "counting the per-player states for the metrics");
            return;
        }
    };
    let campaigns = processor.registry.snapshot();
    for (id, c) in census {
        if let Some(campaign) = campaigns.get(id) {
            let t = &campaign.telemetry;
            t.state_entries.inc_by(sign * c.entries);
            t.state_bytes.inc_by(sign * c.bytes);
            t.timers.inc_by(sign * c.timers);
        }
    }
}

/// How long a restore retries a cluster that does not answer (or does not know the changelog's
/// partition yet, as just after the topic was created or a broker came back) before the event
/// path fails and the process exits non-zero.
const RESTORE_RETRY_LIMIT: Duration = Duration::from_secs(120);

/// The changelog partition's low and high watermarks, retried while the cluster is unavailable
/// (for [`RESTORE_RETRY_LIMIT`] at most).
fn changelog_bounds(consumer: &BaseConsumer<KafkaContext>, topic: &str, partition: i32) -> Result<(i64, i64)> {
    let started = Instant::now();
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Ok(bounds) => return Ok(bounds),
            Err(e) if started.elapsed() < RESTORE_RETRY_LIMIT => {
                tracing::warn!(error = %e, partition, "reading the end of the changelog; retrying in 1 s");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("reading the end of `{topic}` partition {partition} (retried for {} s)", RESTORE_RETRY_LIMIT.as_secs())
                })
            }
        }
    }
}

/// Reads the changelog partition from the store's checkpoint to its end (committed records
/// only) into the store; returns how many records were applied.
fn restore(processor: &Processor, store: &PartitionStore) -> Result<usize> {
    let settings = &processor.settings;
    let topic = settings.changelog_topic.as_str();
    let consumer: BaseConsumer<KafkaContext> = client_config(settings, "restore")
        .set("group.id", format!("rtcrm-restore-{}", settings.instance_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create_with_context(KafkaContext { errors: processor.kafka_errors.clone(), name: "state restore" })
        .context("creating the changelog reader")?;
    let partition = store.partition;
    let (low, high) = changelog_bounds(&consumer, topic, partition)?;
    let from = (store.checkpoint() + 1).max(low);
    if from >= high {
        return Ok(0);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
    consumer.assign(&tpl)?;
    drop(tpl);
    let campaigns = processor.registry.snapshot();
    let controls_of = |id: i64| -> Option<Controls> { campaigns.get(id).map(|c| c.def.controls.clone()) };
    let (mut applied, mut batch, mut in_batch, mut last) = (0usize, store.batch(), 0usize, from - 1);
    let mut idle_since = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                idle_since = Instant::now();
                let key = m.key().unwrap_or_default();
                store.restore_record(&mut batch, key, m.payload(), &controls_of)?;
                last = m.offset();
                applied += 1;
                in_batch += 1;
                if in_batch >= RESTORE_BATCH {
                    store.commit_restore(std::mem::replace(&mut batch, store.batch()), last)?;
                    in_batch = 0;
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {
                let position = consumer.position()?.find_partition(topic, partition).and_then(|e| e.offset().to_raw()).unwrap_or(last + 1);
                if position >= high {
                    break;
                }
            }
            Some(Err(e)) => {
                if idle_since.elapsed() > RESTORE_RETRY_LIMIT {
                    return Err(e).context(format!("reading `{topic}` partition {partition}"));
                }
                tracing::warn!(error = %e, partition, "reading the changelog; retrying");
            }
            None if idle_since.elapsed() > RESTORE_RETRY_LIMIT => {
                anyhow::bail!("reading `{topic}` partition {partition}: no progress for {} s at offset {}", RESTORE_RETRY_LIMIT.as_secs(), last + 1)
            }
            None => {}
        }
    }
    // The end offset may be a transaction marker: the checkpoint goes to the end either way.
    store.commit_restore(batch, (high - 1).max(last))?;
    Ok(applied)
}
