//! Configuration of `rtcrm run`, in two stages: raw settings (a TOML file or the original
//! system's `config.json`, then `RTCRM_*` environment variables, then flags) are merged and
//! validated once into [`Settings`]. Errors quote the offending value.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use rtcrm_sandbox::{HostLimits, UserLimits};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Which time a campaign's window is checked against (spec §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Clock {
    /// The event's `created_at`, else `received_at`, else the wall clock: a replay gives the
    /// same triggers as the first run.
    Event,
    /// The wall clock, as the original system did.
    Processing,
}

/// The delivery guarantee (spec §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// An event's offset is committed only after its triggers are acknowledged; a crash may
    /// repeat triggers (same `trigger_id`).
    AtLeastOnce,
    /// Triggers and offsets are committed in one Kafka transaction (KIP-447); readers of the
    /// triggers topic use `isolation.level=read_committed`. Give each instance a stable
    /// `--instance-id`: it names the transactional producer, so a restart fences its predecessor.
    ExactlyOnce,
}

/// Where a new consumer group starts reading events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    /// The oldest event still in the topic.
    Earliest,
    /// Only events written after the group first joins (the original system's behaviour).
    Latest,
}

/// Flags of `rtcrm run` (each also read from `RTCRM_<NAME>`); they override the config file.
#[derive(Debug, Args, Default, Clone)]
pub struct RunArgs {
    /// A TOML file with the settings below (snake_case), or the original system's `config.json`.
    #[arg(long, env = "RTCRM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers [default: localhost:9093].
    #[arg(long, env = "RTCRM_BOOTSTRAP_SERVERS")]
    pub bootstrap_servers: Option<String>,
    /// Consumer group of the events topic [default: flink-real-time-crm].
    #[arg(long, env = "RTCRM_GROUP_ID")]
    pub group_id: Option<String>,
    /// Events topic [default: events-valid].
    #[arg(long, env = "RTCRM_EVENT_TOPIC")]
    pub event_topic: Option<String>,
    /// Campaigns topic [default: crm-campaigns].
    #[arg(long, env = "RTCRM_CAMPAIGN_TOPIC")]
    pub campaign_topic: Option<String>,
    /// Triggers topic [default: crm-triggers].
    #[arg(long, env = "RTCRM_TRIGGER_TOPIC")]
    pub trigger_topic: Option<String>,
    /// Campaign status topic [default: crm-campaign-status].
    #[arg(long, env = "RTCRM_STATUS_TOPIC")]
    pub status_topic: Option<String>,
    /// Dead-letter topic for malformed events [default: events-dlq].
    #[arg(long, env = "RTCRM_DLQ_TOPIC")]
    pub dlq_topic: Option<String>,
    /// Control-group matches of campaigns with a holdout (spec §12) [default: the triggers topic
    /// and `-control`: crm-triggers-control].
    #[arg(long, env = "RTCRM_CONTROL_TOPIC")]
    pub control_topic: Option<String>,
    /// The per-player state changelog (compacted, internal) [default: rtcrm-state-changelog,
    /// prefixed with `<group-id>-` when --group-id is set, so deployments never share one].
    #[arg(long, env = "RTCRM_CHANGELOG_TOPIC")]
    pub changelog_topic: Option<String>,
    /// Events repartitioned by player id (internal) [default: rtcrm-events-by-player, prefixed
    /// with `<group-id>-` when --group-id is set].
    #[arg(long, env = "RTCRM_REPARTITION_TOPIC")]
    pub repartition_topic: Option<String>,
    /// Where the per-player state is kept on disk (one directory per group and instance id)
    /// [default: $XDG_STATE_HOME/rtcrm, else ~/.local/state/rtcrm].
    #[arg(long, env = "RTCRM_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Filter log topic: filters' `console.log` output and evaluation errors, keyed by campaign
    /// id, rate-limited (`rtcrm campaign logs ID` reads it) [default: rtcrm-filter-logs].
    #[arg(long, env = "RTCRM_FILTER_LOG_TOPIC")]
    pub filter_log_topic: Option<String>,
    /// Time against which campaign windows are checked [default: event].
    #[arg(long, env = "RTCRM_CLOCK", value_enum)]
    pub clock: Option<Clock>,
    /// Evaluation threads [default: the number of cores].
    #[arg(long, env = "RTCRM_WORKERS")]
    pub workers: Option<usize>,
    /// Partitions of the topics rtcrm creates when they are missing [default: 1].
    #[arg(long, env = "RTCRM_PARTITIONS")]
    pub partitions: Option<i32>,
    /// Address of the HTTP server (health, readiness, metrics) [default: 127.0.0.1:8080].
    #[arg(long, env = "RTCRM_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// This process's name in status messages [default: host name and process id].
    #[arg(long, env = "RTCRM_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Consecutive failed evaluations after which a campaign is quarantined [default: 50].
    #[arg(long, env = "RTCRM_QUARANTINE_AFTER")]
    pub quarantine_after: Option<u32>,
    /// Where a new consumer group starts [default: earliest].
    #[arg(long, env = "RTCRM_AUTO_OFFSET_RESET", value_enum)]
    pub auto_offset_reset: Option<OffsetReset>,
    /// Delivery guarantee [default: at-least-once].
    #[arg(long, env = "RTCRM_DELIVERY", value_enum)]
    pub delivery: Option<Delivery>,
    /// Bearer token the HTTP API's POST and DELETE requests must carry when the HTTP server is
    /// bound to a non-loopback address (without one, they are refused there) [default: none].
    #[arg(long, env = "RTCRM_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// A librdkafka property for every Kafka client rtcrm creates, as KEY=VALUE (repeatable), e.g.
    /// `--kafka-property security.protocol=SASL_SSL`; also `RTCRM_KAFKA_<KEY>` (dots as `_`, e.g.
    /// `RTCRM_KAFKA_SASL_MECHANISM=SCRAM-SHA-512`) and the config file's `[kafka]` table.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE")]
    pub kafka_property: Vec<String>,
    /// Most filter instances alive at once, all campaigns together; idle ones of the least
    /// recently used campaigns are dropped past it and rebuilt on demand [default: 1 GiB of
    /// instances at the size the sandbox measured, at most 12,000: ~10,000 JavaScript instances
    /// of 104 KiB, or ~3,700 of 282 KiB where fault-around cannot be turned off].
    #[arg(long, env = "RTCRM_MAX_FILTER_INSTANCES")]
    pub max_filter_instances: Option<usize>,
    #[command(flatten)]
    pub limits: LimitFlags,
}

/// The host's limits (spec §7; every campaign may lower them), in user units. Defaults and
/// their known gaps: host/sandbox/src/limits.rs. Also in the config file's `[limits]` table.
#[derive(Debug, Args, Default, Clone)]
pub struct LimitFlags {
    /// Fuel per evaluation (~1 per wasm instruction; 10000000 ≈ 1 ms of a tight loop) [default: 20000000].
    #[arg(long, env = "RTCRM_FUEL")]
    pub fuel: Option<u64>,
    /// Memory per filter instance, all memories and tables, in MiB [default: 16].
    #[arg(long, env = "RTCRM_MEMORY_MB")]
    pub memory_mb: Option<u64>,
    /// CPU-time deadline per evaluation, in milliseconds (a backstop behind fuel) [default: 100].
    #[arg(long, env = "RTCRM_DEADLINE_MS")]
    pub deadline_ms: Option<u64>,
    /// Largest WebAssembly filter module, in bytes [default: 8388608].
    #[arg(long, env = "RTCRM_MAX_MODULE_BYTES")]
    pub max_module_bytes: Option<u64>,
    /// Largest JavaScript filter source, in bytes [default: 65536].
    #[arg(long, env = "RTCRM_MAX_SOURCE_BYTES")]
    pub max_source_bytes: Option<u64>,
    /// Largest per-player state of a campaign, in bytes [default: 1024].
    #[arg(long, env = "RTCRM_STATE_MAX_BYTES")]
    pub state_max_bytes: Option<u64>,
    /// Largest event, in bytes; larger ones go to the dead-letter topic [default: 1048576].
    #[arg(long, env = "RTCRM_MAX_EVENT_BYTES")]
    pub max_event_bytes: Option<u64>,
    /// Deepest nesting of objects and arrays in an event; deeper ones go to the dead-letter topic [default: 64].
    #[arg(long, env = "RTCRM_MAX_EVENT_DEPTH")]
    pub max_event_depth: Option<u64>,
}

impl LimitFlags {
    fn user_limits(&self) -> UserLimits {
        UserLimits {
            fuel: self.fuel,
            memory_mb: self.memory_mb,
            deadline_ms: self.deadline_ms,
            max_module_bytes: self.max_module_bytes,
            max_source_bytes: self.max_source_bytes,
            state_max_bytes: self.state_max_bytes,
            max_event_bytes: self.max_event_bytes,
            max_event_depth: self.max_event_depth,
        }
    }
}

/// The config file, TOML form: the same names as the flags, in snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bootstrap_servers: Option<String>,
    group_id: Option<String>,
    event_topic: Option<String>,
    campaign_topic: Option<String>,
    trigger_topic: Option<String>,
    status_topic: Option<String>,
    dlq_topic: Option<String>,
    control_topic: Option<String>,
    changelog_topic: Option<String>,
    repartition_topic: Option<String>,
    state_dir: Option<PathBuf>,
    filter_log_topic: Option<String>,
    clock: Option<Clock>,
    workers: Option<usize>,
    partitions: Option<i32>,
    http_addr: Option<String>,
    instance_id: Option<String>,
    quarantine_after: Option<u32>,
    auto_offset_reset: Option<OffsetReset>,
    delivery: Option<Delivery>,
    api_token: Option<String>,
    max_filter_instances: Option<usize>,
    /// librdkafka properties for every client.
    kafka: Option<BTreeMap<String, toml::Value>>,
    /// The host's limits, in user units.
    limits: Option<UserLimits>,
}

/// The original system's `config.json` (its keys; the Flink-only ones are accepted and ignored).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OriginalConfig {
    kafka_bootstrap_servers: Option<String>,
    kafka_group_id: Option<String>,
    event_topic: Option<String>,
    campaign_topic: Option<String>,
    trigger_topic: Option<String>,
    default_parallelism: Option<usize>,
    #[allow(dead_code)]
    checkpoint_interval: Option<serde_json::Value>,
    #[allow(dead_code)]
    checkpoint_dir: Option<serde_json::Value>,
}

impl From<OriginalConfig> for FileConfig {
    fn from(o: OriginalConfig) -> Self {
        FileConfig {
            bootstrap_servers: o.kafka_bootstrap_servers,
            group_id: o.kafka_group_id,
            event_topic: o.event_topic,
            campaign_topic: o.campaign_topic,
            trigger_topic: o.trigger_topic,
            workers: o.default_parallelism,
            ..FileConfig::default()
        }
    }
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the config file {}", path.display()))?;
    if text.trim_start().starts_with('{') {
        let original: OriginalConfig = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid config.json (keys of the original system)", path.display()))?;
        Ok(original.into())
    } else {
        toml::from_str(&text).with_context(|| format!("{} is not a valid rtcrm TOML config", path.display()))
    }
}

/// The original system's consumer group.
pub const DEFAULT_GROUP: &str = "flink-real-time-crm";

/// Validated settings of the processor.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bootstrap_servers: String,
    pub group_id: String,
    pub event_topic: String,
    pub campaign_topic: String,
    pub trigger_topic: String,
    pub status_topic: String,
    pub dlq_topic: String,
    pub control_topic: String,
    pub changelog_topic: String,
    pub repartition_topic: String,
    /// This process's per-player state directory (`<state dir>/<group>-<instance id>`).
    pub state_dir: PathBuf,
    /// Filters' output and evaluation errors (`rtcrm campaign logs`).
    pub filter_log_topic: String,
    pub clock: Clock,
    pub workers: usize,
    pub partitions: i32,
    pub http_addr: SocketAddr,
    pub instance_id: String,
    pub quarantine_after: u32,
    pub auto_offset_reset: OffsetReset,
    pub delivery: Delivery,
    /// Create missing topics with the admin API (off against the mock cluster, which lacks it).
    pub create_topics: bool,
    /// The HTTP API's bearer token for mutating requests on a non-loopback bind.
    pub api_token: Option<ApiToken>,
    /// `instance_id` was given (flag, variable or file): it is then also the consumer's static
    /// group membership (`group.instance.id`) and stable across restarts.
    pub instance_id_explicit: bool,
    /// Most filter instances alive at once (`None`: derived from the sandbox's instance size,
    /// `campaigns::instances::default_max_instances`).
    pub max_filter_instances: Option<usize>,
    /// librdkafka properties applied to every client (secrets redacted in `Debug`).
    pub kafka: KafkaProperties,
    /// The host's limits, validated.
    pub limits: HostLimits,
}

/// librdkafka properties from the operator. `Debug` redacts the values of secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(pub BTreeMap<String, String>);

impl KafkaProperties {
    /// Whether `key` names a secret (a password, a private key, a client secret).
    pub fn is_secret(key: &str) -> bool {
        let k = key.to_ascii_lowercase();
        ["password", "secret", ".key.pem", "ssl.key", "sasl.jaas.config", "oauthbearer.config"].iter().any(|s| k.contains(s))
    }

    /// The properties with secret values replaced by `***`, for logs and the API.
    pub fn redacted(&self) -> BTreeMap<String, String> {
        self.0.iter().map(|(k, v)| (k.clone(), if Self::is_secret(k) { "***".into() } else { v.clone() })).collect()
    }

    /// Merges the file's `[kafka]` table, `RTCRM_KAFKA_*` variables and `--kafka-property` flags
    /// (later ones win).
    pub fn load(file: Option<BTreeMap<String, toml::Value>>, env: impl Iterator<Item = (String, String)>, flags: &[String]) -> Result<KafkaProperties> {
        let mut props = BTreeMap::new();
        for (key, value) in file.unwrap_or_default() {
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => bail!("[kafka] {key} = {other} must be a string, number or boolean"),
            };
            props.insert(key, value);
        }
        for (name, value) in env {
            if let Some(rest) = name.strip_prefix("RTCRM_KAFKA_") {
                if !rest.is_empty() {
                    props.insert(rest.to_ascii_lowercase().replace('_', "."), value);
                }
            }
        }
        for flag in flags {
            let (key, value) = flag
                .split_once('=')
                .with_context(|| format!("--kafka-property `{flag}` is not KEY=VALUE (e.g. security.protocol=SASL_SSL)"))?;
            if key.trim().is_empty() {
                bail!("--kafka-property `{flag}` has an empty key");
            }
            props.insert(key.trim().to_owned(), value.to_owned());
        }
        for reserved in ["bootstrap.servers", "group.id", "transactional.id", "enable.auto.commit", "enable.auto.offset.store", "group.instance.id"] {
            if props.contains_key(reserved) {
                bail!("the Kafka property `{reserved}` is set by rtcrm itself; use its own option instead (see rtcrm run --help)");
            }
        }
        Ok(KafkaProperties(props))
    }
}

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.redacted()).finish()
    }
}

impl<'a> IntoIterator for &'a KafkaProperties {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A secret: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(pub String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(***)")
    }
}

impl ApiToken {
    /// A token from a flag, variable or file; an empty one is an error, not "no token".
    pub fn parse(text: Option<String>) -> Result<Option<ApiToken>> {
        match text {
            None => Ok(None),
            Some(t) if t.trim().is_empty() => bail!("api_token is empty; give a secret, or leave it unset"),
            Some(t) => Ok(Some(ApiToken(t.trim().to_owned()))),
        }
    }
}

impl Settings {
    /// Merges the file, the environment and the flags (flags and environment win), and validates.
    pub fn load(args: &RunArgs) -> Result<Settings> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        fn pick<T: Clone>(flag: &Option<T>, file: Option<T>, default: T) -> T {
            flag.clone().or(file).unwrap_or(default)
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let group_id = pick(&args.group_id, file.group_id.clone(), DEFAULT_GROUP.into());
        let trigger_topic = pick(&args.trigger_topic, file.trigger_topic.clone(), "crm-triggers".into());
        // Internal topics belong to one deployment, as Kafka Streams prefixes its own with the
        // application id: a group of its own gets internal topics of its own.
        let internal = |name: &str| -> String {
            if group_id == DEFAULT_GROUP {
                name.to_owned()
            } else {
                let prefix: String = group_id.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
                format!("{prefix}-{name}")
            }
        };
        let http = pick(&args.http_addr, file.http_addr, "127.0.0.1:8080".into());
        let settings = Settings {
            bootstrap_servers: pick(&args.bootstrap_servers, file.bootstrap_servers, "localhost:9093".into()),
            group_id: group_id.clone(),
            event_topic: pick(&args.event_topic, file.event_topic, "events-valid".into()),
            campaign_topic: pick(&args.campaign_topic, file.campaign_topic, "crm-campaigns".into()),
            trigger_topic: trigger_topic.clone(),
            status_topic: pick(&args.status_topic, file.status_topic, "crm-campaign-status".into()),
            dlq_topic: pick(&args.dlq_topic, file.dlq_topic, "events-dlq".into()),
            control_topic: args.control_topic.clone().or(file.control_topic).unwrap_or_else(|| format!("{}-control", trigger_topic)),
            changelog_topic: pick(&args.changelog_topic, file.changelog_topic, internal("rtcrm-state-changelog")),
            repartition_topic: pick(&args.repartition_topic, file.repartition_topic, internal("rtcrm-events-by-player")),
            state_dir: args.state_dir.clone().or(file.state_dir).unwrap_or_else(default_state_dir),
            filter_log_topic: pick(&args.filter_log_topic, file.filter_log_topic, "rtcrm-filter-logs".into()),
            clock: pick(&args.clock, file.clock, Clock::Event),
            workers: pick(&args.workers, file.workers, cores),
            partitions: pick(&args.partitions, file.partitions, 1),
            http_addr: http.parse().with_context(|| format!("http_addr `{http}` is not an address like 127.0.0.1:8080"))?,
            instance_id_explicit: args.instance_id.is_some() || file.instance_id.is_some(),
            instance_id: pick(&args.instance_id, file.instance_id, default_instance_id()),
            quarantine_after: pick(&args.quarantine_after, file.quarantine_after, 50),
            auto_offset_reset: pick(&args.auto_offset_reset, file.auto_offset_reset, OffsetReset::Earliest),
            delivery: pick(&args.delivery, file.delivery, Delivery::AtLeastOnce),
            create_topics: true,
            api_token: ApiToken::parse(args.api_token.clone().or(file.api_token))?,
            max_filter_instances: args.max_filter_instances.or(file.max_filter_instances),
            kafka: KafkaProperties::load(file.kafka, std::env::vars(), &args.kafka_property)?,
            limits: HostLimits::from_user_units(file.limits.unwrap_or_default().overridden_by(args.limits.user_limits()))
                .context("the limits (flags, RTCRM_* variables or the config file's [limits] table)")?,
        };
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<()> {
        if self.bootstrap_servers.trim().is_empty() {
            bail!("bootstrap_servers is empty; give the Kafka brokers as host:port[,host:port]");
        }
        if self.workers == 0 || self.workers > 256 {
            bail!("workers `{}` is out of range: use 1 to 256", self.workers);
        }
        if self.partitions < 1 {
            bail!("partitions `{}` must be at least 1", self.partitions);
        }
        if self.max_filter_instances == Some(0) {
            bail!("max_filter_instances `0` leaves no room for any filter; use 1 or more (or leave it out: sized to 1 GiB of instances)");
        }
        if self.quarantine_after == 0 {
            bail!("quarantine_after `0` would quarantine every campaign; use 1 or more");
        }
        let topics = [
            ("event_topic", &self.event_topic),
            ("campaign_topic", &self.campaign_topic),
            ("trigger_topic", &self.trigger_topic),
            ("status_topic", &self.status_topic),
            ("dlq_topic", &self.dlq_topic),
            ("control_topic", &self.control_topic),
            ("changelog_topic", &self.changelog_topic),
            ("repartition_topic", &self.repartition_topic),
            ("filter_log_topic", &self.filter_log_topic),
        ];
        for (name, topic) in topics {
            let valid = !topic.is_empty()
                && topic.len() <= 249
                && topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !valid {
                bail!("{name} `{topic}` is not a valid Kafka topic name (letters, digits, '.', '_', '-')");
            }
        }
        Ok(())
    }
}

/// `$XDG_STATE_HOME/rtcrm`, else `~/.local/state/rtcrm`, else `./rtcrm-state`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("rtcrm");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/rtcrm"),
        None => PathBuf::from("rtcrm-state"),
    }
}

impl Settings {
    /// This process's own state directory: one per consumer group and instance id, so two
    /// processes never share one, and a restarted instance with the same `--instance-id` finds
    /// its checkpoints.
    pub fn process_state_dir(&self) -> PathBuf {
        let clean = |s: &str| s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect::<String>();
        self.state_dir.join(format!("{}--{}", clean(&self.group_id), clean(&self.instance_id)))
    }
}

fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    format!("{}-{}", if host.is_empty() { "rtcrm" } else { &host }, std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("rtcrm-config-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn internal_and_control_topics_follow_the_group_and_the_triggers_topic() {
        let s = Settings::load(&RunArgs::default()).unwrap();
        assert_eq!((s.changelog_topic.as_str(), s.repartition_topic.as_str(), s.control_topic.as_str()), ("rtcrm-state-changelog", "rtcrm-events-by-player", "crm-triggers-control"));
        let s = Settings::load(&RunArgs { group_id: Some("crm a".into()), trigger_topic: Some("t1".into()), ..RunArgs::default() }).unwrap();
        assert_eq!((s.changelog_topic.as_str(), s.repartition_topic.as_str(), s.control_topic.as_str()), ("crm_a-rtcrm-state-changelog", "crm_a-rtcrm-events-by-player", "t1-control"));
        let s = Settings::load(&RunArgs { group_id: Some("g".into()), changelog_topic: Some("mine".into()), ..RunArgs::default() }).unwrap();
        assert_eq!(s.changelog_topic, "mine");
    }

    #[test]
    fn the_original_config_json_is_read_with_its_keys() {
        let path = write(
            "config.json",
            r#"{"default_parallelism":2,"checkpoint_interval":10000,"checkpoint_dir":"file:///tmp","kafka_bootstrap_servers":"localhost:9093","kafka_group_id":"g1","event_topic":"ev","campaign_topic":"ca","trigger_topic":"tr"}"#,
        );
        let s = Settings::load(&RunArgs { config: Some(path), ..RunArgs::default() }).unwrap();
        assert_eq!((s.group_id.as_str(), s.event_topic.as_str(), s.campaign_topic.as_str(), s.trigger_topic.as_str()), ("g1", "ev", "ca", "tr"));
        assert_eq!(s.workers, 2);
    }

    #[test]
    fn flags_override_the_file() {
        let path = write("a.toml", "group_id = \"from-file\"\nworkers = 3\nclock = \"processing\"\n");
        let args = RunArgs { config: Some(path), group_id: Some("from-flag".into()), ..RunArgs::default() };
        let s = Settings::load(&args).unwrap();
        assert_eq!(s.group_id, "from-flag");
        assert_eq!(s.workers, 3);
        assert_eq!(s.clock, Clock::Processing);
    }

    #[test]
    fn errors_quote_the_offending_value() {
        let err = Settings::load(&RunArgs { http_addr: Some("localhost".into()), ..RunArgs::default() }).unwrap_err();
        assert!(format!("{err:#}").contains("`localhost`"), "{err:#}");
        let err = Settings::load(&RunArgs { event_topic: Some("bad topic".into()), ..RunArgs::default() }).unwrap_err();
        assert!(format!("{err:#}").contains("`bad topic`"), "{err:#}");
        let path = write("b.toml", "gruop_id = \"typo\"\n");
        let err = Settings::load(&RunArgs { config: Some(path), ..RunArgs::default() }).unwrap_err();
        assert!(format!("{err:#}").contains("gruop_id"), "{err:#}");
    }

    #[test]
    fn kafka_properties_merge_file_then_environment_then_flags() {
        let file: BTreeMap<String, toml::Value> = toml::from_str(
            "\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanisms\" = \"PLAIN\"\n\"socket.timeout.ms\" = 30000\n\"enable.ssl.certificate.verification\" = true\n",
        )
        .unwrap();
        let env = [
            ("RTCRM_KAFKA_SASL_MECHANISMS".to_string(), "SCRAM-SHA-512".to_string()),
            ("RTCRM_KAFKA_SASL_PASSWORD".to_string(), "from-env".to_string()),
            ("RTCRM_KAFKA_".to_string(), "ignored".to_string()),
            ("RTCRM_GROUP_ID".to_string(), "not a property".to_string()),
        ];
        let flags = ["sasl.password=from-flag=with=equals".to_string(), " sasl.username =alice".to_string()];
        let p = KafkaProperties::load(Some(file), env.into_iter(), &flags).unwrap();
        let got: Vec<(&str, &str)> = p.0.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            got,
            [
                ("enable.ssl.certificate.verification", "true"),
                ("sasl.mechanisms", "SCRAM-SHA-512"),
                ("sasl.password", "from-flag=with=equals"),
                ("sasl.username", "alice"),
                ("security.protocol", "SASL_SSL"),
                ("socket.timeout.ms", "30000"),
            ]
        );
    }

    #[test]
    fn kafka_properties_refuse_what_rtcrm_sets_and_malformed_flags() {
        for (flag, says) in [
            ("group.id=x", "`group.id` is set by rtcrm itself"),
            ("bootstrap.servers=x:1", "`bootstrap.servers` is set by rtcrm itself"),
            ("sasl.username", "is not KEY=VALUE"),
            ("=x", "has an empty key"),
        ] {
            let err = KafkaProperties::load(None, std::iter::empty(), &[flag.to_string()]).unwrap_err();
            assert!(format!("{err:#}").contains(says), "{flag}: {err:#}");
        }
        let table: BTreeMap<String, toml::Value> = toml::from_str("\"a\" = [1]\n").unwrap();
        let err = KafkaProperties::load(Some(table), std::iter::empty(), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("[kafka] a = [1] must be a string, number or boolean"), "{err:#}");
    }

    #[test]
    fn kafka_secrets_are_redacted_in_debug_and_for_the_api() {
        let p = KafkaProperties(
            [
                ("sasl.password", "p1"),
                ("ssl.key.password", "p2"),
                ("sasl.oauthbearer.client.secret", "p3"),
                ("sasl.jaas.config", "p4"),
                ("sasl.oauthbearer.config", "p5"),
                ("ssl.key.pem", "p6"),
                ("sasl.username", "alice"),
                ("security.protocol", "SASL_SSL"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        let shown = format!("{p:?}");
        for secret in ["p1", "p2", "p3", "p4", "p5", "p6"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("alice") && shown.contains("SASL_SSL"), "{shown}");
        assert_eq!(p.redacted()["sasl.password"], "***");
    }
}
