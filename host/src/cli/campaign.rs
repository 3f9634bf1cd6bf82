//! `rtcrm campaign put | delete | list | logs` against a running cluster (`backtest` is in
//! `backtest.rs`; `state`, which asks a processor's HTTP API, in `state.rs`).
//!
//! Every command connects as the processor does: the same config file (`--config`, its `[kafka]`
//! table), `RTCRM_*` variables and `--kafka-property` flags, so TLS and SASL work alike. Each
//! first asks the cluster for its metadata: an unreachable or misconfigured cluster is reported
//! within [`crate::kafka::CONNECT_TIMEOUT`], naming the address and librdkafka's reason.
//!
//! `put` and `delete` then wait for the processor's verdict on the status topic (the status
//! message whose digest is that of the record they published) and print it; `--no-wait` skips
//! that. Exit codes: 0 active (or deleted), 2 refused locally or rejected by the processor, 1 any
//! other failure, including no verdict in time.

use crate::campaigns::definition::{digest, id_from_key, CampaignDef};
use crate::campaigns::loader::FilterRejection;
use crate::config::{RunArgs, Settings};
use crate::kafka::{ClientErrors, KafkaContext};
use crate::Exit;
use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the campaigns live, and how to connect.
#[derive(Debug, Clone, clap::Args)]
pub struct Cluster {
    /// The processor's config file (TOML or the original config.json): its bootstrap servers,
    /// topics and `[kafka]` properties are used.
    #[arg(long, env = "RTCRM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers [default: localhost:9093].
    #[arg(long, env = "RTCRM_BOOTSTRAP_SERVERS")]
    pub bootstrap_servers: Option<String>,
    /// Campaigns topic [default: crm-campaigns].
    #[arg(long, env = "RTCRM_CAMPAIGN_TOPIC")]
    pub campaign_topic: Option<String>,
    /// Campaign status topic [default: crm-campaign-status].
    #[arg(long, env = "RTCRM_STATUS_TOPIC")]
    pub status_topic: Option<String>,
    /// Filter log topic [default: rtcrm-filter-logs].
    #[arg(long, env = "RTCRM_FILTER_LOG_TOPIC")]
    pub filter_log_topic: Option<String>,
    /// A librdkafka property, as KEY=VALUE (repeatable), e.g. `security.protocol=SASL_SSL`; also
    /// `RTCRM_KAFKA_<KEY>` and the config file's `[kafka]` table.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE")]
    pub kafka_property: Vec<String>,
}

impl Cluster {
    /// The settings these flags, the environment and the config file give (as `rtcrm run`'s).
    fn settings(&self) -> Result<Settings> {
        Settings::load(&RunArgs {
            config: self.config.clone(),
            bootstrap_servers: self.bootstrap_servers.clone(),
            campaign_topic: self.campaign_topic.clone(),
            status_topic: self.status_topic.clone(),
            filter_log_topic: self.filter_log_topic.clone(),
            kafka_property: self.kafka_property.clone(),
            ..RunArgs::default()
        })
    }
}

/// How `put` and `delete` wait for the processor's verdict.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Wait {
    /// Do not wait for the processor's status message: print "published" and exit 0.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the processor's status message, in seconds.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub wait_timeout: u64,
}

#[derive(Debug, clap::Subcommand)]
pub enum CampaignCommand {
    /// Validate a campaign JSON file, publish it (keyed by its id), and wait for the processor's
    /// verdict (`active`, or `rejected` with the reason).
    Put {
        /// The campaign JSON.
        file: PathBuf,
        /// A WebAssembly filter (filter ABI, filter-sdk/ABI.md) to submit as the campaign's
        /// `filter_wasm`, replacing any `filter` in the file.
        #[arg(long, conflicts_with = "js")]
        wasm: Option<PathBuf>,
        /// A JavaScript filter to submit as the campaign's `filter`, replacing any `filter_wasm`.
        #[arg(long)]
        js: Option<PathBuf>,
        #[command(flatten)]
        wait: Wait,
        #[command(flatten)]
        cluster: Cluster,
    },
    /// Delete a campaign (a tombstone under its id) and wait for the processor to report it deleted.
    Delete {
        /// The campaign id.
        id: i64,
        #[command(flatten)]
        wait: Wait,
        #[command(flatten)]
        cluster: Cluster,
    },
    /// List the campaigns in the topic, with their last reported state.
    List {
        #[command(flatten)]
        cluster: Cluster,
    },
    /// Show a campaign filter's output (`console.log`, a Wasm filter's stdout and stderr) and its
    /// evaluation errors, as the processors wrote them to the filter log topic.
    Logs {
        /// The campaign id.
        id: i64,
        /// Keep printing new lines until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// How many of the latest lines to print first.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
        #[command(flatten)]
        cluster: Cluster,
    },
    /// Run a campaign over past events with the processor's evaluation code and limits,
    /// producing nothing: events read, matches, triggers, unique players, triggers per hour or
    /// day, errors, fuel, sample triggers.
    Backtest(crate::cli::backtest::BacktestArgs),
    /// Show one player's stored state for a campaign (count so far, cooldown until, triggers
    /// against the cap, inactivity timer, JavaScript state, holdout group and variant), asked
    /// of a processor's HTTP API (--api).
    State(crate::cli::state::StateArgs),
}

pub fn run(cmd: CampaignCommand) -> Result<()> {
    match cmd {
        CampaignCommand::Put { file, wasm, js, wait, cluster } => {
            let settings = cluster.settings()?;
            // Validated before any async runtime exists: a WebAssembly filter's `_initialize` may
            // call WASI, whose host functions run their own blocking runtime.
            let value = validated(&file, wasm.as_deref(), js.as_deref(), &settings)?;
            let id = CampaignDef::parse(None, value.as_bytes()).map_err(|r| anyhow::anyhow!(r.reason))?.id;
            crate::processor::runtime()?.block_on(publish(&settings, id, Some(&value), wait))
        }
        CampaignCommand::Delete { id, wait, cluster } => {
            let settings = cluster.settings()?;
            crate::processor::runtime()?.block_on(publish(&settings, id, None, wait))
        }
        CampaignCommand::List { cluster } => list(&cluster.settings()?),
        CampaignCommand::Logs { id, follow, lines, cluster } => logs(&cluster.settings()?, id, follow, lines),
        CampaignCommand::Backtest(args) => crate::cli::backtest::run(args),
        CampaignCommand::State(args) => crate::cli::state::run(args),
    }
}

/// Progress on stderr (stdout keeps the result).
fn progress(text: &str) {
    eprintln!("{text}");
    let _ = std::io::stderr().flush();
}

/// Reads a campaign file (with `--wasm`, its module as `filter_wasm`; with `--js`, the source as
/// `filter`), validates it and compiles its filter, so a broken campaign is reported before it is
/// published (under the host limits that `settings` give, as the processor's). Returns the message.
fn validated(file: &Path, wasm: Option<&Path>, js: Option<&Path>, settings: &Settings) -> Result<String> {
    let started = Instant::now();
    if let Some(wasm) = wasm {
        let module_bytes = std::fs::metadata(wasm).map_or(0, |m| m.len() as usize);
        progress(&format!("checking {} ({}): compiling and instantiating it as the processor will…", wasm.display(), size_text(module_bytes)));
    }
    // The host limits of the same config file, environment and flags as the processor's.
    let sandbox = rtcrm_sandbox::Sandbox::new(rtcrm_sandbox::SandboxConfig::from_limits(&settings.limits))?;
    let (text, _, _) = load_with(&sandbox, file, wasm, js)?;
    if wasm.is_some() {
        progress(&format!("the module is a valid filter ({:.1} s)", started.elapsed().as_secs_f64()));
    }
    Ok(text)
}

/// Reads, validates and compiles a campaign file (with `--wasm`, its module as `filter_wasm`):
/// the message's text, the campaign and its compiled filter. A file that is not a valid
/// campaign, or whose filter does not compile, is exit 2 with `FILE: reason`.
pub fn load(sandbox: &rtcrm_sandbox::Sandbox, file: &Path, wasm: Option<&Path>) -> Result<(String, CampaignDef, rtcrm_sandbox::CompiledFilter)> {
    load_with(sandbox, file, wasm, None)
}

/// [`load`], with `--js`'s source as the campaign's `filter`.
fn load_with(
    sandbox: &rtcrm_sandbox::Sandbox,
    file: &Path,
    wasm: Option<&Path>,
    js: Option<&Path>,
) -> Result<(String, CampaignDef, rtcrm_sandbox::CompiledFilter)> {
    let mut bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    if let Some(wasm) = wasm {
        bytes = with_wasm_filter(file, &bytes, wasm)?;
    }
    if let Some(js) = js {
        let source = std::fs::read_to_string(js).with_context(|| format!("reading {}", js.display()))?;
        bytes = with_field(file, &bytes, "filter", source.into(), "filter_wasm")?;
    }
    let def = CampaignDef::parse(None, &bytes).map_err(|r| Exit { code: 2, message: format!("{}: {}", file.display(), r.reason) })?;
    let compiled = match crate::campaigns::loader::compile_filter(sandbox, &def.filter, def.controls.state.is_some()) {
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

fn size_text(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MB", bytes as f64 / 1e6)
    } else {
        format!("{:.1} KB", bytes as f64 / 1e3)
    }
}

/// Whether `module` is a JavaScript campaign module (`rtcrm filter compile` output): it imports
/// the JS runtime instead of implementing the filter ABI.
pub fn is_js_campaign_module(module: &[u8]) -> bool {
    wasmparser::Parser::new(0).parse_all(module).any(|p| match p {
        Ok(wasmparser::Payload::ImportSection(r)) => r.into_imports().any(|i| i.is_ok_and(|i| i.module.starts_with("rtcrm-js-v"))),
        _ => false,
    })
}

/// The campaign JSON with `filter_wasm` set to the module (base64) and `filter` removed.
fn with_wasm_filter(file: &Path, campaign: &[u8], wasm: &Path) -> Result<Vec<u8>> {
    use base64::Engine as _;
    let module = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    if is_js_campaign_module(&module) {
        return Err(Exit {
            code: 2,
            message: format!(
                "{}: this is a JavaScript campaign module (the output of `rtcrm filter compile`), not a module of the \
                 filter ABI; a campaign carries JavaScript as source: submit the source instead, with \
                 `rtcrm campaign put {} --js FILTER.js` (or put it in the campaign's \"filter\")",
                wasm.display(),
                file.display()
            ),
        }
        .into());
    }
    with_field(file, campaign, "filter_wasm", base64::engine::general_purpose::STANDARD.encode(module).into(), "filter")
}

/// The campaign JSON with `key` set to `value` and `remove` removed.
fn with_field(file: &Path, campaign: &[u8], key: &str, value: serde_json::Value, remove: &str) -> Result<Vec<u8>> {
    let mut obj: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(campaign)
        .map_err(|e| Exit { code: 2, message: format!("{}: not a JSON object: {e}", file.display()) })?;
    obj.remove(remove);
    obj.insert(key.into(), value);
    Ok(serde_json::Value::Object(obj).to_string().into_bytes())
}

/// A client of the command line, with its errors recorded for the messages.
fn client_config(settings: &Settings, role: &str) -> rdkafka::ClientConfig {
    crate::kafka::base_config(&settings.bootstrap_servers, &format!("rtcrm-cli-{role}-{}", std::process::id()), &settings.kafka)
}

fn consumer(settings: &Settings, errors: &ClientErrors) -> Result<BaseConsumer<KafkaContext>> {
    client_config(settings, "reader")
        .set("group.id", format!("rtcrm-cli-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create_with_context(KafkaContext { errors: errors.clone(), name: "command-line reader" })
        .context("creating the Kafka consumer")
}

/// Checks that the cluster answers, then connects a consumer (blocking). The check uses a
/// producer: its polling thread serves librdkafka's error callbacks at once (a consumer's are
/// served only while it polls), so the failure names librdkafka's reason.
fn connected_consumer(settings: &Settings, errors: &ClientErrors) -> Result<BaseConsumer<KafkaContext>> {
    let producer: FutureProducer<KafkaContext> = client_config(settings, "probe")
        .create_with_context(KafkaContext { errors: errors.clone(), name: "command-line client" })
        .context("creating the Kafka client")?;
    crate::kafka::probe(producer.client(), settings, errors, crate::kafka::CONNECT_TIMEOUT)?;
    drop(producer);
    consumer(settings, errors)
}

/// Publishes a campaign (`value`) or a tombstone (`None`) under `id`, then waits for its status.
async fn publish(settings: &Settings, id: i64, value: Option<&str>, wait: Wait) -> Result<()> {
    let errors = ClientErrors::default();
    let producer: FutureProducer<KafkaContext> = client_config(settings, "producer")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .set("message.max.bytes", crate::kafka::CAMPAIGN_MESSAGE_BYTES)
        .create_with_context(KafkaContext { errors: errors.clone(), name: "command-line producer" })
        .context("creating the Kafka producer")?;
    let (s, e, p) = (settings.clone(), errors.clone(), producer.clone());
    let size = value.map_or(0, str::len);
    // The status topic's end, taken before publishing: the verdict comes after it.
    let status_from = tokio::task::spawn_blocking(move || -> Result<Option<(BaseConsumer<KafkaContext>, BTreeMap<i32, i64>)>> {
        crate::kafka::probe(p.client(), &s, &e, crate::kafka::CONNECT_TIMEOUT)?;
        refuse_over_embedded_limit(p.client(), &s, id, size)?;
        if wait.no_wait {
            return Ok(None);
        }
        let consumer = consumer(&s, &e)?;
        let ends = crate::kafka::end_offsets(&consumer, &s.status_topic)?;
        Ok(Some((consumer, ends)))
    })
    .await??;

    let key = id.to_string();
    let topic = &settings.campaign_topic;
    let mut record: FutureRecord<'_, str, str> = FutureRecord::to(topic).key(&key);
    if let Some(v) = value {
        record = record.payload(v);
    }
    let delivery = producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).with_context(|| {
        let reason = errors.last().map(|r| format!(" (librdkafka: {r})")).unwrap_or_default();
        format!("publishing campaign {id} to {topic} on {}{reason}", settings.bootstrap_servers)
    })?;
    let (partition, offset) = (delivery.partition, delivery.offset);
    drop(producer);
    let what = if value.is_some() { "published" } else { "deleted (tombstone published)" };
    let Some((consumer, ends)) = status_from else {
        println!("campaign {id} {what} to {topic} (partition {partition}, offset {offset})");
        return Ok(());
    };
    progress(&format!("campaign {id} {what} to {topic} (partition {partition}, offset {offset}); waiting for the processor's verdict…"));
    let wanted_digest = value.map(|v| digest(v.as_bytes()));
    let s = settings.clone();
    let verdict = tokio::task::spawn_blocking(move || {
        await_status(&consumer, &s.status_topic, &ends, id, wanted_digest.as_deref(), Duration::from_secs(wait.wait_timeout))
    })
    .await??;
    let Some(status) = verdict else {
        return Err(Exit {
            code: 1,
            message: format!(
                "campaign {id} is {what}, but no processor reported on it within {} s: is `rtcrm run` (or `rtcrm dev`) \
                 running on {} with campaigns topic `{}` and status topic `{}`? (--wait-timeout waits longer, --no-wait \
                 does not wait)",
                wait.wait_timeout, settings.bootstrap_servers, settings.campaign_topic, settings.status_topic
            ),
        }
        .into());
    };
    let state = status["state"].as_str().unwrap_or("unknown");
    let instance = status["instance"].as_str().unwrap_or("?");
    match state {
        "active" | "deleted" => {
            println!("campaign {id} {state} (reported by {instance})");
            Ok(())
        }
        other => {
            let error = status["error"].as_str().unwrap_or("no reason given");
            println!("campaign {id} {other} (reported by {instance}): {error}");
            Err(Exit { code: 2, message: String::new() }.into())
        }
    }
}

/// Against `rtcrm dev` (its marker topic exists), a campaign record over what the embedded broker
/// can hold is refused here: published, it would push the records before it out of the topic.
fn refuse_over_embedded_limit<C: rdkafka::client::ClientContext>(client: &rdkafka::client::Client<C>, settings: &Settings, id: i64, size: usize) -> Result<()> {
    let max = crate::cli::dev::LIMITS.campaign_bytes;
    if size <= max {
        return Ok(());
    }
    let metadata = client.fetch_metadata(None, Duration::from_secs(5)).context("reading the cluster's topics")?;
    if metadata.topics().iter().any(|t| t.name() == crate::cli::dev::MARKER_TOPIC) {
        return Err(Exit {
            code: 2,
            message: format!(
                "campaign {id} is {size} bytes, over the {max} bytes a campaign may have on rtcrm dev's embedded broker at {} \
                 (each of its partitions keeps only its latest {} MiB); nothing was published. Use a smaller filter module, \
                 or a real Kafka cluster (rtcrm run)",
                settings.bootstrap_servers,
                crate::cli::dev::LIMITS.partition_bytes >> 20
            ),
        }
        .into());
    }
    Ok(())
}

/// Reads the status topic from `from` until a status of campaign `id` arrives: for a campaign,
/// the one whose digest is `digest`; for a tombstone (`digest` None), a `deleted` one.
fn await_status(
    consumer: &BaseConsumer<KafkaContext>,
    topic: &str,
    from: &BTreeMap<i32, i64>,
    id: i64,
    digest: Option<&str>,
    timeout: Duration,
) -> Result<Option<serde_json::Value>> {
    let mut tpl = TopicPartitionList::new();
    for (partition, offset) in from {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    if from.is_empty() {
        // The status topic does not exist yet: the processor creates it; read it from its start.
        tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    }
    consumer.assign(&tpl).with_context(|| format!("reading `{topic}`"))?;
    drop(tpl);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
        let Ok(m) = m else { continue };
        if m.key().and_then(id_from_key) != Some(id) {
            continue;
        }
        let Some(status) = m.payload().and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok()) else { continue };
        let matches = match digest {
            Some(d) => status["digest"].as_str() == Some(d),
            None => status["state"].as_str() == Some("deleted"),
        };
        if matches {
            return Ok(Some(status));
        }
    }
    Ok(None)
}

/// Reads `topic` from the beginning to its end: the last value per key (None: tombstone).
fn read_all(consumer: &BaseConsumer<KafkaContext>, topic: &str) -> Result<BTreeMap<String, Option<Vec<u8>>>> {
    let mut ends = crate::kafka::end_offsets(consumer, topic)?;
    ends.retain(|_, high| *high > 0);
    let mut tpl = TopicPartitionList::new();
    for partition in ends.keys() {
        tpl.add_partition_offset(topic, *partition, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    drop(tpl);
    let mut out = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ends.is_empty() && Instant::now() < deadline {
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
    consumer.unassign()?;
    Ok(out)
}

fn list(settings: &Settings) -> Result<()> {
    let errors = ClientErrors::default();
    let consumer = connected_consumer(settings, &errors)?;
    let campaigns = read_all(&consumer, &settings.campaign_topic)?;
    let statuses = read_all(&consumer, &settings.status_topic).unwrap_or_default();
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

/// One line of `campaign logs`.
fn log_line(record: &serde_json::Value) -> String {
    let at = record["at"].as_str().unwrap_or("");
    let instance = record["instance"].as_str().unwrap_or("?");
    let message = record["message"].as_str().unwrap_or("");
    match record["stream"].as_str().unwrap_or("") {
        "error" => {
            let kind = record["kind"].as_str().unwrap_or("error");
            let at_event = match (record["partition"].as_i64(), record["offset"].as_i64()) {
                (Some(p), Some(o)) => format!(" (event at partition {p}, offset {o})"),
                _ => String::new(),
            };
            format!("{at} {instance} error {kind}{at_event}: {message}")
        }
        "dropped" => format!("{at} {instance} {} line(s) dropped by the rate limit", record["dropped"].as_u64().unwrap_or(0)),
        stream => format!("{at} {instance} {stream}: {message}"),
    }
}

fn logs(settings: &Settings, id: i64, follow: bool, lines: usize) -> Result<()> {
    let errors = ClientErrors::default();
    let consumer = connected_consumer(settings, &errors)?;
    let topic = settings.filter_log_topic.as_str();
    let ends = crate::kafka::end_offsets(&consumer, topic)?;
    if ends.is_empty() && !follow {
        println!("no filter log yet: the topic `{topic}` does not exist (the processor creates it when it starts)");
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for partition in ends.keys() {
        tpl.add_partition_offset(topic, *partition, Offset::Beginning)?;
    }
    if ends.is_empty() {
        tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    }
    consumer.assign(&tpl).with_context(|| format!("reading `{topic}`"))?;
    drop(tpl);
    let key = id.to_string();
    // The backlog, up to the end offsets: its last `lines` lines of this campaign.
    let mut pending: BTreeMap<i32, i64> = ends.into_iter().filter(|(_, end)| *end > 0).collect();
    let mut backlog = std::collections::VecDeque::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(500)) else { continue };
        let m = m?;
        if pending.get(&m.partition()).is_some_and(|end| m.offset() + 1 >= *end) {
            pending.remove(&m.partition());
        }
        if m.key() != Some(key.as_bytes()) {
            continue;
        }
        if let Some(record) = m.payload().and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok()) {
            backlog.push_back(log_line(&record));
            if backlog.len() > lines {
                backlog.pop_front();
            }
        }
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if backlog.is_empty() && !follow {
        writeln!(out, "no log lines of campaign {id} in `{topic}`")?;
    }
    for line in backlog {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    drop(out);
    if !follow {
        return Ok(());
    }
    loop {
        let Some(m) = consumer.poll(Duration::from_millis(500)) else { continue };
        let Ok(m) = m else { continue };
        if m.key() != Some(key.as_bytes()) {
            continue;
        }
        if let Some(record) = m.payload().and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok()) {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", log_line(&record))?;
            out.flush()?;
        }
    }
}
