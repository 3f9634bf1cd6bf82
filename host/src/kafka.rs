//! Kafka clients and topics (spec §1).

use crate::config::{OffsetReset, Settings};
use anyhow::{Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::FutureProducer;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::producer::Producer;
use std::collections::BTreeMap;
use std::time::Duration;

/// Largest campaign message: an 8 MiB module in base64, plus the campaign's fields.
pub const CAMPAIGN_MESSAGE_BYTES: &str = "16777216";

fn base(settings: &Settings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &settings.bootstrap_servers)
        .set("client.id", format!("rtcrm-{}", settings.instance_id));
    c
}

/// The trigger/status/DLQ producer: acks from all in-sync replicas, idempotent (no duplicates or
/// reordering from retries), retried until delivered.
pub fn producer(settings: &Settings) -> Result<FutureProducer> {
    base(settings)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        // Small batches, sent at once: a trigger should reach the player within milliseconds.
        .set("linger.ms", "1")
        .set("message.timeout.ms", "300000")
        .set("message.max.bytes", CAMPAIGN_MESSAGE_BYTES)
        .create()
        .context("creating the Kafka producer")
}

/// The events consumer: a consumer group; offsets are stored explicitly, only after every
/// trigger of the event is acknowledged, and committed from there (at-least-once, spec §8).
pub fn event_consumer_config(settings: &Settings) -> ClientConfig {
    let mut c = base(settings);
    c.set("group.id", &settings.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        // Only commit offsets stored after delivery.
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.offset.reset",
            match settings.auto_offset_reset {
                OffsetReset::Earliest => "earliest",
                OffsetReset::Latest => "latest",
            },
        )
        .set("session.timeout.ms", "10000")
        .set("partition.assignment.strategy", "cooperative-sticky");
    c
}

/// The campaigns reader: no group (every instance reads every campaign, from the beginning).
pub fn campaign_consumer_config(settings: &Settings) -> ClientConfig {
    let mut c = base(settings);
    c.set("group.id", format!("rtcrm-campaigns-{}", settings.instance_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    c
}

/// Creates the topics that are missing. The status topic is compacted (always keyed by campaign
/// id). The campaigns topic keeps every message forever instead: Kafka refuses records without a
/// key on a compacted topic, and the original system (and its README's `kcat -P`) writes
/// campaigns without a key. Operators who only publish keyed campaigns may compact it.
pub async fn create_topics(settings: &Settings) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = base(settings).create().context("creating the Kafka admin client")?;
    let compact = [("cleanup.policy", "compact")];
    // Campaign messages carry WebAssembly modules (base64) of up to 8 MiB.
    let keep_forever =
        [("cleanup.policy", "delete"), ("retention.ms", "-1"), ("retention.bytes", "-1"), ("max.message.bytes", CAMPAIGN_MESSAGE_BYTES)];
    let topics = [
        (settings.event_topic.as_str(), &[][..]),
        (settings.campaign_topic.as_str(), &keep_forever[..]),
        (settings.trigger_topic.as_str(), &[][..]),
        (settings.status_topic.as_str(), &compact[..]),
        (settings.dlq_topic.as_str(), &[][..]),
    ];
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, configs)| {
            let mut t = NewTopic::new(name, settings.partitions, TopicReplication::Fixed(-1));
            for (k, v) in configs.iter() {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new, &options)
        .await
        .with_context(|| format!("creating topics on {}", settings.bootstrap_servers))?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("creating topic `{topic}` failed: {code}"),
        }
    }
    Ok(())
}

/// The end offset (high watermark) of each partition of `topic`; empty when the topic does not
/// exist (yet). Blocking: each partition is one round trip.
pub fn end_offsets<C: ConsumerContext, K: Consumer<C>>(consumer: &K, topic: &str) -> Result<BTreeMap<i32, i64>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("reading the metadata of `{topic}`"))?;
    let mut ends = BTreeMap::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (_, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .with_context(|| format!("reading the end offset of `{topic}` partition {}", p.id()))?;
        ends.insert(p.id(), high);
    }
    Ok(ends)
}

/// The exactly-once producer (`--delivery exactly-once`): transactional, with transactions
/// initialised. Its `transactional.id` is stable across restarts of an instance (group and
/// `--instance-id`), so a restart fences its predecessor and aborts what it left open.
pub fn transactional_producer(settings: &Settings) -> Result<FutureProducer> {
    let producer: FutureProducer = base(settings)
        .set("transactional.id", format!("rtcrm-{}-{}", settings.group_id, settings.instance_id))
        .set("transaction.timeout.ms", "10000")
        .set("message.timeout.ms", "10000")
        .set("linger.ms", "1")
        .set("message.max.bytes", CAMPAIGN_MESSAGE_BYTES)
        .create()
        .context("creating the transactional producer")?;
    producer
        .init_transactions(Duration::from_secs(30))
        .context("initialising transactions (does the broker support them?)")?;
    Ok(producer)
}
