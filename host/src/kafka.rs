//! Kafka clients and topics (spec §1, §14).
//!
//! Every client rtcrm creates starts from [`client_config`]: the bootstrap servers, a client id,
//! and the operator's librdkafka properties (`[kafka]` in the config file, `RTCRM_KAFKA_*`,
//! `--kafka-property`), so TLS and SASL work for all of them alike. Each client's context keeps
//! the last error librdkafka reported ([`ClientErrors`]), so a failure can name the broker
//! address and librdkafka's reason instead of a bare timeout.

use crate::config::{KafkaProperties, OffsetReset, Settings};
use crate::telemetry::logging::LogLimiter;
use anyhow::{Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::{Client, ClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest campaign message: an 8 MiB module in base64, plus the campaign's fields.
pub const CAMPAIGN_MESSAGE_BYTES: &str = "16777216";
/// Kafka's default `max.message.bytes` of a topic (1 MiB + 12).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_588;
/// How long start-up (and each `rtcrm campaign` command) waits for the cluster before it reports
/// it unreachable: the report comes within 10 s of the start, start-up work included.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(8);

/// The last error librdkafka reported for a client (shared by the clients of one process).
#[derive(Clone, Default)]
pub struct ClientErrors {
    last: Arc<Mutex<Option<Reported>>>,
    limiter: Arc<LogLimiter>,
    /// A client reported that every broker is down (cleared by the next successful probe).
    all_down: Arc<AtomicBool>,
}

/// One error as librdkafka reported it.
#[derive(Clone, Debug)]
struct Reported {
    text: String,
    /// Authentication or TLS failed: retrying with the same settings cannot succeed.
    settings: bool,
}

impl ClientErrors {
    /// librdkafka's last error, e.g. `127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused`.
    pub fn last(&self) -> Option<String> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|r| r.text.clone())
    }

    /// The last error, if it says that the connection settings are wrong (SASL authentication
    /// or the TLS handshake failed): waiting longer cannot help.
    pub fn settings_error(&self) -> Option<String> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).as_ref().filter(|r| r.settings).map(|r| r.text.clone())
    }

    /// Whether a client reported every broker down since the last successful probe.
    pub fn all_brokers_down(&self) -> bool {
        self.all_down.load(Ordering::Relaxed)
    }

    /// Records an error a client reported, logging it (rate-limited).
    pub fn record(&self, client: &str, error: &KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.all_down.store(true, Ordering::Relaxed);
        }
        let text = if reason.is_empty() { error.to_string() } else { format!("{reason} ({error})") };
        if self.limiter.allow(client) {
            tracing::warn!(client, error = %text, "Kafka client error");
        }
        let code = error.rdkafka_error_code();
        let settings =
            matches!(code, Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed | RDKafkaErrorCode::SSL));
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        // "1/1 brokers are down" says less than the error that took them down: keep that one.
        if code == Some(RDKafkaErrorCode::AllBrokersDown) && last.is_some() {
            return;
        }
        *last = Some(Reported { text, settings });
    }
}

/// The context of rtcrm's plain clients (producers, readers, admin): errors are recorded.
#[derive(Clone)]
pub struct KafkaContext {
    pub errors: ClientErrors,
    pub name: &'static str,
}

impl ClientContext for KafkaContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition is what a reader with `enable.partition.eof` waits for (the
        // changelog restore), not a failure.
        if matches!(error, KafkaError::PartitionEOF(_)) || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        self.errors.record(self.name, &error, reason);
    }
}

impl ConsumerContext for KafkaContext {}

/// The base of every client: bootstrap servers, client id, then the operator's properties.
pub fn client_config(settings: &Settings, role: &str) -> ClientConfig {
    base_config(&settings.bootstrap_servers, &format!("rtcrm-{}-{role}", settings.instance_id), &settings.kafka)
}

/// A client's configuration from its parts (the command line's clients have no processor).
pub fn base_config(bootstrap_servers: &str, client_id: &str, properties: &KafkaProperties) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap_servers).set("client.id", client_id);
    for (key, value) in properties {
        c.set(key, value);
    }
    c
}

/// The control producer: status messages, and what the HTTP API publishes (campaigns, events).
/// Acks from all in-sync replicas, idempotent.
pub fn control_producer(settings: &Settings, errors: &ClientErrors) -> Result<FutureProducer<KafkaContext>> {
    let mut c = client_config(settings, "control");
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .set("message.timeout.ms", "60000")
        .set("message.max.bytes", CAMPAIGN_MESSAGE_BYTES)
        // The health probe asks for metadata: that must never create a topic.
        .set("allow.auto.create.topics", "false");
    c.create_with_context(KafkaContext { errors: errors.clone(), name: "control producer" })
        .context("creating the Kafka producer")
}

/// The events consumer (a group member). At-least-once: offsets are stored explicitly, only
/// after every output of the event is acknowledged, and committed from there; exactly-once:
/// offsets are committed inside transactions (`enable.auto.commit=false`). With an explicit
/// `--instance-id`, the member is static (KIP-345): a restarted instance takes its partitions
/// back at once instead of waiting for a rebalance.
pub fn event_consumer_config(settings: &Settings, exactly_once: bool) -> ClientConfig {
    let mut c = client_config(settings, "events");
    c.set("group.id", &settings.group_id)
        .set("enable.auto.commit", if exactly_once { "false" } else { "true" })
        .set("auto.commit.interval.ms", "1000")
        // Only commit offsets stored after delivery.
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set(
            "auto.offset.reset",
            match settings.auto_offset_reset {
                OffsetReset::Earliest => "earliest",
                OffsetReset::Latest => "latest",
            },
        )
        .set("session.timeout.ms", "10000")
        // Partition p of the events and the repartition topic share one state store: the range
        // assignor gives both to the same member (co-partitioning, as Kafka Streams requires).
        .set("partition.assignment.strategy", "range")
        // Consumer lag, per partition, for `rtcrm_consumer_lag`.
        .set("statistics.interval.ms", "5000");
    if settings.instance_id_explicit {
        c.set("group.instance.id", &settings.instance_id);
    }
    c
}

/// The campaigns reader: no group (every instance reads every campaign, from the beginning).
pub fn campaign_consumer_config(settings: &Settings) -> ClientConfig {
    let mut c = client_config(settings, "campaigns");
    c.set("group.id", format!("rtcrm-campaigns-{}", settings.instance_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    c
}

/// Waits until the cluster answers a metadata request, for at most `timeout`; the error names
/// the address and librdkafka's reason. A failed SASL authentication or TLS handshake fails at
/// once: retrying with the same settings cannot succeed.
pub fn probe<C: ClientContext>(client: &Client<C>, settings: &Settings, errors: &ClientErrors, timeout: Duration) -> Result<()> {
    // One topic's metadata (not the whole cluster's, which can be large): rtcrm's campaigns topic.
    probe_cluster(client, &settings.bootstrap_servers, Some(&settings.campaign_topic), errors, timeout)
}

/// [`probe`] for any client: the metadata of `topic` (None: of the whole cluster).
pub fn probe_cluster<C: ClientContext>(
    client: &Client<C>,
    bootstrap_servers: &str,
    topic: Option<&str>,
    errors: &ClientErrors,
    timeout: Duration,
) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last_error;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match client.fetch_metadata(topic, left.min(Duration::from_millis(500))) {
            Ok(_) => {
                errors.all_down.store(false, Ordering::Relaxed);
                return Ok(());
            }
            Err(e) => last_error = e,
        }
        if errors.settings_error().is_some() || std::time::Instant::now() >= deadline {
            break;
        }
    }
    let reason = errors.settings_error().or_else(|| errors.last()).map(|r| format!(": {r}")).unwrap_or_default();
    anyhow::bail!(
        "the Kafka cluster at {bootstrap_servers} does not answer ({last_error}){reason}; check the address \
         (--bootstrap-servers) and the connection properties (--kafka-property, RTCRM_KAFKA_*, [kafka])"
    )
}

fn admin(settings: &Settings, errors: &ClientErrors) -> Result<AdminClient<KafkaContext>> {
    client_config(settings, "admin")
        .create_with_context(KafkaContext { errors: errors.clone(), name: "admin" })
        .context("creating the Kafka admin client")
}

/// Creates the topics that are missing. The status topic is compacted (always keyed by campaign
/// id). The campaigns topic keeps every message forever instead: Kafka refuses records without a
/// key on a compacted topic, and the original system (and its README's `kcat -P`) writes
/// campaigns without a key. Operators who only publish keyed campaigns may compact it.
///
/// The internal topics of per-player state (spec §1, §12) — the changelog (compacted), the
/// repartition topic — have as many partitions as the events topic, which is read first.
pub async fn create_topics(settings: &Settings, errors: &ClientErrors) -> Result<()> {
    let admin = admin(settings, errors)?;
    let compact = [("cleanup.policy", "compact")];
    // Campaign messages carry WebAssembly modules (base64) of up to 8 MiB.
    let keep_forever =
        [("cleanup.policy", "delete"), ("retention.ms", "-1"), ("retention.bytes", "-1"), ("max.message.bytes", CAMPAIGN_MESSAGE_BYTES)];
    // Filter output is for troubleshooting: a week, at most 100 MiB per partition.
    let filter_log = [("cleanup.policy", "delete"), ("retention.ms", "604800000"), ("retention.bytes", "104857600")];
    let topics = [
        (settings.event_topic.as_str(), &[][..]),
        (settings.campaign_topic.as_str(), &keep_forever[..]),
        (settings.trigger_topic.as_str(), &[][..]),
        (settings.status_topic.as_str(), &compact[..]),
        (settings.dlq_topic.as_str(), &[][..]),
        (settings.control_topic.as_str(), &[][..]),
        (settings.filter_log_topic.as_str(), &filter_log[..]),
    ];
    create(&admin, settings, errors, &topics, settings.partitions).await?;
    let partitions = created_partition_count(admin.inner(), &settings.event_topic)?
        .with_context(|| format!("the events topic `{}` has no partitions", settings.event_topic))?;
    let internal = [(settings.changelog_topic.as_str(), &compact[..]), (settings.repartition_topic.as_str(), &[][..])];
    create(&admin, settings, errors, &internal, partitions as i32).await?;
    for (topic, _) in internal {
        let n = created_partition_count(admin.inner(), topic)?.unwrap_or(0);
        if n != partitions {
            anyhow::bail!(
                "the topic `{topic}` has {n} partitions, the events topic `{}` {partitions}: per-player state needs the same \
                 number (delete it, or give --changelog-topic / --repartition-topic a new name)",
                settings.event_topic
            );
        }
    }
    Ok(())
}

/// [`partition_count`] of a topic just created: a broker's metadata may not show it for a moment
/// (seen over SASL_SSL), so it is asked again for up to [`CONNECT_TIMEOUT`].
fn created_partition_count<C: ClientContext>(client: &Client<C>, topic: &str) -> Result<Option<usize>> {
    let deadline = std::time::Instant::now() + CONNECT_TIMEOUT;
    loop {
        let n = partition_count(client, topic, CONNECT_TIMEOUT)?;
        if n.is_some() || std::time::Instant::now() >= deadline {
            return Ok(n);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The number of partitions of `topic` (`None`: it does not exist).
pub fn partition_count<C: ClientContext>(client: &Client<C>, topic: &str, timeout: Duration) -> Result<Option<usize>> {
    let metadata = client.fetch_metadata(Some(topic), timeout).with_context(|| format!("reading the metadata of `{topic}`"))?;
    Ok(metadata.topics().iter().find(|t| t.name() == topic && t.error().is_none()).map(|t| t.partitions().len()).filter(|n| *n > 0))
}

async fn create(admin: &AdminClient<KafkaContext>, settings: &Settings, errors: &ClientErrors, topics: &[(&str, &[(&str, &str)])], partitions: i32) -> Result<()> {
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, configs)| {
            let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(-1));
            for (k, v) in configs.iter() {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(CONNECT_TIMEOUT)).request_timeout(Some(CONNECT_TIMEOUT));
    let results = tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(2), admin.create_topics(&new, &options))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| {
            let reason = errors.last().map(|r| format!(" (librdkafka: {r})")).unwrap_or_default();
            format!("creating topics on {}{reason}", settings.bootstrap_servers)
        })?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("creating topic `{topic}` failed: {code}"),
        }
    }
    Ok(())
}

/// The `max.message.bytes` of `topic` (the broker's default when the cluster cannot say, as the
/// embedded broker cannot).
pub async fn max_message_bytes(settings: &Settings, errors: &ClientErrors, topic: &str) -> usize {
    let read = async {
        let admin = admin(settings, errors).ok()?;
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
        let results = admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &options).await.ok()?;
        let resource = results.into_iter().next()?.ok()?;
        resource.get("max.message.bytes")?.value.as_deref()?.parse().ok()
    };
    match tokio::time::timeout(Duration::from_secs(6), read).await {
        Ok(Some(bytes)) => bytes,
        _ => {
            tracing::debug!(topic, "max.message.bytes unknown; assuming Kafka's default");
            DEFAULT_MAX_MESSAGE_BYTES
        }
    }
}

/// The end offset (high watermark) of each partition of `topic`; empty when the topic does not
/// exist (yet). Blocking: each partition is one round trip.
pub fn end_offsets<C: ConsumerContext, K: Consumer<C>>(consumer: &K, topic: &str) -> Result<BTreeMap<i32, i64>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("reading the metadata of `{topic}`"))?;
    let mut ends = BTreeMap::new();
    for t in metadata.topics() {
        if let Some(err) = t.error() {
            let code = RDKafkaErrorCode::from(err);
            if code == RDKafkaErrorCode::UnknownTopicOrPartition {
                return Ok(ends);
            }
            anyhow::bail!("reading the metadata of `{topic}`: {code}");
        }
        for p in t.partitions() {
            let (_, high) = consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .with_context(|| format!("reading the end offset of `{topic}` partition {}", p.id()))?;
            ends.insert(p.id(), high);
        }
    }
    Ok(ends)
}
