//! `rtcrm dev`: the embedded default. An in-process Kafka-protocol broker (librdkafka's mock
//! cluster), the topics, the example campaign, and the processor, with ready-to-paste `kcat`
//! commands for the original README's three steps (and their `curl` twins for the HTTP API).
//!
//! The embedded broker's limits ([`LIMITS`]), printed in the banner and refused where rtcrm
//! produces: each partition of librdkafka's mock cluster keeps only its latest 5 MiB of records
//! (and at most 100,000 of them) and drops older ones, read or not, so one record near that size
//! would push out the records before it. Events are therefore capped at 1,000,000 bytes (kcat's
//! own default `message.max.bytes`, so the printed commands refuse a larger one with "Message size
//! too large"; the HTTP API takes 256 KiB) and campaigns at 5,000,000 bytes (`rtcrm campaign put`
//! refuses a larger one when it sees [`MARKER_TOPIC`], which `rtcrm dev` creates).

use crate::config::{Clock, Delivery, OffsetReset, Settings};
use anyhow::{Context, Result};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::producer::FutureRecord;
use std::net::SocketAddr;
use std::time::Duration;

use crate::examples::{CAMPAIGN_4711, EVENT};

/// A topic that only `rtcrm dev` creates: clients that see it are talking to the embedded broker.
pub const MARKER_TOPIC: &str = "rtcrm-dev.embedded-broker";

/// What the embedded broker can hold.
pub struct Limits {
    /// Largest event record (kcat's default `message.max.bytes`).
    pub event_bytes: usize,
    /// Largest campaign record (a Go filter module in base64 is about 4.4 MB).
    pub campaign_bytes: usize,
    /// Bytes each partition keeps (librdkafka's mock cluster: `mpart->max_size`).
    pub partition_bytes: usize,
    /// Records each partition keeps (`mpart->max_cnt`).
    pub partition_records: usize,
}

pub const LIMITS: Limits = Limits { event_bytes: 1_000_000, campaign_bytes: 5_000_000, partition_bytes: 5 << 20, partition_records: 100_000 };

/// `text` as one word for bash (and any POSIX shell): single-quoted, each `'` as `'\''`.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Flags of `rtcrm dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Address of the HTTP server.
    #[arg(long, default_value = "127.0.0.1:8080", env = "RTCRM_HTTP_ADDR")]
    pub http_addr: SocketAddr,
    /// Evaluation threads [default: the number of cores].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Bearer token for the HTTP API's POST and DELETE requests on a non-loopback --http-addr.
    #[arg(long, env = "RTCRM_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
}

pub fn run(args: DevArgs) -> Result<()> {
    crate::processor::runtime()?.block_on(async move {
        let host = embedded_broker()?;
        let cluster = host.client().mock_cluster().context("starting the embedded Kafka-protocol broker")?;
        let bootstrap = cluster.bootstrap_servers();
        let settings = Settings {
            bootstrap_servers: bootstrap.clone(),
            group_id: "rtcrm-dev".into(),
            event_topic: "events-valid".into(),
            campaign_topic: "crm-campaigns".into(),
            trigger_topic: "crm-triggers".into(),
            status_topic: "crm-campaign-status".into(),
            dlq_topic: "events-dlq".into(),
            control_topic: "crm-triggers-control".into(),
            changelog_topic: "rtcrm-state-changelog".into(),
            repartition_topic: "rtcrm-events-by-player".into(),
            state_dir: std::env::temp_dir().join(format!("rtcrm-dev-state-{}", std::process::id())),
            filter_log_topic: "rtcrm-filter-logs".into(),
            clock: Clock::Event,
            workers: args.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            partitions: 1,
            http_addr: args.http_addr,
            instance_id: format!("rtcrm-dev-{}", std::process::id()),
            quarantine_after: 50,
            auto_offset_reset: OffsetReset::Earliest,
            // The mock cluster cannot do transactions.
            delivery: Delivery::AtLeastOnce,
            // The mock cluster has no admin API: topics are created on its handle.
            create_topics: false,
            api_token: crate::config::ApiToken::parse(args.api_token)?,
            instance_id_explicit: false,
            max_filter_instances: None,
            kafka: Default::default(),
            limits: Default::default(),
        };
        for topic in [
            &settings.event_topic,
            &settings.campaign_topic,
            &settings.trigger_topic,
            &settings.status_topic,
            &settings.dlq_topic,
            &settings.control_topic,
            &settings.changelog_topic,
            &settings.repartition_topic,
            &settings.filter_log_topic,
            &MARKER_TOPIC.to_owned(),
        ] {
            cluster.create_topic(topic, 1, 1).with_context(|| format!("creating topic {topic} on the embedded broker"))?;
        }
        let producer = crate::kafka::control_producer(&settings, &Default::default())?;
        producer
            .send(FutureRecord::to(&settings.campaign_topic).key("4711").payload(CAMPAIGN_4711.trim()), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .context("loading the example campaign")?;
        drop(producer);
        print_welcome(&bootstrap, &settings);
        let result = crate::processor::serve(settings, crate::processor::signal_watch()).await;
        drop(cluster);
        drop(host);
        result
    })
}

/// The client that hosts the embedded broker (librdkafka's mock cluster, made by
/// `test.mock.num.brokers`), with the mock's initial rebalance delay for consumer groups set to
/// 0: the processor's group join then takes a fraction of a second instead of 3 s.
fn embedded_broker() -> Result<BaseProducer> {
    let host: BaseProducer = rdkafka::ClientConfig::new()
        .set("test.mock.num.brokers", "1")
        .create()
        .context("starting the embedded Kafka-protocol broker")?;
    // SAFETY: `native_ptr` is the live handle `host` owns; librdkafka returns its mock cluster
    // (not null: the handle was created with `test.mock.num.brokers`), owned by the handle and
    // valid while `host` is, which outlives this call.
    unsafe {
        let cluster = rdkafka::bindings::rd_kafka_handle_mock_cluster(host.client().native_ptr());
        anyhow::ensure!(!cluster.is_null(), "librdkafka made no mock cluster for the embedded broker");
        rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0);
    }
    Ok(host)
}

fn print_welcome(bootstrap: &str, settings: &Settings) {
    print!("{}", welcome(bootstrap, settings));
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// The banner: addresses, the embedded broker's limits, and commands that work pasted into bash.
pub fn welcome(bootstrap: &str, settings: &Settings) -> String {
    let http = settings.http_addr;
    let campaign = shell_quote(CAMPAIGN_4711.trim());
    let event = shell_quote(EVENT.trim());
    let l = &LIMITS;
    format!(
        "rtcrm dev: an embedded Kafka-protocol broker with the processor running on it.\n\
         bootstrap: {bootstrap}\n\
         console: http://{http}/ (the HTTP API under /api, and /healthz, /readyz, /metrics)\n\
         campaign 4711 from examples/ is loaded.\n\n\
         Limits of the embedded broker (librdkafka's mock cluster, in memory; a real broker has none of these):\n\
         - records: an event up to {event_bytes} bytes (kcat's default limit; the HTTP API takes {api_kib} KiB), \
         a campaign up to {campaign_bytes} bytes (rtcrm campaign put refuses more)\n\
         - each topic partition keeps only its latest {partition_mib} MiB and {partition_records} records: older ones are \
         dropped, read or not\n\
         - stopping rtcrm dev loses everything\n\n\
         The original README's steps, ready to paste into bash (kcat: apt-get install kcat):\n\n\
         # 1. create (or replace) a campaign\n\
         echo {campaign} | kcat -b {bootstrap} -t {campaigns} -P\n\n\
         # 2. send an event\n\
         echo {event} | kcat -b {bootstrap} -t {events} -P\n\n\
         # 3. consume the triggers (Ctrl-C stops)\n\
         kcat -b {bootstrap} -t {triggers} -C -o beginning -u\n\n\
         The same through the HTTP API, with curl:\n\n\
         curl -s http://{http}/api/campaigns --data-binary {campaign}\n\
         curl -s http://{http}/api/events --data-binary {event}\n\
         curl -sN http://{http}/api/triggers/stream\n\n\
         Stop with Ctrl-C.\n",
        campaigns = settings.campaign_topic,
        events = settings.event_topic,
        triggers = settings.trigger_topic,
        event_bytes = l.event_bytes,
        campaign_bytes = l.campaign_bytes,
        api_kib = crate::http::api::BODY_LIMIT / 1024,
        partition_mib = l.partition_bytes >> 20,
        partition_records = l.partition_records,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_single_quotes() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
        assert_eq!(shell_quote(""), "''");
        // What bash makes of it is checked by tests/tests/dev.rs, through bash itself.
        let quoted = shell_quote(CAMPAIGN_4711.trim());
        assert!(quoted.contains(r"get('\''result'\'') === '\''loss'\''"), "{quoted}");
    }
}
