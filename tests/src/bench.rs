//! Helpers the benchmark binaries (`src/bin/e2e_bench.rs`, `src/bin/state_bench.rs`) share.

use anyhow::{anyhow, bail, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use std::time::Duration;

/// A shell-quoted command line, to print exactly what ran.
pub fn shell_line(args: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    args.into_iter()
        .map(|a| {
            let a = a.as_ref();
            if !a.is_empty() && a.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_./:=,@%+".contains(&c)) {
                a.to_string()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The value of an unlabelled Prometheus sample, or the sum over its labels.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

/// The non-zero `rtcrm_evaluation_errors_total{campaign, kind}` samples of a `/metrics` text.
pub fn evaluation_errors(metrics: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("rtcrm_evaluation_errors_total{") && !l.ends_with(" 0"))
        .map(String::from)
        .collect()
}

/// CPU time (user + system) process `pid` has used so far, from /proc.
pub fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let fields: Vec<&str> = stat.rsplit_once(") ").map_or(vec![], |(_, rest)| rest.split(' ').collect());
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((field(11) + field(12)) * 10)
}

pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.retain(|x| x.is_finite());
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let n = xs.len();
    if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 }
}

pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

/// Creates `plain` topics with `partitions` partitions and one-partition `append_time` topics
/// with broker (LogAppendTime) timestamps.
pub fn create_topics(rt: &tokio::runtime::Runtime, bootstrap: &str, plain: &[&str], partitions: i32, append_time: &[&str]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap).create()?;
    let mut new: Vec<NewTopic> = plain.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
    new.extend(
        append_time
            .iter()
            .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)).set("message.timestamp.type", "LogAppendTime")),
    );
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in rt.block_on(admin.create_topics(&new, &opts))? {
        r.map_err(|(t, e)| anyhow!("creating topic {t}: {e}"))?;
    }
    Ok(())
}

/// Ok once the broker acknowledged the record (`E` is the future's "producer gone" error).
pub fn check_delivery<E>(r: Result<OwnedDeliveryResult, E>) -> Result<()> {
    match r {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => bail!("delivery failed: {e}"),
        Err(_) => bail!("delivery cancelled (producer gone)"),
    }
}

/// A broker started with `scripts/kafka/broker.sh`, stopped on drop (its logs stay, its topics'
/// data goes).
pub struct Broker {
    pub dir: std::path::PathBuf,
    pub addr: String,
}

impl Broker {
    pub fn start(dir: &std::path::Path) -> Result<Broker> {
        use anyhow::Context;
        use std::process::{Command, Stdio};
        let script = crate::workspace_dir().join("scripts/kafka/broker.sh");
        std::fs::create_dir_all(dir)?;
        // A detached watchdog stops the broker once this process is gone, even if it is killed
        // (the broker runs under setsid, so it would outlive us).
        let watchdog = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; exec bash {} stop {}",
            shell_line([script.to_string_lossy()]),
            shell_line([dir.to_string_lossy()]),
            pid = std::process::id()
        );
        Command::new("setsid")
            .args(["bash", "-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("watchdog.log")).map(Stdio::from).unwrap_or(Stdio::null()))
            .spawn()
            .context("spawning the broker watchdog (setsid bash)")?;
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(dir)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .context("running scripts/kafka/broker.sh")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let addr = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        // From here on, drop stops the broker (also after a failed start: stop is idempotent).
        let broker = Broker { dir: dir.to_path_buf(), addr };
        if !out.status.success() || broker.addr.is_empty() {
            bail!("`broker.sh start {}` failed ({}): {stdout}", dir.display(), out.status);
        }
        Ok(broker)
    }

    /// The broker's log dir (`log.dirs` of scripts/kafka/broker.sh).
    pub fn log_dir(&self) -> std::path::PathBuf {
        self.dir.join("data")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        eprintln!("stopping the broker ({})", self.dir.display());
        let script = crate::workspace_dir().join("scripts/kafka/broker.sh");
        let stopped = std::process::Command::new("bash").arg(script).arg("stop").arg(&self.dir).stdin(std::process::Stdio::null()).status();
        if stopped.is_ok_and(|s| s.success()) {
            let _ = std::fs::remove_dir_all(self.dir.join("data"));
        }
    }
}
