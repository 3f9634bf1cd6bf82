//! Spec §14: an unreachable cluster is reported within 10 s, naming the address and librdkafka's
//! error, by `rtcrm run` (which serves `/healthz` from its start, answering 503 with the reason
//! meanwhile) and by each `rtcrm campaign` subcommand. Two kinds of unreachable: a refused port,
//! and a port that accepts connections but never answers (a blackhole), where only the timeout
//! can tell.

use rtcrm_integration_tests::*;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(10);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A loopback address where nothing listens.
fn refused() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[test]
fn run_reports_a_refused_cluster_within_10_s_and_serves_healthz_meanwhile() {
    let addr = refused();
    let http = format!("127.0.0.1:{}", free_port());
    let log = log_dir().join(format!("unreachable-run-{}.log", unique_suffix()));
    let t0 = Instant::now();
    let mut child = Command::new(rtcrm_bin())
        .args(["run", "--bootstrap-servers", &addr, "--http-addr", &http])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("rtcrm runs");
    let mut healthz = None;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if healthz.is_none() {
            if let Ok((code, body)) = http_get(&http, "/healthz") {
                healthz = Some((code, body));
            }
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("rtcrm run against {addr} did not exit within 30 s; log {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = t0.elapsed();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(took < LIMIT, "rtcrm run took {took:?} to report {addr} unreachable");
    let (code, body) = healthz.unwrap_or_else(|| panic!("/healthz never answered while rtcrm run waited for {addr}"));
    assert_eq!(code, 503, "{body}");
    assert_eq!(body.trim(), format!("unhealthy: connecting to the Kafka cluster at {addr}"));
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with(&format!("error: the Kafka cluster at {addr} does not answer")), "{last}");
    assert!(last.contains(&format!("Connect to ipv4#{addr} failed: Connection refused")), "{last}");
}

#[test]
fn each_campaign_command_reports_a_refused_cluster_within_10_s() {
    let addr = refused();
    let campaign = workspace_dir().join("examples/campaigns/campaign-4711.json");
    let commands: [&[&str]; 5] =
        [&["put", campaign.to_str().unwrap()], &["put", campaign.to_str().unwrap(), "--no-wait"], &["delete", "4711"], &["list"], &["logs", "4711"]];
    // All at once (each waits for the timeout; the bound holds for each).
    let t0 = Instant::now();
    let children: Vec<_> = commands
        .iter()
        .map(|args| {
            let child = Command::new(rtcrm_bin())
                .arg("campaign")
                .args(*args)
                .args(["--bootstrap-servers", &addr])
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("rtcrm runs");
            (args, child)
        })
        .collect();
    for (args, child) in children {
        let out = child.wait_with_output().unwrap();
        let took = t0.elapsed();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "campaign {args:?}: {stderr}");
        assert!(took < LIMIT, "campaign {args:?} took {took:?}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with(&format!("error: the Kafka cluster at {addr} does not answer")), "campaign {args:?}: {last}");
        assert!(last.contains("Connection refused"), "campaign {args:?}: {last}");
        assert!(text(&out.stdout).is_empty(), "campaign {args:?} printed {:?}", text(&out.stdout));
    }
}

#[test]
fn a_silent_cluster_is_reported_within_10_s_too() {
    // Accepts TCP connections (the kernel's backlog) and never answers a Kafka request.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let t0 = Instant::now();
    let out = Command::new(rtcrm_bin())
        .args(["campaign", "list", "--bootstrap-servers", &addr])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("rtcrm runs");
    let took = t0.elapsed();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(took < LIMIT, "took {took:?}");
    assert!(stderr.lines().last().unwrap_or_default().starts_with(&format!("error: the Kafka cluster at {addr} does not answer")), "{stderr}");
    drop(silent);
}
