//! Where a backtest's events come from: a range of the events topic, or a JSON-lines file.
//!
//! **Topic.** One consumer created from the operator's client settings
//! ([`crate::kafka::client_config`], so TLS and SASL apply), partitions taken with `assign`: no
//! group is joined and no offset is committed (the `group.id` librdkafka requires is unique to
//! the run and never used). Per partition:
//! - start: the first offset whose timestamp is at or after `--from` (`offsets_for_times`);
//! - end: the first offset whose timestamp is at or after `--to`, else the end offset (high
//!   watermark) when the run starts, so events arriving meanwhile are not read;
//! - every record in between is kept when its timestamp lies in `[from, to)`.
//!
//! A broker that cannot look offsets up by time (librdkafka's mock cluster, under `rtcrm dev`)
//! answers "none" for `--from`; when the partition's last record is at or after `--from`, the
//! partition is read from its start instead (the timestamp filter keeps the result exact).
//!
//! This is exact when record timestamps do not go backwards across the `--to` boundary
//! (`LogAppendTime` topics; producers with one clock). A record with a timestamp before `--to`
//! written after the first record at or after `--to` is not read: Kafka's time index cannot
//! find it without reading the rest of the partition.
//!
//! **File.** One event per line (blank lines skipped), in order; a line's "offset" is its line
//! number (from 1), on partition 0.

use crate::config::Settings;
use crate::dryrun::backtest::interval::Interval;
use crate::dryrun::backtest::Progress;
use crate::kafka::{ClientErrors, KafkaContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long the reader waits without any record before it reports the topic stalled.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why events could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The cluster did not answer, or refused a request.
    #[error("{0}")]
    Kafka(String),
    /// The events topic does not exist.
    #[error("the events topic `{topic}` does not exist on {bootstrap}; check --event-topic (or event_topic in the config file)")]
    NoTopic { topic: String, bootstrap: String },
    /// A partition stopped giving records before its end.
    #[error(
        "reading `{topic}` stalled: partition {partition} gave no record for {} s at offset {position} (its end: {end}){reason}",
        STALL_TIMEOUT.as_secs()
    )]
    Stalled { topic: String, partition: i32, position: i64, end: i64, reason: String },
    /// The events file could not be read.
    #[error("reading the events file {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
}

/// One record as read.
pub struct Raw<'a> {
    pub partition: i32,
    pub offset: i64,
    /// Unix milliseconds (None for file lines).
    pub timestamp_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    /// The source's partition count (a file: 1), for the players' state partitions.
    pub partitions: i32,
}

/// What the reader does after a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Stop reading (a bound was reached, or the run was cancelled).
    Stop,
}

/// Where the events come from.
pub enum Source {
    /// A range of the events topic (see the module documentation).
    Topic { settings: Box<Settings>, interval: Interval },
    /// A JSON-lines file.
    File(PathBuf),
}

/// What was read from, for the report.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceView {
    Topic {
        topic: String,
        /// RFC 3339.
        from: String,
        to: Option<String>,
        /// Per partition: `[start_offset, end_offset)`.
        partitions: Vec<PartitionRange>,
        /// Records in the offset ranges whose timestamp lies outside the interval (not read as events).
        outside_interval: u64,
    },
    File { path: String },
}

/// The offsets a backtest reads from one partition: `[start_offset, end_offset)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PartitionRange {
    pub partition: i32,
    pub start_offset: i64,
    pub end_offset: i64,
}

impl Source {
    /// The "topic" part of the trigger id of an event without `event_id` (spec §9): the events
    /// topic, or the file's name.
    pub fn trigger_topic(&self) -> String {
        match self {
            Source::Topic { settings, .. } => settings.event_topic.clone(),
            Source::File(path) => path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned()),
        }
    }

    /// Reads every record of the source, handing each to `each` until it says [`Flow::Stop`];
    /// `idle` is asked the same while no record arrives. `progress` gets the total and the
    /// position as they become known (records for a topic, bytes for a file).
    pub fn read(&self, progress: &Progress, idle: &dyn Fn() -> Flow, each: &mut dyn FnMut(Raw<'_>) -> Flow) -> Result<SourceView, SourceError> {
        match self {
            Source::Topic { settings, interval } => read_topic(settings, *interval, progress, idle, each),
            Source::File(path) => read_file(path, progress, each).map(|()| SourceView::File { path: path.display().to_string() }),
        }
    }
}

fn kafka(context: &str, e: impl std::fmt::Display, errors: &ClientErrors) -> SourceError {
    let reason = errors.last().map(|r| format!(" (librdkafka: {r})")).unwrap_or_default();
    SourceError::Kafka(format!("{context}: {e}{reason}"))
}

/// The events consumer of a backtest: outside any group, nothing committed.
fn consumer(settings: &Settings, errors: &ClientErrors) -> Result<BaseConsumer<KafkaContext>, SourceError> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    crate::kafka::client_config(settings, "backtest")
        // Required by librdkafka, never joined (partitions are assigned) nor committed to.
        .set("group.id", format!("rtcrm-backtest-{}-{nanos}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // What the processor would see.
        .set("isolation.level", "read_committed")
        // Tells when a partition has nothing more (its end may be a transaction marker).
        .set("enable.partition.eof", "true")
        .create_with_context(KafkaContext { errors: errors.clone(), name: "backtest reader" })
        .map_err(|e| kafka("creating the Kafka consumer", e, errors))
}

/// Each partition's offsets for the interval (see the module documentation).
pub fn plan<C: rdkafka::consumer::ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str, interval: Interval, errors: &ClientErrors) -> Result<Vec<PartitionRange>, SourceError> {
    let timeout = crate::kafka::CONNECT_TIMEOUT;
    let highs = crate::kafka::end_offsets(consumer, topic).map_err(|e| kafka(&format!("reading the end offsets of `{topic}`"), format!("{e:#}"), errors))?;
    if highs.is_empty() {
        // No such topic.
        return Ok(Vec::new());
    }
    let by_time = |ms: i64| -> Result<BTreeMap<i32, Offset>, SourceError> {
        let mut tpl = TopicPartitionList::new();
        for p in highs.keys() {
            tpl.add_partition_offset(topic, *p, Offset::Offset(ms)).map_err(|e| kafka("offsets_for_times", e, errors))?;
        }
        let found = consumer
            .offsets_for_times(tpl, timeout)
            .map_err(|e| kafka(&format!("looking up the offsets of `{topic}` by time"), e, errors))?;
        Ok(found.elements_for_topic(topic).iter().map(|e| (e.partition(), e.offset())).collect())
    };
    let starts = by_time(interval.from_ms())?;
    let ends = match interval.to_ms() {
        Some(ms) => Some(by_time(ms)?),
        None => None,
    };
    let mut out = Vec::new();
    for (&partition, &high) in &highs {
        let offset_or_high = |o: Option<&Offset>| match o {
            Some(Offset::Offset(o)) => (*o).min(high),
            // No record at or after that time.
            _ => high,
        };
        let (low, _) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(|e| kafka(&format!("reading the watermarks of `{topic}` partition {partition}"), e, errors))?;
        let mut start = offset_or_high(starts.get(&partition)).max(low);
        if start == high && high > low && last_timestamp(consumer, topic, partition, high - 1).is_some_and(|ts| ts >= interval.from_ms()) {
            // "No record at or after --from", yet the last one is: the broker cannot look up
            // offsets by time (librdkafka's mock cluster, under `rtcrm dev`). Every record is
            // filtered by its timestamp anyway: read the partition from its start.
            tracing::debug!(topic, partition, "offsets_for_times is not supported here: reading from the start");
            start = low;
        }
        let end = ends.as_ref().map_or(high, |ends| offset_or_high(ends.get(&partition)));
        out.push(PartitionRange { partition, start_offset: start, end_offset: end.max(start) });
    }
    Ok(out)
}

/// The timestamp of the record at `offset` (None: there is none, e.g. a transaction marker, or
/// it did not come within a few seconds). Leaves the consumer without an assignment.
fn last_timestamp<C: rdkafka::consumer::ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str, partition: i32, offset: i64) -> Option<i64> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset)).ok()?;
    consumer.assign(&tpl).ok()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut found = None;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) if m.partition() == partition => {
                found = m.timestamp().to_millis();
                break;
            }
            Some(Err(KafkaError::PartitionEOF(p))) if p == partition => break,
            _ => {}
        }
    }
    let _ = consumer.unassign();
    found
}

fn read_topic(settings: &Settings, interval: Interval, progress: &Progress, idle: &dyn Fn() -> Flow, each: &mut dyn FnMut(Raw<'_>) -> Flow) -> Result<SourceView, SourceError> {
    let topic = settings.event_topic.as_str();
    let errors = ClientErrors::default();
    let consumer = consumer(settings, &errors)?;
    if let Err(e) = crate::kafka::probe(consumer.client(), settings, &errors, crate::kafka::CONNECT_TIMEOUT) {
        // A plain consumer reports librdkafka's errors (the refused connection) when polled.
        let _ = consumer.poll(Duration::from_millis(100));
        let reason = errors.last().map(|r| format!(" (librdkafka: {r})")).unwrap_or_default();
        return Err(SourceError::Kafka(format!("{e:#}{reason}")));
    }
    let ranges = plan(&consumer, topic, interval, &errors)?;
    if ranges.is_empty() {
        return Err(SourceError::NoTopic { topic: topic.to_owned(), bootstrap: settings.bootstrap_servers.clone() });
    }
    let partitions = ranges.len() as i32;
    let total: i64 = ranges.iter().map(|r| r.end_offset - r.start_offset).sum();
    progress.total.store(total.max(0) as u64, Ordering::Relaxed);
    let mut pending: BTreeMap<i32, i64> = ranges.iter().filter(|r| r.end_offset > r.start_offset).map(|r| (r.partition, r.end_offset)).collect();
    let mut positions: BTreeMap<i32, i64> = ranges.iter().map(|r| (r.partition, r.start_offset)).collect();
    let mut outside = 0u64;
    if !pending.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for r in ranges.iter().filter(|r| pending.contains_key(&r.partition)) {
            tpl.add_partition_offset(topic, r.partition, Offset::Offset(r.start_offset)).map_err(|e| kafka("assign", e, &errors))?;
        }
        consumer.assign(&tpl).map_err(|e| kafka(&format!("assigning the partitions of `{topic}`"), e, &errors))?;
    }
    let done = |pending: &mut BTreeMap<i32, i64>, partition: i32| {
        if pending.remove(&partition).is_some() {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(topic, partition);
            // Fetching past the end is only wasted work: an error here changes nothing.
            let _ = consumer.pause(&tpl);
        }
    };
    let mut last_record = Instant::now();
    let mut consumed = 0i64;
    let mut stopped = false;
    while !pending.is_empty() && !stopped {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_record = Instant::now();
                let partition = m.partition();
                let Some(&end) = pending.get(&partition) else { continue };
                if m.offset() >= end {
                    done(&mut pending, partition);
                    continue;
                }
                positions.insert(partition, m.offset() + 1);
                consumed += 1;
                progress.position.store(consumed as u64, Ordering::Relaxed);
                let timestamp = m.timestamp().to_millis();
                if timestamp.is_some_and(|ts| interval.contains(ts)) {
                    let raw = Raw { partition, offset: m.offset(), timestamp_ms: timestamp, key: m.key(), payload: m.payload(), partitions };
                    stopped = each(raw) == Flow::Stop;
                } else {
                    outside += 1;
                }
                if m.offset() + 1 >= end {
                    done(&mut pending, partition);
                }
            }
            // The partition's current end: everything before `end` has been delivered.
            Some(Err(KafkaError::PartitionEOF(partition))) => done(&mut pending, partition),
            Some(Err(e)) => {
                if matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)) {
                    return Err(SourceError::NoTopic { topic: topic.to_owned(), bootstrap: settings.bootstrap_servers.clone() });
                }
                errors.record("backtest reader", &e, "");
            }
            None => {
                // A time limit or a cancellation must not wait for the next record.
                if idle() == Flow::Stop {
                    break;
                }
                // Transaction markers and compaction leave offsets that are never delivered.
                let reached: Vec<i32> = {
                    let position = consumer.position().map_err(|e| kafka("reading the consumer's position", e, &errors))?;
                    let reached = pending
                        .iter()
                        .filter(|(p, end)| matches!(position.find_partition(topic, **p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= **end))
                        .map(|(p, _)| *p)
                        .collect();
                    drop(position);
                    reached
                };
                for p in reached {
                    done(&mut pending, p);
                }
                if let Some((&partition, &end)) = pending.iter().next() {
                    if last_record.elapsed() > STALL_TIMEOUT {
                        return Err(SourceError::Stalled {
                            topic: topic.to_owned(),
                            partition,
                            position: positions[&partition],
                            end,
                            reason: errors.last().map(|r| format!("; librdkafka: {r}")).unwrap_or_default(),
                        });
                    }
                }
            }
        }
    }
    Ok(SourceView::Topic {
        topic: topic.to_owned(),
        from: crate::dryrun::backtest::interval::format_time(interval.from),
        to: interval.to.map(crate::dryrun::backtest::interval::format_time),
        partitions: ranges,
        outside_interval: outside,
    })
}

fn read_file(path: &PathBuf, progress: &Progress, each: &mut dyn FnMut(Raw<'_>) -> Flow) -> Result<(), SourceError> {
    let file_error = |source| SourceError::File { path: path.clone(), source };
    let file = std::fs::File::open(path).map_err(file_error)?;
    let size = file.metadata().map_err(file_error)?.len();
    progress.total.store(size, Ordering::Relaxed);
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::with_capacity(4096);
    let (mut number, mut bytes) = (0i64, 0u64);
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(file_error)?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        bytes += n as u64;
        progress.position.store(bytes, Ordering::Relaxed);
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        if each(Raw { partition: 0, offset: number, timestamp_ms: None, key: None, payload: Some(text), partitions: 1 }) == Flow::Stop {
            return Ok(());
        }
    }
}
