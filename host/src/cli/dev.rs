//! `rtcrm dev`: the embedded default. An in-process Kafka-protocol broker (librdkafka's mock
//! cluster), the topics, the example campaign, and the processor, with ready-to-paste `kcat`
//! commands for the original README's three steps.

use crate::config::{Clock, Delivery, OffsetReset, Settings};
use anyhow::{Context, Result};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::FutureRecord;
use std::net::SocketAddr;
use std::time::Duration;

use crate::examples::{CAMPAIGN_4711, EVENT};

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
        let cluster = MockCluster::new(1).context("starting the embedded Kafka-protocol broker")?;
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
            max_filter_instances: crate::campaigns::instances::DEFAULT_MAX_INSTANCES,
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
        result
    })
}

fn print_welcome(bootstrap: &str, settings: &Settings) {
    let http = settings.http_addr;
    println!(
        "rtcrm dev: an embedded Kafka-protocol broker with the processor running on it.\n\
         bootstrap: {bootstrap}\n\
         console: http://{http}/ (the HTTP API under /api, and /healthz, /readyz, /metrics)\n\
         campaign 4711 from examples/ is loaded.\n\n\
         The original README's steps, ready to paste (kcat: apt-get install kcat):\n\n\
         # 1. create (or replace) a campaign\n\
         echo '{campaign}' | kcat -b {bootstrap} -t {campaigns} -P\n\n\
         # 2. send an event\n\
         echo '{event}' | kcat -b {bootstrap} -t {events} -P\n\n\
         # 3. consume the triggers\n\
         kcat -b {bootstrap} -t {triggers} -C -o beginning -u\n\n\
         Stop with Ctrl-C.",
        campaign = CAMPAIGN_4711.trim(),
        event = EVENT.trim(),
        campaigns = settings.campaign_topic,
        events = settings.event_topic,
        triggers = settings.trigger_topic,
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
