//! `rtcrm campaign put | delete | list` against a running cluster.

use crate::campaigns::definition::{id_from_key, CampaignDef};
use crate::campaigns::loader::FilterRejection;
use crate::Exit;
use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Where the campaigns live.
#[derive(Debug, clap::Args)]
pub struct Cluster {
    /// Kafka bootstrap servers.
    #[arg(long, env = "RTCRM_BOOTSTRAP_SERVERS", default_value = "localhost:9093")]
    pub bootstrap_servers: String,
    /// Campaigns topic.
    #[arg(long, env = "RTCRM_CAMPAIGN_TOPIC", default_value = "crm-campaigns")]
    pub campaign_topic: String,
    /// Campaign status topic.
    #[arg(long, env = "RTCRM_STATUS_TOPIC", default_value = "crm-campaign-status")]
    pub status_topic: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum CampaignCommand {
    /// Validate a campaign JSON file and publish it (keyed by its id).
    Put {
        /// The campaign JSON.
        file: PathBuf,
        /// A WebAssembly filter (filter ABI) to submit as the campaign's `filter_wasm`,
        /// replacing any `filter` in the file.
        #[arg(long)]
        wasm: Option<PathBuf>,
        #[command(flatten)]
        cluster: Cluster,
    },
    /// Delete a campaign (a tombstone under its id).
    Delete {
        /// The campaign id.
        id: i64,
        #[command(flatten)]
        cluster: Cluster,
    },
    /// List the campaigns in the topic, with their last reported state.
    List {
        #[command(flatten)]
        cluster: Cluster,
    },
    /// Run a campaign over past events with the processor's evaluation code and limits,
    /// producing nothing: events read, matches, triggers, unique players, triggers per hour or
    /// day, errors, fuel, sample triggers.
    Backtest(crate::cli::backtest::BacktestArgs),
}

pub fn run(cmd: CampaignCommand) -> Result<()> {
    match cmd {
        CampaignCommand::Put { file, wasm, cluster } => {
            // Validated before any async runtime exists: a WebAssembly filter's `_initialize` may
            // call WASI, whose host functions run their own blocking runtime.
            let value = validated(&file, wasm.as_deref())?;
            let id = CampaignDef::parse(None, value.as_bytes()).expect("validated").id;
            crate::processor::runtime()?.block_on(send(&cluster, &id.to_string(), Some(&value)))?;
            println!("campaign {id} published to {}", cluster.campaign_topic);
            Ok(())
        }
        CampaignCommand::Delete { id, cluster } => {
            crate::processor::runtime()?.block_on(send(&cluster, &id.to_string(), None))?;
            println!("campaign {id} deleted (tombstone published to {})", cluster.campaign_topic);
            Ok(())
        }
        CampaignCommand::List { cluster } => list(&cluster),
        CampaignCommand::Backtest(args) => crate::cli::backtest::run(args),
    }
}

/// Reads a campaign file (with `--wasm`, its module as `filter_wasm`), validates it and compiles
/// its filter, so a broken campaign is reported before it is published. Returns the message.
fn validated(file: &std::path::Path, wasm: Option<&std::path::Path>) -> Result<String> {
    let sandbox = rtcrm_sandbox::Sandbox::new(rtcrm_sandbox::SandboxConfig::default())?;
    load(&sandbox, file, wasm).map(|(text, _, _)| text)
}

/// Reads, validates and compiles a campaign file (with `--wasm`, its module as `filter_wasm`):
/// the message's text, the campaign and its compiled filter. A file that is not a valid
/// campaign, or whose filter does not compile, is exit 2 with `FILE: reason`.
pub fn load(sandbox: &rtcrm_sandbox::Sandbox, file: &std::path::Path, wasm: Option<&std::path::Path>) -> Result<(String, CampaignDef, rtcrm_sandbox::CompiledFilter)> {
    let mut bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    if let Some(wasm) = wasm {
        bytes = with_wasm_filter(file, &bytes, wasm)?;
    }
    let def = CampaignDef::parse(None, &bytes).map_err(|r| Exit { code: 2, message: format!("{}: {}", file.display(), r.reason) })?;
    let compiled = match crate::campaigns::loader::compile_filter(sandbox, &def.filter) {
        Ok(compiled) => compiled,
        Err(rejection) => {
            let reason = match rejection {
                FilterRejection::Js(e) => crate::campaigns::loader::describe(&e),
                FilterRejection::Wasm(e) => e.to_string(),
            };
            return Err(Exit { code: 2, message: format!("{}: filter: {reason}", file.display()) }.into());
        }
    };
    Ok((String::from_utf8_lossy(&bytes).trim().to_owned(), def, compiled))
}

/// The campaign JSON with `filter_wasm` set to the module (base64) and `filter` removed.
fn with_wasm_filter(file: &std::path::Path, campaign: &[u8], wasm: &std::path::Path) -> Result<Vec<u8>> {
    use base64::Engine as _;
    let module = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let mut obj: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(campaign)
        .map_err(|e| Exit { code: 2, message: format!("{}: not a JSON object: {e}", file.display()) })?;
    obj.remove("filter");
    obj.insert("filter_wasm".into(), base64::engine::general_purpose::STANDARD.encode(module).into());
    Ok(serde_json::Value::Object(obj).to_string().into_bytes())
}

async fn send(cluster: &Cluster, key: &str, value: Option<&str>) -> Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &cluster.bootstrap_servers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .set("message.max.bytes", crate::kafka::CAMPAIGN_MESSAGE_BYTES)
        .create()?;
    let mut record: FutureRecord<'_, str, str> = FutureRecord::to(&cluster.campaign_topic).key(key);
    if let Some(v) = value {
        record = record.payload(v);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .with_context(|| format!("publishing to {} on {}", cluster.campaign_topic, cluster.bootstrap_servers))?;
    Ok(())
}

/// Reads `topic` from the beginning to its end: the last value per key (None: tombstone).
fn read_all(bootstrap: &str, topic: &str) -> Result<BTreeMap<String, Option<Vec<u8>>>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("rtcrm-cli-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut ends = crate::kafka::end_offsets(&consumer, topic)?;
    ends.retain(|_, high| *high > 0);
    let mut tpl = TopicPartitionList::new();
    for partition in ends.keys() {
        tpl.add_partition_offset(topic, *partition, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    drop(tpl);
    let mut out = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ends.is_empty() && std::time::Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(500)) else { continue };
        let m = m?;
        let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
        let value = m.payload().map(<[u8]>::to_vec);
        // Keyless campaign messages carry their id in the body.
        let key = if key.is_empty() {
            value.as_deref().and_then(|v| CampaignDef::parse(None, v).ok()).map(|d| d.id.to_string()).unwrap_or(key)
        } else {
            key
        };
        out.insert(key, value);
        if ends.get(&m.partition()).is_some_and(|end| m.offset() + 1 >= *end) {
            ends.remove(&m.partition());
        }
    }
    Ok(out)
}

fn list(cluster: &Cluster) -> Result<()> {
    let campaigns = read_all(&cluster.bootstrap_servers, &cluster.campaign_topic)?;
    let statuses = read_all(&cluster.bootstrap_servers, &cluster.status_topic).unwrap_or_default();
    println!("{:>10}  {:<11}  {:<8}  {:<10}  {:<16}  error", "id", "state", "enabled", "game", "event_name");
    for (key, value) in campaigns {
        let Some(value) = value else { continue };
        let status: Option<serde_json::Value> = statuses.get(&key).cloned().flatten().and_then(|s| serde_json::from_slice(&s).ok());
        let state = status.as_ref().and_then(|s| s["state"].as_str().map(str::to_owned)).unwrap_or_else(|| "-".into());
        let error = status.as_ref().and_then(|s| s["error"].as_str().map(str::to_owned)).unwrap_or_default();
        match CampaignDef::parse(None, &value) {
            Ok(d) => println!("{:>10}  {:<11}  {:<8}  {:<10}  {:<16}  {error}", d.id, state, d.enabled, d.game, d.event_name),
            Err(r) => println!("{:>10}  {:<11}  {:<8}  {:<10}  {:<16}  {}", id_from_key(key.as_bytes()).map_or(key.clone(), |i| i.to_string()), "invalid", "-", "-", "-", r.reason),
        }
    }
    Ok(())
}
