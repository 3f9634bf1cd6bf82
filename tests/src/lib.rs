//! Harness for the end-to-end tests of `rtcrm run` and `rtcrm dev` (see `tests/tests/*.rs`).
//!
//! - [`broker`]: a real Apache Kafka broker (`scripts/kafka/broker.sh`), started once per test
//!   process and stopped by a detached watchdog when the process exits, or the address in
//!   `RTCRM_TEST_BOOTSTRAP`.
//! - [`rtcrm_bin`]: the `rtcrm` binary under test (`RTCRM_BIN`, else `target/release/rtcrm`).
//! - [`Processor`]: a running `rtcrm run` (or `rtcrm dev`) with its HTTP endpoints, log file,
//!   SIGTERM and metrics.
//! - [`Topics`]: unique topic names and a group id per test.
//! - Kafka helpers: [`produce`], [`create_topic`], [`Reader`] / [`consume_all`].
//! - Small utilities: [`http_get`], [`Rng`] (deterministic), RFC 3339 formatting and parsing,
//!   trigger parsing and comparison.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{DeliveryResult, Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::Value;

pub use serde_json::json;

pub mod bench;
pub mod faults;

// ---------------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------------

/// The Cargo workspace root (the parent of this crate).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Cargo's target directory (`CARGO_TARGET_DIR` respected, relative to the workspace).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let p = PathBuf::from(d);
            if p.is_absolute() {
                p
            } else {
                workspace_dir().join(p)
            }
        }
        _ => workspace_dir().join("target"),
    }
}

/// Where processor logs go: `<target>/rtcrm-it/`.
pub fn log_dir() -> PathBuf {
    let d = target_dir().join("rtcrm-it");
    std::fs::create_dir_all(&d).expect("create the log directory under target/");
    d
}

/// Path of the `rtcrm` binary under test: `RTCRM_BIN`, else `<target>/release/rtcrm`, which
/// must be newer than every source it is built from (a stale binary left in `target/` fails the
/// test with the reason, rather than testing old code).
pub fn rtcrm_bin() -> PathBuf {
    static CHECKED: OnceLock<PathBuf> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let (p, explicit) = match std::env::var_os("RTCRM_BIN") {
                Some(p) if !p.is_empty() => (PathBuf::from(p), true),
                _ => (target_dir().join("release").join("rtcrm"), false),
            };
            if !p.is_file() {
                panic!(
                    "the rtcrm binary {} is missing: build it with cargo build --release -p rtcrm \
                     (scripts/test.sh does), or point RTCRM_BIN at it",
                    p.display()
                );
            }
            if !explicit {
                let built = std::fs::metadata(&p).and_then(|m| m.modified()).expect("the binary's modification time");
                let ws = workspace_dir();
                let sources = ["host/src", "host/sandbox/src", "compiler/src", "compiler/runtime/src"];
                if let Some(newer) = sources.iter().filter_map(|s| newest_file(&ws.join(s))).filter(|(t, _)| *t > built).max() {
                    panic!(
                        "the rtcrm binary {} is older than {}: it would test stale code. Rebuild it with \
                         cargo build --release -p rtcrm (scripts/test.sh builds it), or point RTCRM_BIN at a binary",
                        p.display(),
                        newer.1.display()
                    );
                }
            }
            p
        })
        .clone()
}

/// The most recently modified file under `path` (or `path` itself), with its time.
fn newest_file(path: &Path) -> Option<(SystemTime, PathBuf)> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return Some((meta.modified().ok()?, path.to_path_buf()));
    }
    std::fs::read_dir(path).ok()?.filter_map(|e| e.ok()).filter_map(|e| newest_file(&e.path())).max()
}

// ---------------------------------------------------------------------------------------------
// Broker
// ---------------------------------------------------------------------------------------------

static BROKER: OnceLock<String> = OnceLock::new();

/// Bootstrap address of a real Kafka broker: `RTCRM_TEST_BOOTSTRAP` when set, otherwise one
/// broker started (once per test process) with `scripts/kafka/broker.sh start`, stopped by a
/// detached watchdog once this process has exited (normally or not).
pub fn broker() -> String {
    BROKER.get_or_init(start_broker).clone()
}

fn start_broker() -> String {
    if let Ok(b) = std::env::var("RTCRM_TEST_BOOTSTRAP") {
        if !b.trim().is_empty() {
            return b.trim().to_string();
        }
    }
    let dir = target_dir().join(format!("kafka-it-{}", std::process::id()));
    let stdout = start_broker_in(&dir, &[]);
    stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
}

/// Starts a broker with `broker.sh start DIR EXTRA...` and a detached watchdog that stops it once
/// this process has exited; returns the script's stdout (its last line is the address).
fn start_broker_in(dir: &Path, extra: &[&str]) -> String {
    let script = workspace_dir().join("scripts/kafka/broker.sh");
    std::fs::create_dir_all(dir).expect("create the broker directory");
    // The watchdog first, so that the broker is stopped even if we die while it starts.
    let pid = std::process::id();
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; sleep 1; bash '{}' stop '{}'; rm -rf '{}/data'",
        script.display(),
        dir.display(),
        dir.display()
    );
    // Detached on purpose: it outlives this process, which never waits for it.
    #[allow(clippy::zombie_processes)]
    let _watchdog = Command::new("setsid")
        .args(["bash", "-c", &watchdog])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(dir.join("watchdog.log")).map(Stdio::from).unwrap_or(Stdio::null()))
        .spawn()
        .expect("spawn the broker watchdog (setsid bash)");
    let t0 = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg("start")
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/kafka/broker.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let addr = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
    if !out.status.success() || addr.is_empty() {
        panic!(
            "could not start the Kafka test broker with `bash {} start {} {}` ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            script.display(),
            dir.display(),
            extra.join(" "),
            out.status,
            stdout,
            stderr
        );
    }
    eprintln!("[harness] Kafka broker {addr} started in {:.1?} (state in {})", t0.elapsed(), dir.display());
    stdout
}

/// A second broker, for the security tests: a SASL_SSL listener (TLS with a certificate of a
/// test CA made here with `openssl`, SCRAM-SHA-256/512 users) next to its PLAINTEXT one.
/// Started once per test process, stopped by a watchdog when the process exits.
pub struct SecureBroker {
    /// The PLAINTEXT listener (for the test's own readers and writers).
    pub plaintext: String,
    /// The SASL_SSL listener.
    pub sasl_ssl: String,
    /// The test CA's certificate (PEM): what `ssl.ca.location` must name.
    pub ca: PathBuf,
    /// A SCRAM user and its password.
    pub user: String,
    pub password: String,
}

static SECURE_BROKER: OnceLock<SecureBroker> = OnceLock::new();

/// The process's [`SecureBroker`], started on first use.
pub fn secure_broker() -> &'static SecureBroker {
    SECURE_BROKER.get_or_init(|| {
        let dir = target_dir().join(format!("kafka-sasl-it-{}", std::process::id()));
        let tls = dir.join("tls");
        let ca = make_test_ca(&tls);
        let (user, password) = ("rtcrm-it".to_string(), format!("pw-{}", unique_suffix()));
        let server_pem = tls.join("server.pem");
        let scram = format!("{user}:{password}");
        let stdout = start_broker_in(&dir, &["--sasl-ssl", server_pem.to_str().unwrap(), "--scram-user", &scram]);
        let plaintext = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        let sasl_ssl = stdout
            .lines()
            .find_map(|l| l.strip_prefix("sasl_ssl "))
            .unwrap_or_else(|| panic!("broker.sh printed no `sasl_ssl ADDRESS` line:\n{stdout}"))
            .trim()
            .to_string();
        SecureBroker { plaintext, sasl_ssl, ca, user, password }
    })
}

impl SecureBroker {
    /// The librdkafka properties of a client of the SASL_SSL listener, with `password`.
    pub fn properties(&self, password: &str) -> Vec<(String, String)> {
        [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", self.user.as_str()),
            ("sasl.password", password),
            ("ssl.ca.location", self.ca.to_str().unwrap()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// `--kafka-property KEY=VALUE` flags for [`SecureBroker::properties`].
    pub fn flags(&self, password: &str) -> Vec<String> {
        self.properties(password).into_iter().flat_map(|(k, v)| ["--kafka-property".to_string(), format!("{k}={v}")]).collect()
    }
}

/// Makes a throw-away CA and a server certificate for 127.0.0.1 and localhost signed by it, with
/// `openssl`, in `dir`: `ca.pem` (returned) and `server.pem` (PKCS#8 key, then the certificate).
pub fn make_test_ca(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create the TLS directory");
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap_or_else(|e| {
            panic!("running openssl failed ({e}): the TLS tests need it (apt-get install openssl; scripts/setup.sh installs it)")
        });
        assert!(out.status.success(), "openssl {} failed:\n{}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    };
    run(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=rtcrm test CA"]);
    run(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]);
    std::fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    run(&[
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt", "-days", "2",
        "-extfile", "san.cnf",
    ]);
    let key = std::fs::read_to_string(dir.join("server.key")).unwrap();
    assert!(key.contains("BEGIN PRIVATE KEY"), "openssl wrote no PKCS#8 key: {}", key.lines().next().unwrap_or(""));
    let cert = std::fs::read_to_string(dir.join("server.crt")).unwrap();
    std::fs::write(dir.join("server.pem"), format!("{key}{cert}")).unwrap();
    dir.join("ca.pem")
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// A free TCP port on 127.0.0.1 (bound and released: a small race is possible).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// A minimal HTTP/1.1 GET: returns (status code, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, None)
}

/// A minimal HTTP/1.1 POST of a JSON body: returns (status code, body).
pub fn http_post(addr: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "POST", path, Some(body))
}

/// A minimal HTTP/1.1 request (`method` with an optional JSON body): returns (status code, body).
/// Waits up to 60 s for the answer.
pub fn http_request(addr: &str, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, String)> {
    let json = [("Content-Type", "application/json")];
    let headers: &[(&str, &str)] = if body.is_some() { &json } else { &[] };
    let (code, _, body) = http_exchange(addr, method, path, headers, body)?;
    Ok((code, body))
}

/// [`http_request`] with extra headers, returning the response's header block too.
pub fn http_exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<(u16, String, String)> {
    let sa = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("cannot resolve {addr}")))?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("accept")) {
        req.push_str("Accept: */*\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    let wrote = s.write_all(req.as_bytes());
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    if raw.is_empty() {
        wrote?;
        read?;
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of HTTP headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let status_line = head.lines().next().unwrap_or("");
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Ok((code, head, String::from_utf8_lossy(&body).to_string()))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size_txt = String::from_utf8_lossy(&b[..eol]).to_string();
        let size = usize::from_str_radix(size_txt.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        b = &b[eol + 2..];
        if size == 0 || b.len() < size {
            out.extend_from_slice(&b[..size.min(b.len())]);
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size..];
        if b.starts_with(b"\r\n") {
            b = &b[2..];
        }
    }
    out
}

/// Sum of every sample of metric `name` (any labels) in a Prometheus text exposition.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, rest) = match line.find('{') {
            Some(i) if line[..i].trim() == name => {
                let close = line.rfind('}')?;
                (&line[..i], &line[close + 1..])
            }
            _ => match line.split_once(char::is_whitespace) {
                Some((s, r)) => (s, r),
                None => continue,
            },
        };
        if series.trim() != name {
            continue;
        }
        if let Some(v) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

// ---------------------------------------------------------------------------------------------
// Processor
// ---------------------------------------------------------------------------------------------

static LOG_SEQ: AtomicU64 = AtomicU64::new(0);

/// The message of the latest panic (of any test thread), kept so that a failing test's reason
/// is printed again after the processors' log tails, at the end of its output.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Installs (once) a panic hook that records the message in [`LAST_PANIC`] and then prints it as
/// the default hook does.
fn record_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            *LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{}{at}", msg.lines().next().unwrap_or("")));
            default(info);
        }));
    });
}

/// How to start an `rtcrm` process; see [`Processor::start`] for the common case.
pub struct ProcessorBuilder {
    subcommand: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    bootstrap_flag: bool,
    /// The broker to use instead of the shared test broker.
    bootstrap: Option<String>,
    wait_ready: bool,
    ready_timeout: Duration,
    name: String,
}

impl ProcessorBuilder {
    pub fn new(subcommand: &str) -> Self {
        let name = std::thread::current().name().unwrap_or("test").replace("::", "-");
        ProcessorBuilder {
            subcommand: subcommand.to_string(),
            args: Vec::new(),
            envs: Vec::new(),
            bootstrap_flag: subcommand == "run",
            bootstrap: None,
            wait_ready: true,
            ready_timeout: Duration::from_secs(60),
            name,
        }
    }
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn args<I, S>(mut self, a: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }
    /// Do not pass `--bootstrap-servers` (e.g. to test that a config file sets it).
    pub fn no_bootstrap_flag(mut self) -> Self {
        self.bootstrap_flag = false;
        self
    }
    /// Run against the broker at `addr` (e.g. a [`faults::PrivateBroker`]) instead of the shared one.
    pub fn bootstrap(mut self, addr: &str) -> Self {
        self.bootstrap = Some(addr.to_owned());
        self
    }
    pub fn wait_ready(mut self, yes: bool) -> Self {
        self.wait_ready = yes;
        self
    }
    pub fn name(mut self, n: &str) -> Self {
        self.name = format!("{}-{}", self.name, n);
        self
    }

    pub fn start(self) -> Processor {
        record_panics();
        let bin = rtcrm_bin();
        let port = free_port();
        let http = format!("127.0.0.1:{port}");
        let seq = LOG_SEQ.fetch_add(1, Ordering::SeqCst);
        let log = log_dir().join(format!("{}-{}-{}.log", self.name, std::process::id(), seq));
        let log_file = File::create(&log).expect("create the processor log file");
        let mut cmd = Command::new(&bin);
        cmd.arg(&self.subcommand);
        if self.bootstrap_flag {
            cmd.arg("--bootstrap-servers").arg(self.bootstrap.clone().unwrap_or_else(broker));
        }
        cmd.arg("--http-addr").arg(&http);
        cmd.args(&self.args);
        // Leave the processor's own RTCRM_* environment to the test.
        for (k, _) in std::env::vars() {
            if k.starts_with("RTCRM_") && k != "RTCRM_LOG_FORMAT" {
                cmd.env_remove(&k);
            }
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd.env("NO_COLOR", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file.try_clone().unwrap()));
        let cmdline = format!("{} {:?}", bin.display(), cmd.get_args().collect::<Vec<_>>());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmdline}: {e}"));
        eprintln!("[harness] started {cmdline} (pid {}), log {}", child.id(), log.display());
        let stdout_lines = Arc::new(Mutex::new(Vec::<String>::new()));
        {
            let out = child.stdout.take().unwrap();
            let lines = stdout_lines.clone();
            let mut lf = log_file;
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let _ = writeln!(lf, "{line}");
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let mut p = Processor { child: Some(child), http, log, stdout_lines, cmdline };
        if self.wait_ready {
            p.wait_ready(self.ready_timeout);
        }
        p
    }
}

/// A running `rtcrm` process. Dropping it kills the process (and prints the tail of its log
/// when the test is failing).
pub struct Processor {
    child: Option<Child>,
    /// HTTP address (`127.0.0.1:PORT`).
    pub http: String,
    /// Log file (stdout and stderr).
    pub log: PathBuf,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    cmdline: String,
}

impl Processor {
    /// `rtcrm run --bootstrap-servers <broker> --http-addr 127.0.0.1:<free> <args>`, waiting for
    /// `/readyz` (60 s).
    pub fn start<S: AsRef<str>>(args: &[S]) -> Processor {
        ProcessorBuilder::new("run").args(args.iter().map(|s| s.as_ref().to_string())).start()
    }

    pub fn builder(subcommand: &str) -> ProcessorBuilder {
        ProcessorBuilder::new(subcommand)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The last `n` lines of the log file.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Lines the process printed on stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout_lines.lock().unwrap().clone()
    }

    fn fail(&self, msg: &str) -> ! {
        panic!(
            "{msg}\n  command: {}\n  log: {}\n--- last lines of the log ---\n{}",
            self.cmdline,
            self.log.display(),
            self.log_tail(60)
        )
    }

    /// The exit status, if the process has exited (it is then reaped).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        eprintln!("[harness] pid {} exited: {status}", self.pid());
        self.child = None;
        Some(status)
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// Panics if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            self.fail(&format!("the rtcrm process exited unexpectedly ({st})"));
        }
    }

    /// Waits until `GET /readyz` answers 200.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let t0 = Instant::now();
        let mut last;
        loop {
            self.assert_running();
            match http_get(&self.http, "/readyz") {
                Ok((200, _)) => {
                    eprintln!("[harness] pid {} ready after {:.1?}", self.pid(), t0.elapsed());
                    return;
                }
                Ok((code, body)) => last = format!("HTTP {code}: {}", body.trim()),
                Err(e) => last = format!("{e}"),
            }
            if t0.elapsed() > timeout {
                self.fail(&format!(
                    "rtcrm did not become ready within {timeout:?} (GET http://{}/readyz: {last})",
                    self.http
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// GET `path` on the processor's HTTP address.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.http, path)
            .unwrap_or_else(|e| self.fail(&format!("GET http://{}{path} failed: {e}", self.http)))
    }

    /// `method path` with an optional JSON body on the processor's HTTP address; the answer's
    /// status and body parsed as JSON (panics if the body is not JSON).
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (code, text) = http_request(&self.http, method, path, body)
            .unwrap_or_else(|e| self.fail(&format!("{method} http://{}{path} failed: {e}", self.http)));
        let value = serde_json::from_str(&text).unwrap_or_else(|e| self.fail(&format!("{method} {path} answered {code}, not JSON ({e}): {text}")));
        (code, value)
    }

    /// `GET /metrics` (panics unless 200).
    pub fn metrics(&self) -> String {
        let (code, body) = self.get("/metrics");
        if code != 200 {
            self.fail(&format!("GET /metrics answered {code}: {body}"));
        }
        body
    }

    /// Sum of the samples of metric `name`, if present.
    pub fn metric(&self, name: &str) -> Option<f64> {
        metric_value(&self.metrics(), name)
    }

    /// Waits until metric `name` is at least `min`; returns its value.
    pub fn wait_metric_at_least(&mut self, name: &str, min: f64, timeout: Duration) -> f64 {
        let t0 = Instant::now();
        loop {
            self.assert_running();
            let v = self.metric(name);
            if let Some(v) = v {
                if v >= min {
                    return v;
                }
            }
            if t0.elapsed() > timeout {
                self.fail(&format!(
                    "metric {name} did not reach {min} within {timeout:?} (last value {v:?})\n--- /metrics ---\n{}",
                    self.metrics()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sends SIGTERM and waits (up to 60 s) for the exit; returns the exit status.
    pub fn sigterm(&mut self) -> ExitStatus {
        self.signal_and_wait("TERM", Duration::from_secs(60))
    }

    /// Sends a signal (by name, e.g. "TERM", "INT") and waits for the exit.
    pub fn signal_and_wait(&mut self, sig: &str, timeout: Duration) -> ExitStatus {
        let pid = self.pid();
        let st = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
        if !matches!(st, Ok(s) if s.success()) {
            self.fail(&format!("kill -{sig} {pid} failed: {st:?}"));
        }
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                eprintln!("[harness] pid {pid} exited after SIG{sig} in {:.1?}: {st}", t0.elapsed());
                self.child = None;
                return st;
            }
            if t0.elapsed() > timeout {
                let _ = self.child.as_mut().unwrap().kill();
                self.fail(&format!("rtcrm (pid {pid}) did not exit within {timeout:?} after SIG{sig}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "[harness] log of `{}`: {}\n--- last lines ---\n{}",
                self.cmdline,
                self.log.display(),
                self.log_tail(25)
            );
            if let Some(reason) = LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()).as_deref() {
                eprintln!("[harness] the test failed: {reason}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

static NAME_SEQ: AtomicU64 = AtomicU64::new(0);

/// A short random suffix, unique within and across test processes.
pub fn unique_suffix() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut x = nanos
        ^ (std::process::id() as u64).rotate_left(32)
        ^ NAME_SEQ.fetch_add(1, Ordering::SeqCst).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!("{:012x}", splitmix64(&mut x) & 0xffff_ffff_ffff)
}

/// Unique topic names and consumer group for one test.
#[derive(Clone, Debug)]
pub struct Topics {
    pub events: String,
    pub campaigns: String,
    pub triggers: String,
    pub status: String,
    pub dlq: String,
    pub logs: String,
    pub group: String,
    /// The control topic rtcrm derives from the triggers topic (`<triggers>-control`).
    pub control: String,
    /// The internal topics rtcrm derives from the group (`<group>-rtcrm-...`).
    pub changelog: String,
    pub repartition: String,
    /// The per-player state directory of this test's processors.
    pub state_dir: PathBuf,
}

impl Topics {
    pub fn new(prefix: &str) -> Topics {
        let s = unique_suffix();
        Topics {
            events: format!("{prefix}-events-{s}"),
            campaigns: format!("{prefix}-campaigns-{s}"),
            triggers: format!("{prefix}-triggers-{s}"),
            status: format!("{prefix}-status-{s}"),
            dlq: format!("{prefix}-dlq-{s}"),
            logs: format!("{prefix}-logs-{s}"),
            group: format!("{prefix}-group-{s}"),
            control: format!("{prefix}-triggers-{s}-control"),
            changelog: format!("{prefix}-group-{s}-rtcrm-state-changelog"),
            repartition: format!("{prefix}-group-{s}-rtcrm-events-by-player"),
            state_dir: target_dir().join("rtcrm-it-state").join(format!("{prefix}-{s}")),
        }
    }

    /// `--group-id --event-topic --campaign-topic --trigger-topic --status-topic --dlq-topic
    /// --filter-log-topic --state-dir`.
    pub fn args(&self) -> Vec<String> {
        [
            ("--group-id", &self.group),
            ("--event-topic", &self.events),
            ("--campaign-topic", &self.campaigns),
            ("--trigger-topic", &self.triggers),
            ("--status-topic", &self.status),
            ("--dlq-topic", &self.dlq),
            ("--filter-log-topic", &self.logs),
            ("--state-dir", &self.state_dir.to_string_lossy().into_owned()),
        ]
        .iter()
        .flat_map(|(f, v)| [f.to_string(), v.to_string()])
        .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Kafka: producing
// ---------------------------------------------------------------------------------------------

/// One message to produce.
#[derive(Clone, Debug)]
pub struct Msg {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub partition: Option<i32>,
    /// The record timestamp (Unix milliseconds); None: the producer's clock.
    pub timestamp: Option<i64>,
}

impl Msg {
    pub fn keyless(payload: impl AsRef<[u8]>) -> Msg {
        Msg { key: None, payload: Some(payload.as_ref().to_vec()), partition: None, timestamp: None }
    }
    pub fn keyed(key: impl AsRef<[u8]>, payload: impl AsRef<[u8]>) -> Msg {
        Msg { key: Some(key.as_ref().to_vec()), payload: Some(payload.as_ref().to_vec()), partition: None, timestamp: None }
    }
    /// A key with a null value.
    pub fn tombstone(key: impl AsRef<[u8]>) -> Msg {
        Msg { key: Some(key.as_ref().to_vec()), payload: None, partition: None, timestamp: None }
    }
    /// This message with an explicit record timestamp (Unix milliseconds).
    pub fn at(mut self, timestamp_ms: i64) -> Msg {
        self.timestamp = Some(timestamp_ms);
        self
    }
}

/// Where a produced message landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

struct DeliveryCtx {
    results: Mutex<Vec<Option<Result<Delivered, String>>>>,
}

impl ClientContext for DeliveryCtx {}

impl ProducerContext for DeliveryCtx {
    type DeliveryOpaque = usize;
    fn delivery(&self, r: &DeliveryResult<'_>, idx: usize) {
        let res = match r {
            Ok(m) => Ok(Delivered { partition: m.partition(), offset: m.offset() }),
            Err((e, _)) => Err(e.to_string()),
        };
        let mut v = self.results.lock().unwrap();
        if idx < v.len() {
            v[idx] = Some(res);
        }
    }
}

/// Produces `msgs` to `topic` on the test broker and waits until every one is acknowledged.
pub fn produce(topic: &str, msgs: &[Msg]) -> Vec<Delivered> {
    produce_to(&broker(), topic, msgs)
}

/// Produces to the broker at `bootstrap`; panics if any message is not acknowledged.
pub fn produce_to(bootstrap: &str, topic: &str, msgs: &[Msg]) -> Vec<Delivered> {
    produce_with(bootstrap, topic, msgs, &[])
}

/// [`produce_to`] with extra librdkafka producer properties, such as
/// `("partitioner", "murmur2_random")` (Java's default partitioner: a keyed record lands where a
/// Java client would put it).
pub fn produce_with(bootstrap: &str, topic: &str, msgs: &[Msg], properties: &[(&str, &str)]) -> Vec<Delivered> {
    let ctx = DeliveryCtx { results: Mutex::new(vec![None; msgs.len()]) };
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "30000")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        // Campaigns with a WebAssembly module (a Go filter is ~4.4 MB in base64).
        .set("message.max.bytes", "16777216");
    for (k, v) in properties {
        config.set(*k, *v);
    }
    let producer: BaseProducer<DeliveryCtx> = config.create_with_context(ctx).expect("create a Kafka producer");
    for (i, m) in msgs.iter().enumerate() {
        loop {
            let mut rec: BaseRecord<'_, [u8], [u8], usize> = BaseRecord::with_opaque_to(topic, i);
            if let Some(k) = &m.key {
                rec = rec.key(k.as_slice());
            }
            if let Some(p) = &m.payload {
                rec = rec.payload(p.as_slice());
            }
            if let Some(part) = m.partition {
                rec = rec.partition(part);
            }
            if let Some(ts) = m.timestamp {
                rec = rec.timestamp(ts);
            }
            match producer.send(rec) {
                Ok(()) => break,
                Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => panic!("producing to {topic} failed: {e}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    if let Err(e) = producer.flush(Duration::from_secs(60)) {
        panic!("flushing the producer for {topic} failed: {e}");
    }
    let results = producer.context().results.lock().unwrap().clone();
    let mut out = Vec::with_capacity(results.len());
    let mut errors = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Some(Ok(d)) => out.push(d),
            Some(Err(e)) => {
                let hint = if msgs[i].key.is_none() && e.contains("InvalidRecord") {
                    " (a keyless message: a compacted topic (cleanup.policy=compact) rejects messages without a key)"
                } else {
                    ""
                };
                errors.push(format!("message {i}: {e}{hint}"))
            }
            None => errors.push(format!("message {i}: no delivery report")),
        }
    }
    if !errors.is_empty() {
        panic!(
            "{} of {} messages to topic {topic} were not delivered; first errors: {:?}",
            errors.len(),
            msgs.len(),
            &errors[..errors.len().min(5)]
        );
    }
    out
}

/// Produces one JSON value, keyless.
pub fn produce_json(topic: &str, v: &Value) -> Delivered {
    produce(topic, &[Msg::keyless(v.to_string())])[0]
}

/// Creates `topic` with `partitions` partitions (replication 1) and waits until its metadata shows them.
pub fn create_topic(topic: &str, partitions: i32) {
    create_topic_with(topic, partitions, &[]);
}

fn admin_client() -> (AdminClient<DefaultClientContext>, tokio::runtime::Runtime) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .create()
        .expect("create a Kafka admin client");
    (admin, tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap())
}

/// Sets topic-level configs of `topic` (e.g. `max.message.bytes`), replacing its other overrides.
pub fn alter_topic(topic: &str, configs: &[(&str, &str)]) {
    let (admin, rt) = admin_client();
    let mut alter = rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic(topic));
    for (k, v) in configs {
        alter = alter.set(k, v);
    }
    let res = rt
        .block_on(admin.alter_configs(&[alter], &AdminOptions::new().request_timeout(Some(Duration::from_secs(30)))))
        .unwrap_or_else(|e| panic!("AlterConfigs {topic}: {e}"));
    for r in res {
        if let Err((_, code)) = r {
            panic!("AlterConfigs {topic} {configs:?} failed: {code}");
        }
    }
}

/// Deletes `topic`.
pub fn delete_topic(topic: &str) {
    let (admin, rt) = admin_client();
    let res = rt
        .block_on(admin.delete_topics(&[topic], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))))
        .unwrap_or_else(|e| panic!("DeleteTopics {topic}: {e}"));
    for r in res {
        if let Err((t, code)) = r {
            panic!("DeleteTopics {t} failed: {code}");
        }
    }
}

/// [`create_topic`] with topic-level configs.
pub fn create_topic_with(topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let (admin, rt) = admin_client();
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        new = new.set(k, v);
    }
    let res = rt
        .block_on(admin.create_topics(
            &[new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))
        .unwrap_or_else(|e| panic!("CreateTopics {topic}: {e}"));
    for r in res {
        if let Err((t, code)) = r {
            panic!("CreateTopics {t} with {partitions} partitions failed: {code}");
        }
    }
    let n = wait_topic_partitions(&broker(), topic, Duration::from_secs(30));
    assert_eq!(n, partitions as usize, "topic {topic} has {n} partitions after creating it with {partitions}");
}

/// Waits until `topic` exists (with at least one partition); returns its partition count.
pub fn wait_topic_partitions(bootstrap: &str, topic: &str, timeout: Duration) -> usize {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("create a metadata client");
    let t0 = Instant::now();
    loop {
        let mut last = String::new();
        match c.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(md) => {
                if let Some(t) = md.topics().iter().find(|t| t.name() == topic) {
                    if t.error().is_none() && !t.partitions().is_empty() {
                        return t.partitions().len();
                    }
                    last = format!("{:?}", t.error());
                }
            }
            Err(e) => last = e.to_string(),
        }
        if t0.elapsed() > timeout {
            panic!("topic {topic} does not exist after {timeout:?} (last metadata answer: {last})");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The high watermark (the offset the next record will get) of every partition of `topic`.
pub fn high_watermarks(topic: &str) -> Vec<i64> {
    high_watermarks_on(&broker(), topic)
}

/// [`high_watermarks`] on the broker at `bootstrap`.
pub fn high_watermarks_on(bootstrap: &str, topic: &str) -> Vec<i64> {
    let n = wait_topic_partitions(bootstrap, topic, Duration::from_secs(30));
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("create a Kafka consumer");
    (0..n as i32)
        .map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}")).1)
        .collect()
}

/// Committed offsets of consumer group `group` for every partition of `topic` (None where the
/// group has committed nothing), read with an OffsetFetch (the group is not joined).
pub fn committed_offsets(group: &str, topic: &str) -> Vec<Option<i64>> {
    committed_offsets_on(&broker(), group, topic, "read_uncommitted").unwrap_or_else(|e| panic!("{e}"))
}

/// [`committed_offsets`] on the broker at `bootstrap`, asked as a consumer of `isolation`
/// (`read_committed` asks for stable offsets: the broker holds back offsets of an open
/// transaction); an error as text.
pub fn committed_offsets_on(bootstrap: &str, group: &str, topic: &str, isolation: &str) -> Result<Vec<Option<i64>>, String> {
    let n = wait_topic_partitions(bootstrap, topic, Duration::from_secs(30));
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("isolation.level", isolation)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("create a Kafka consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..n as i32 {
        tpl.add_partition(topic, p);
    }
    let res = c.committed_offsets(tpl, Duration::from_secs(10)).map_err(|e| format!("OffsetFetch for group {group} on {topic}: {e}"))?;
    Ok((0..n as i32)
        .map(|p| match res.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Kafka: consuming
// ---------------------------------------------------------------------------------------------

/// A consumed message.
#[derive(Clone, Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Record {
    pub fn key_str(&self) -> Option<String> {
        self.key.as_ref().map(|k| String::from_utf8_lossy(k).to_string())
    }
    pub fn payload_str(&self) -> Option<String> {
        self.payload.as_ref().map(|p| String::from_utf8_lossy(p).to_string())
    }
    /// The payload as JSON (panics with the payload if it is not).
    pub fn json(&self) -> Value {
        let p = self.payload.as_deref().unwrap_or(b"");
        serde_json::from_slice(p).unwrap_or_else(|e| {
            panic!("message at {}@{} is not JSON ({e}): {:?}", self.partition, self.offset, String::from_utf8_lossy(p))
        })
    }
    /// The first header named `name`, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref().map(|v| String::from_utf8_lossy(v).to_string()).unwrap_or_default())
    }
}

/// Reads every partition of one topic from the beginning (no group commits), accumulating records.
pub struct Reader {
    consumer: BaseConsumer,
    pub topic: String,
    pub records: Vec<Record>,
    cursor: usize,
    /// Per campaign id: the index after its last status matched by [`wait_status`].
    status_cursors: BTreeMap<i64, usize>,
    /// Consumer errors seen (the first few are printed, then one in a hundred, so that an outage
    /// does not push a failing test's message out of a shortened CI log).
    errors: u64,
}

impl Reader {
    /// A reader of `topic` on the test broker; waits (30 s) for the topic to exist.
    pub fn new(topic: &str) -> Reader {
        Reader::with_bootstrap(&broker(), topic)
    }

    pub fn with_bootstrap(bootstrap: &str, topic: &str) -> Reader {
        Reader::build(bootstrap, topic, "read_uncommitted")
    }

    /// A reader that sees only committed transactions (`isolation.level=read_committed`), as
    /// readers of an exactly-once processor's triggers must be.
    pub fn read_committed(topic: &str) -> Reader {
        Reader::build(&broker(), topic, "read_committed")
    }

    /// [`Reader::read_committed`] on the broker at `bootstrap`.
    pub fn read_committed_on(bootstrap: &str, topic: &str) -> Reader {
        Reader::build(bootstrap, topic, "read_committed")
    }

    fn build(bootstrap: &str, topic: &str, isolation: &str) -> Reader {
        let n = wait_topic_partitions(bootstrap, topic, Duration::from_secs(30));
        let consumer: BaseConsumer = ClientConfig::new()
            .set("isolation.level", isolation)
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("it-reader-{}", unique_suffix()))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("allow.auto.create.topics", "false")
            .set("fetch.wait.max.ms", "100")
            .create()
            .expect("create a Kafka consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..n as i32 {
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).expect("assign partitions");
        Reader { consumer, topic: topic.to_string(), records: Vec::new(), cursor: 0, status_cursors: BTreeMap::new(), errors: 0 }
    }

    /// Polls once (up to `timeout`); returns whether a record arrived.
    fn poll_one(&mut self, timeout: Duration) -> bool {
        match self.consumer.poll(timeout) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.map(|v| v.to_vec()))).collect())
                    .unwrap_or_default();
                self.records.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| k.to_vec()),
                    payload: m.payload().map(|p| p.to_vec()),
                    headers,
                });
                true
            }
            Some(Err(e)) => {
                self.errors += 1;
                if self.errors <= 3 || self.errors % 100 == 0 {
                    eprintln!("[harness] consumer error #{} on {}: {e}", self.errors, self.topic);
                }
                false
            }
            None => false,
        }
    }

    /// Reads whatever arrives during `dur`; returns how many records arrived.
    pub fn poll_for(&mut self, dur: Duration) -> usize {
        let before = self.records.len();
        let t0 = Instant::now();
        while t0.elapsed() < dur {
            self.poll_one(Duration::from_millis(100).min(dur.saturating_sub(t0.elapsed())).max(Duration::from_millis(1)));
        }
        self.records.len() - before
    }

    /// Reads until `done(records)` holds and then `idle` passes without a new record, or until
    /// `timeout` (whichever comes first). Returns whether `done` held at the end.
    pub fn read_until(&mut self, done: impl Fn(&[Record]) -> bool, idle: Duration, timeout: Duration) -> bool {
        let t0 = Instant::now();
        let mut last_change = Instant::now();
        let mut was_done = done(&self.records);
        loop {
            if self.poll_one(Duration::from_millis(100)) {
                last_change = Instant::now();
                // Drain quickly what is already there.
                while self.poll_one(Duration::ZERO) {}
                let d = done(&self.records);
                if d && !was_done {
                    last_change = Instant::now();
                }
                was_done = d;
            }
            if was_done && last_change.elapsed() >= idle {
                return true;
            }
            if t0.elapsed() >= timeout {
                return was_done;
            }
        }
    }

    /// Reads until `expected` records arrived and then `idle` passed, or `timeout`.
    pub fn read_count(&mut self, expected: usize, idle: Duration, timeout: Duration) -> &[Record] {
        self.read_until(|r| r.len() >= expected, idle, timeout);
        &self.records
    }

    /// Waits for the next record (after the previous match) that satisfies `pred`; panics after
    /// `timeout`, listing what arrived.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Record) -> bool) -> Record {
        let t0 = Instant::now();
        loop {
            while self.cursor < self.records.len() {
                let i = self.cursor;
                self.cursor += 1;
                if pred(&self.records[i]) {
                    return self.records[i].clone();
                }
            }
            if t0.elapsed() > timeout {
                let seen: Vec<String> = self
                    .records
                    .iter()
                    .map(|r| format!("key={:?} value={:?}", r.key_str(), r.payload_str()))
                    .collect();
                panic!("timed out after {timeout:?} waiting for {what} on topic {}; it holds:\n  {}", self.topic, seen.join("\n  "));
            }
            self.poll_one(Duration::from_millis(100));
        }
    }
}

/// Reads `topic` from the beginning until `expected` messages arrived and then `idle` passed
/// with nothing more (at most 90 s overall).
pub fn consume_all(topic: &str, expected: usize, idle: Duration) -> Vec<Record> {
    let mut r = Reader::new(topic);
    r.read_count(expected, idle, Duration::from_secs(90));
    r.records
}

/// Waits for a status message of `campaign_id` in `state`, later than the previous one of the
/// same campaign this function matched on `status` (statuses of different campaigns may come in
/// any order: a slow compilation does not hold back other campaigns).
pub fn wait_status(status: &mut Reader, campaign_id: i64, state: &str, timeout: Duration) -> Value {
    let is_match = |r: &Record| {
        let Some(p) = &r.payload else { return false };
        let Ok(v) = serde_json::from_slice::<Value>(p) else { return false };
        v["campaign_id"].as_i64() == Some(campaign_id) && v["state"].as_str() == Some(state)
    };
    let from = status.status_cursors.get(&campaign_id).copied().unwrap_or(0);
    let found = match status.records.iter().skip(from).position(is_match) {
        Some(i) => from + i,
        None => {
            status.cursor = status.cursor.max(status.records.len());
            status.wait_for(&format!("status {state:?} of campaign {campaign_id}"), timeout, is_match);
            status.cursor - 1
        }
    };
    status.status_cursors.insert(campaign_id, found + 1);
    let r = status.records[found].clone();
    let v = r.json();
    assert_eq!(
        r.key_str().as_deref(),
        Some(campaign_id.to_string().as_str()),
        "a status message's key must be the campaign id as text: {v}"
    );
    v
}

// ---------------------------------------------------------------------------------------------
// Triggers
// ---------------------------------------------------------------------------------------------

/// A parsed trigger message.
#[derive(Clone, Debug)]
pub struct Trigger {
    pub key: Option<String>,
    pub value: Value,
    pub campaign_id: i64,
    pub event_id: String,
}

/// Parses trigger records (panics on malformed ones, naming them).
pub fn parse_triggers(records: &[Record]) -> Vec<Trigger> {
    records
        .iter()
        .map(|r| {
            let v = r.json();
            let campaign_id = v["campaign"]["campaign_id"]
                .as_i64()
                .unwrap_or_else(|| panic!("trigger without campaign.campaign_id: {v}"));
            let event_id = match &v["event"]["event_id"] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            Trigger { key: r.key_str(), value: v, campaign_id, event_id }
        })
        .collect()
}

/// The (campaign id, event id) pairs of triggers, and how many were duplicates.
pub fn trigger_pairs(records: &[Record]) -> (BTreeSet<(i64, String)>, usize) {
    let mut set = BTreeSet::new();
    let mut dups = 0;
    for t in parse_triggers(records) {
        if !set.insert((t.campaign_id, t.event_id)) {
            dups += 1;
        }
    }
    (set, dups)
}

/// Whether the records' trigger pairs include every expected pair (cheap enough to call per poll).
pub fn covers(records: &[Record], expected: &BTreeSet<(i64, String)>) -> bool {
    if records.len() < expected.len() {
        return false;
    }
    let (got, _) = trigger_pairs(records);
    expected.is_subset(&got)
}

/// Compares the trigger pairs with the expected ones; returns a report of the difference (empty
/// when equal), with per-campaign counts.
pub fn diff_pairs(expected: &BTreeSet<(i64, String)>, got: &BTreeSet<(i64, String)>) -> String {
    let missing: Vec<_> = expected.difference(got).collect();
    let extra: Vec<_> = got.difference(expected).collect();
    if missing.is_empty() && extra.is_empty() {
        return String::new();
    }
    let mut per: BTreeMap<i64, (usize, usize, usize, usize)> = BTreeMap::new();
    for (c, _) in expected {
        per.entry(*c).or_default().0 += 1;
    }
    for (c, _) in got {
        per.entry(*c).or_default().1 += 1;
    }
    for (c, _) in &missing {
        per.entry(*c).or_default().2 += 1;
    }
    for (c, _) in &extra {
        per.entry(*c).or_default().3 += 1;
    }
    let mut s = format!(
        "expected {} (campaign, event) pairs, got {}: {} missing, {} unexpected\n",
        expected.len(),
        got.len(),
        missing.len(),
        extra.len()
    );
    for (c, (e, g, m, x)) in per {
        s += &format!("  campaign {c}: expected {e}, got {g}, missing {m}, unexpected {x}\n");
    }
    s += &format!("  first missing: {:?}\n", &missing[..missing.len().min(8)]);
    s += &format!("  first unexpected: {:?}\n", &extra[..extra.len().min(8)]);
    s
}

// ---------------------------------------------------------------------------------------------
// Utilities
// ---------------------------------------------------------------------------------------------

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small deterministic PRNG (SplitMix64), so every run produces the same events.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        splitmix64(&mut self.0)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
    /// Picks from `(item, weight)` pairs.
    pub fn weighted<T: Copy>(&mut self, items: &[(T, u64)]) -> T {
        let total: u64 = items.iter().map(|(_, w)| w).sum();
        let mut x = self.below(total);
        for (item, w) in items {
            if x < *w {
                return *item;
            }
            x -= w;
        }
        items[items.len() - 1].0
    }
    /// A random (version 4) UUID.
    pub fn uuid(&mut self) -> String {
        let (a, b) = (self.next_u64(), self.next_u64());
        let b = (b & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000; // variant 10
        let a = (a & 0xFFFF_FFFF_FFFF_0FFF) | 0x4000; // version 4
        format!("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", a >> 32, (a >> 16) & 0xFFFF, a & 0xFFFF, b >> 48, b & 0xFFFF_FFFF_FFFF)
    }
}

/// Formats epoch milliseconds as RFC 3339 with `frac` fraction digits (0, 1..=9; digits past
/// milliseconds are zeros; a lower precision truncates) at UTC offset `offset_min` (0 → `Z`).
pub fn fmt_rfc3339(ms: i64, frac: u32, offset_min: i32) -> String {
    let offset = chrono::FixedOffset::east_opt(offset_min * 60).expect("an offset within a day");
    let t = chrono::DateTime::from_timestamp_millis(ms).expect("a representable time").with_timezone(&offset);
    let mut out = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    if frac > 0 {
        let digits = format!("{:03}000000", t.timestamp_subsec_millis());
        out.push('.');
        out.push_str(&digits[..frac as usize]);
    }
    if offset_min == 0 {
        out.push('Z');
    } else {
        out += &t.format("%:z").to_string();
    }
    out
}

/// Parses RFC 3339 (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`) into epoch milliseconds
/// (fraction truncated to milliseconds).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis())
}

/// Epoch milliseconds of an RFC 3339 literal (panics if it is not one).
pub fn ts(s: &str) -> i64 {
    parse_rfc3339(s).unwrap_or_else(|| panic!("not an RFC 3339 timestamp: {s:?}"))
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Polls `f` every 100 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if t0.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The README's tracking event (game foe, event fight, player 12345, created 2023-11-20) with
/// `data.result` = `result` and the given `event_id`.
pub fn seed_event(event_id: &str, result: &str) -> Value {
    json!({"schema_version":"2023110110010101","event_id":event_id,"system_type":"game","system_name":"foe-backend","game":"foe","market":"de","player_id":12345,"event_type":"progress","event_name":"fight","event_scope":"user","created_at":"2023-11-20T11:00:00.00Z","received_at":"2023-11-20T11:00:02.00Z","hostname":"foe-backend-1.ig.com","context":{},"data":{"result":result}})
}

/// The README's campaign 4711, byte for byte.
pub const SEED_CAMPAIGN: &str = r#"{"campaign_id":4711,"enabled":true,"game":"foe","event_name":"fight","start_date":"2023-09-01T10:00:00.00Z","end_date":"2023-12-01T10:00:00.00Z","filter":"function(event) { return event.getData().get('result') === 'loss' }"}"#;

/// The README's event, byte for byte.
pub const SEED_EVENT: &str = r#"{"schema_version":"2023110110010101","event_id":"7a8d0614-4e8e-4464-b439-36e31441a040","system_type":"game","system_name":"foe-backend","game":"foe","market":"de","player_id":12345,"event_type":"progress","event_name":"fight","event_scope":"user","created_at":"2023-11-20T11:00:00.00Z","received_at":"2023-11-20T11:00:02.00Z","hostname":"foe-backend-1.ig.com","context":{},"data":{"result":"loss"}}"#;

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let ms = ts("2023-11-20T11:00:00.00Z");
        assert_eq!(ms, 1_700_478_000_000);
        assert_eq!(ts("2023-11-20T12:00:00+01:00"), ms);
        assert_eq!(ts("2023-11-20T06:00:00.000000-05:00"), ms);
        for (frac, off) in [(0, 0), (2, 60), (3, -300), (6, 120)] {
            let t = ms + if frac == 0 { 0 } else { 120 };
            let s = fmt_rfc3339(t, frac, off);
            assert_eq!(ts(&s), if frac >= 2 { t } else { ms }, "{s}");
        }
        assert_eq!(fmt_rfc3339(ms, 2, 0), "2023-11-20T11:00:00.00Z");
    }

    #[test]
    fn metrics_parse() {
        let t = "# HELP x\nrtcrm_events_total 5\nrtcrm_events_total_x 9\nrtcrm_assigned_partitions{topic=\"a b\"} 2\nrtcrm_assigned_partitions{topic=\"c\"} 1\n";
        assert_eq!(metric_value(t, "rtcrm_events_total"), Some(5.0));
        assert_eq!(metric_value(t, "rtcrm_assigned_partitions"), Some(3.0));
        assert_eq!(metric_value(t, "nope"), None);
    }

    #[test]
    fn dechunk_works() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
    }
}
