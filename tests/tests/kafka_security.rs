//! Spec §14 on a real broker with SASL/SCRAM over TLS (a CA made by the test, see
//! `harness::secure_broker`): every Kafka client of `rtcrm run` (campaigns reader, events
//! consumer, trigger producer, status and API producer, the console's trigger stream) and of
//! `rtcrm campaign` connects with the operator's librdkafka properties, given three ways (the
//! config file's `[kafka]`, `RTCRM_KAFKA_*`, `--kafka-property`); the password never shows in the
//! log or `/api/info`; and a wrong password or a missing CA fails within 10 s, with the reason.

use rtcrm_integration_tests::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `rtcrm campaign ARGS` against the SASL_SSL listener with `props` as flags.
fn campaign_cli(t: &Topics, args: &[&str], props: &[String]) -> (Output, Duration) {
    let b = secure_broker();
    let t0 = Instant::now();
    let out = Command::new(rtcrm_bin())
        .arg("campaign")
        .args(args)
        .args(["--bootstrap-servers", &b.sasl_ssl, "--campaign-topic", &t.campaigns, "--status-topic", &t.status])
        .args(["--filter-log-topic", &t.logs])
        .args(props)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("rtcrm runs");
    (out, t0.elapsed())
}

/// Opens `GET /api/triggers/stream` and returns a reader positioned after the response headers.
fn open_stream(http: &str) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(http).expect("connect to the HTTP server");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "GET /api/triggers/stream HTTP/1.1\r\nHost: {http}\r\nAccept: text/event-stream\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains(" 200 "), "the trigger stream answered {line:?}");
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            return r;
        }
    }
}

#[test]
fn sasl_scram_over_tls_campaign_event_trigger() {
    let b = secure_broker();
    let t = Topics::new("sasl");
    // The three ways of spec §14 at once: the file's [kafka] table, RTCRM_KAFKA_* and a flag.
    let config = target_dir().join(format!("sasl-{}.toml", unique_suffix()));
    std::fs::write(
        &config,
        format!("[kafka]\n\"security.protocol\" = \"SASL_SSL\"\n\"ssl.ca.location\" = \"{}\"\n", b.ca.display()),
    )
    .unwrap();
    let mut p = Processor::builder("run")
        .no_bootstrap_flag()
        .args(["--bootstrap-servers", &b.sasl_ssl, "--config", config.to_str().unwrap()])
        .args(t.args())
        .args(["--kafka-property", "sasl.mechanisms=SCRAM-SHA-512"])
        .env("RTCRM_KAFKA_SASL_USERNAME", &b.user)
        .env("RTCRM_KAFKA_SASL_PASSWORD", &b.password)
        .start();

    // The campaign, through `rtcrm campaign put` with flags only; it waits for the verdict.
    let campaign = workspace_dir().join("examples/campaigns/campaign-4711.json");
    let (out, _) = campaign_cli(&t, &["put", campaign.to_str().unwrap()], &b.flags(&b.password));
    assert_eq!(out.status.code(), Some(0), "campaign put over SASL_SSL:\n{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("campaign 4711 active"), "{}", text(&out.stdout));

    // The console's trigger stream (its own consumer) and an event through the HTTP API (the
    // processor's API producer): both over SASL_SSL, as the processor knows no other address.
    let mut stream = open_stream(&p.http);
    let (code, body) = http_post(&p.http, "/api/events", SEED_EVENT).unwrap();
    assert_eq!(code, 202, "POST /api/events: {body}");

    let mut triggers = Reader::with_bootstrap(&b.plaintext, &t.triggers);
    let rec = triggers.wait_for("the trigger of campaign 4711", WAIT, |r| r.json()["campaign"]["campaign_id"] == 4711);
    assert_eq!(rec.key_str().as_deref(), Some("12345"));
    let t0 = Instant::now();
    let mut line = String::new();
    loop {
        line.clear();
        stream.read_line(&mut line).expect("read the trigger stream");
        if line.starts_with("data:") && line.contains("\"campaign_id\":4711") {
            break;
        }
        assert!(t0.elapsed() < WAIT, "no trigger on /api/triggers/stream");
    }

    let (out, _) = campaign_cli(&t, &["list"], &b.flags(&b.password));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert!(listing.lines().any(|l| l.trim_start().starts_with("4711") && l.contains("active")), "{listing}");

    // Secrets: redacted in /api/info, absent from the log.
    let (_, info) = p.get("/api/info");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["kafka_properties"]["sasl.password"], "***", "{info}");
    assert_eq!(info["kafka_properties"]["sasl.username"], b.user.as_str(), "{info}");
    assert_eq!(p.sigterm().code(), Some(0));
    let log = std::fs::read_to_string(&p.log).unwrap();
    assert!(log.contains("sasl.password"), "the start line lists the properties:\n{}", p.log_tail(20));
    assert!(!log.contains(&b.password), "the password is in the log {}", p.log.display());
}

#[test]
fn a_wrong_password_fails_within_10_s_naming_the_reason() {
    let b = secure_broker();
    let t = Topics::new("sasl-bad");
    let wrong = b.flags("not-the-password");

    // `rtcrm run`: exits non-zero, the reason on stderr.
    let log = log_dir().join(format!("sasl-wrong-password-{}.log", unique_suffix()));
    let t0 = Instant::now();
    let out = Command::new(rtcrm_bin())
        .args(["run", "--bootstrap-servers", &b.sasl_ssl, "--http-addr", &format!("127.0.0.1:{}", free_port())])
        .args(t.args())
        .args(&wrong)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("rtcrm runs");
    let took = t0.elapsed();
    std::fs::write(&log, &out.stderr).unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "rtcrm run with a wrong password: {stderr}");
    assert!(took < Duration::from_secs(10), "rtcrm run took {took:?} to fail");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with(&format!("error: the Kafka cluster at {} does not answer", b.sasl_ssl)), "{last}");
    assert!(last.contains("SASL authentication error") && last.contains("invalid credentials"), "{last}");
    assert!(!stderr.contains("not-the-password"), "the password is on stderr: {stderr}");

    // Each campaign command.
    let campaign = workspace_dir().join("examples/campaigns/campaign-4711.json");
    let commands: [&[&str]; 4] = [&["put", campaign.to_str().unwrap()], &["delete", "4711"], &["list"], &["logs", "4711"]];
    for args in commands {
        let (out, took) = campaign_cli(&t, args, &wrong);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "campaign {args:?}: {stderr}");
        assert!(took < Duration::from_secs(10), "campaign {args:?} took {took:?} to fail");
        assert!(stderr.contains("SASL authentication error") && stderr.contains(&b.sasl_ssl), "campaign {args:?}: {stderr}");
        assert!(!stderr.contains("not-the-password"), "campaign {args:?} printed the password: {stderr}");
    }
}

#[test]
fn without_the_ca_the_tls_handshake_fails_within_10_s_naming_the_reason() {
    let b = secure_broker();
    let t = Topics::new("sasl-noca");
    let no_ca: Vec<String> = b
        .properties(&b.password)
        .into_iter()
        .filter(|(k, _)| k != "ssl.ca.location")
        .flat_map(|(k, v)| ["--kafka-property".to_string(), format!("{k}={v}")])
        .collect();
    let (out, took) = campaign_cli(&t, &["list"], &no_ca);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(stderr.contains("SSL handshake failed") && stderr.contains("certificate verify failed"), "{stderr}");
}
