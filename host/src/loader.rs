//! The campaigns topic (the broadcast pattern, spec §8): every instance reads it from the
//! beginning, up to its end offsets, before evaluating any event, then follows new messages.
//! Filters compile on blocking threads, off the event path; a version stays in force until its
//! replacement has compiled.

use crate::campaign::{id_from_key, CampaignDef, FilterSource};
use crate::registry::State;
use crate::Shared;
use anyhow::{Context, Result};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use rtcrm_sandbox::{CompileError, CompiledFilter, Sandbox, WasmError};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Reads the campaigns topic until `shutdown`; sets `shared.campaigns_loaded` once it has read
/// up to the end offsets it saw at start.
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    let settings = &shared.settings;
    let consumer: StreamConsumer = crate::kafka::campaign_consumer_config(settings)
        .create()
        .context("creating the campaigns consumer")?;
    let topic = settings.campaign_topic.clone();
    let ends = end_offsets(&consumer, &topic).await?;
    let mut tpl = TopicPartitionList::new();
    for partition in ends.keys() {
        tpl.add_partition_offset(&topic, *partition, Offset::Beginning)?;
    }
    consumer.assign(&tpl).with_context(|| format!("reading the campaigns topic `{topic}`"))?;
    drop(tpl);
    // Partitions still to be read up to their end offset at start.
    let mut pending: HashMap<i32, i64> = ends.into_iter().filter(|(_, end)| *end > 0).collect();
    if pending.is_empty() {
        mark_loaded(&shared);
    }
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        let message = tokio::select! {
            _ = shutdown.changed() => break,
            m = consumer.recv() => m,
            _ = tick.tick(), if !pending.is_empty() => {
                // Compaction can remove the last offsets before the end watermark: the position
                // says when a partition has nothing more to give.
                if let Ok(positions) = consumer.position() {
                    for elem in positions.elements_for_topic(&topic) {
                        if let (Some(pos), Some(end)) = (elem.offset().to_raw(), pending.get(&elem.partition())) {
                            if pos >= *end {
                                pending.remove(&elem.partition());
                            }
                        }
                    }
                }
                if pending.is_empty() {
                    mark_loaded(&shared);
                }
                continue;
            }
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "reading the campaigns topic");
                continue;
            }
        };
        let (partition, offset) = (message.partition(), message.offset());
        let key = message.key().map(<[u8]>::to_vec);
        let value = message.payload().map(<[u8]>::to_vec);
        drop(message);
        apply(&shared, key, value).await;
        if let Some(end) = pending.get(&partition) {
            if offset + 1 >= *end {
                pending.remove(&partition);
                if pending.is_empty() {
                    mark_loaded(&shared);
                }
            }
        }
    }
    Ok(())
}

fn mark_loaded(shared: &Shared) {
    if !shared.campaigns_loaded.swap(true, Ordering::SeqCst) {
        tracing::info!(campaigns = shared.registry.snapshot().len(), "campaigns loaded");
        shared.metrics.update_campaigns(&shared.registry);
    }
}

/// The high watermark of each partition of `topic` (waiting for the topic to exist).
async fn end_offsets(consumer: &StreamConsumer, topic: &str) -> Result<HashMap<i32, i64>> {
    for _ in 0..60 {
        let ends = crate::kafka::end_offsets(consumer, topic).unwrap_or_default();
        if !ends.is_empty() {
            return Ok(ends.into_iter().collect());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("the campaigns topic `{topic}` does not exist (and could not be created)")
}

/// Why a campaign's filter was rejected.
#[derive(Debug)]
pub enum FilterRejection {
    /// The JavaScript does not compile (or yields no function).
    Js(CompileError),
    /// The WebAssembly module fails validation (`filter-sdk/ABI.md`).
    Wasm(WasmError),
}

impl std::fmt::Display for FilterRejection {
    /// The status-message text: a syntax error names its line and column.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FilterRejection::Js(e) => f.write_str(&describe(e)),
            FilterRejection::Wasm(e) => write!(f, "filter_wasm: {e}"),
        }
    }
}

/// Compiles a campaign's filter, either kind: the one check every way in (the campaigns topic,
/// the HTTP API, `rtcrm campaign put`) runs. Blocking: call it off the async reactor.
pub fn compile_filter(sandbox: &Sandbox, filter: &FilterSource) -> Result<CompiledFilter, FilterRejection> {
    match filter {
        FilterSource::Js(src) => sandbox.compile_js(src).map(CompiledFilter::Js).map_err(FilterRejection::Js),
        FilterSource::Wasm(bytes) => sandbox.load_wasm(bytes).map(CompiledFilter::Wasm).map_err(FilterRejection::Wasm),
    }
}

/// Applies one campaigns-topic message: compile and activate, reject, or delete.
pub async fn apply(shared: &Arc<Shared>, key: Option<Vec<u8>>, value: Option<Vec<u8>>) {
    let Some(value) = value else {
        match key.as_deref().and_then(id_from_key) {
            Some(id) => {
                shared.registry.delete(id);
                tracing::info!(campaign = id, "campaign deleted");
                publish_status(shared, Some(id), State::Deleted, None, "").await;
            }
            None => tracing::warn!("ignoring a campaigns-topic tombstone without a numeric key"),
        }
        shared.metrics.update_campaigns(&shared.registry);
        return;
    };
    let digest = crate::campaign::digest(&value);
    let def = match CampaignDef::parse(key.as_deref(), &value) {
        Ok(def) => def,
        Err(rejection) => {
            tracing::warn!(campaign = ?rejection.id, reason = %rejection.reason, "campaign rejected");
            if let Some(id) = rejection.id {
                shared.registry.reject(id, &rejection.reason);
            }
            publish_status(shared, rejection.id, State::Rejected, Some(&rejection.reason), &digest).await;
            shared.metrics.update_campaigns(&shared.registry);
            return;
        }
    };
    let sandbox = shared.sandbox.clone();
    let source = def.filter.clone();
    let compiled = tokio::task::spawn_blocking(move || compile_filter(&sandbox, &source).map_err(|e| e.to_string())).await;
    let id = def.id;
    match compiled {
        Ok(Ok(compiled)) => {
            shared.registry.activate(def, compiled, shared.sandbox.limits());
            tracing::info!(campaign = id, "campaign active");
            publish_status(shared, Some(id), State::Active, None, &digest).await;
        }
        Ok(Err(reason)) => {
            tracing::warn!(campaign = id, reason = %reason, "campaign rejected");
            shared.registry.reject(id, &reason);
            publish_status(shared, Some(id), State::Rejected, Some(&reason), &digest).await;
        }
        Err(join) => tracing::error!(campaign = id, error = %join, "compiling a campaign panicked"),
    }
    shared.metrics.update_campaigns(&shared.registry);
}

/// A compile error for a status message: a syntax error names its line and column.
pub fn describe(err: &CompileError) -> String {
    match err {
        CompileError::Syntax { message, line, column } => format!("{message} at line {line}, column {column}"),
        other => other.to_string(),
    }
}

/// Produces a status message (spec §2) keyed by the campaign id, and waits for its delivery.
pub async fn publish_status(shared: &Shared, id: Option<i64>, state: State, error: Option<&str>, digest: &str) {
    let status = serde_json::json!({
        "campaign_id": id,
        "state": state.as_str(),
        "error": error,
        "digest": digest,
        "instance": shared.settings.instance_id,
        "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    let key = id.map(|i| i.to_string()).unwrap_or_default();
    let payload = status.to_string();
    let record = FutureRecord::to(&shared.settings.status_topic).key(&key).payload(&payload);
    if let Err((e, _)) = shared.producer.send(record, Duration::from_secs(30)).await {
        tracing::warn!(error = %e, campaign = ?id, "publishing a campaign status failed");
    }
}
