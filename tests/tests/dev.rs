//! `rtcrm dev`: one command starts the embedded broker and the processor with campaign 4711, and
//! prints commands to paste. Every printed command is run here exactly as printed, through
//! `bash -c`, and must give what it promises: the campaign replaced (its filter intact, quotes
//! included), the trigger on `kcat -C`, and the same through curl and the HTTP API. Then the
//! embedded broker's limits (issue 11, item 7): printed in the banner, and a record over them is
//! refused where it is produced (kcat, the HTTP API, `rtcrm campaign put`), with nothing lost.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rtcrm_integration_tests::*;

const WAIT: Duration = Duration::from_secs(30);

fn need(tool: &str) {
    let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    assert!(found, "`{tool}` is not installed: this test runs the commands rtcrm dev prints (apt-get install {tool}; scripts/setup-dev.sh installs it)");
}

/// Runs `command` through `bash -c` and waits for it; returns (exit code, stdout, stderr).
fn bash(command: &str) -> (Option<i32>, String, String) {
    let out = Command::new("bash").args(["-c", command]).stdin(Stdio::null()).output().expect("bash runs");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Starts `command` through `bash -c`; its stdout lines arrive on the receiver.
fn bash_spawn(command: &str) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new("bash")
        .args(["-c", &format!("exec {command}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("bash runs");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits for a line that satisfies `hit`; returns every line seen on failure.
fn wait_line(rx: &mpsc::Receiver<String>, what: &str, hit: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if hit(&line) => return,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("{what}: not within {WAIT:?}; the command printed {seen:?}");
}

fn is_seed_trigger(json: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(json).is_ok_and(|v| v["campaign"]["campaign_id"] == 4711 && v["event"]["player_id"] == 12345)
}

/// How many status messages campaign 4711 has had.
fn statuses_of_4711(status: &mut Reader) -> usize {
    status.poll_for(Duration::from_millis(300));
    status.records.iter().filter(|r| r.key_str().as_deref() == Some("4711")).count()
}

fn wait_statuses(status: &mut Reader, n: usize) {
    let deadline = Instant::now() + WAIT;
    while statuses_of_4711(status) < n {
        assert!(Instant::now() < deadline, "campaign 4711 has {} status messages, not {n}", statuses_of_4711(status));
    }
}

#[test]
fn every_command_rtcrm_dev_prints_works_pasted_into_bash() {
    need("kcat");
    need("curl");
    let mut dev = Processor::builder("dev").wait_ready(false).start();
    let t0 = Instant::now();
    let bootstrap = loop {
        dev.assert_running();
        let found = dev.stdout_lines().iter().find_map(|l| l.strip_prefix("bootstrap: ").map(|b| b.trim().to_string()));
        if let Some(b) = found {
            break b;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "rtcrm dev printed no `bootstrap: ADDRESS` line; stdout: {:?}", dev.stdout_lines());
        std::thread::sleep(Duration::from_millis(100));
    };
    dev.wait_ready(Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let banner = dev.stdout_lines();
    let command = |prefix: &str, contains: &str| -> String {
        banner
            .iter()
            .find(|l| l.starts_with(prefix) && l.contains(contains))
            .unwrap_or_else(|| panic!("rtcrm dev printed no `{prefix}…{contains}…` command:\n{}", banner.join("\n")))
            .clone()
    };
    let put_campaign = command("echo ", "-t crm-campaigns -P");
    let send_event = command("echo ", "-t events-valid -P");
    let consume = command("kcat ", "-t crm-triggers -C");
    let curl_campaign = command("curl ", "/api/campaigns");
    let curl_event = command("curl ", "/api/events");
    let curl_stream = command("curl ", "/api/triggers/stream");
    assert!(put_campaign.contains(&format!("kcat -b {bootstrap} ")), "{put_campaign}");

    let mut status = Reader::with_bootstrap(&bootstrap, "crm-campaign-status");
    wait_statuses(&mut status, 1); // the campaign rtcrm dev loads
    let example: serde_json::Value = serde_json::from_str(SEED_CAMPAIGN).unwrap();

    // 1. The campaign, pasted: applied with its filter exactly as in examples/ (quotes intact).
    let (code, _, err) = bash(&put_campaign);
    assert_eq!(code, Some(0), "{put_campaign}\n{err}");
    wait_statuses(&mut status, 2);
    let (_, view) = dev.get("/api/campaigns/4711");
    let view: serde_json::Value = serde_json::from_str(&view).unwrap();
    assert_eq!(view["state"], "active", "{view}");
    assert_eq!(view["campaign"]["filter"], example["filter"], "the pasted campaign's filter");

    // 2. The event; 3. the triggers, as printed.
    let (code, _, err) = bash(&send_event);
    assert_eq!(code, Some(0), "{send_event}\n{err}");
    let (mut kcat, lines) = bash_spawn(&consume);
    wait_line(&lines, &format!("`{consume}` prints the trigger of campaign 4711"), is_seed_trigger);
    let _ = kcat.kill();
    let _ = kcat.wait();

    // The curl twins: the stream first (it shows triggers from its start on), then campaign and event.
    let (mut stream, sse) = bash_spawn(&curl_stream);
    std::thread::sleep(Duration::from_millis(500));
    let (code, out, err) = bash(&curl_campaign);
    assert_eq!(code, Some(0), "{curl_campaign}\n{err}");
    assert!(out.contains("\"ok\":true"), "{curl_campaign}\n{out}");
    wait_statuses(&mut status, 3);
    let (_, view) = dev.get("/api/campaigns/4711");
    let view: serde_json::Value = serde_json::from_str(&view).unwrap();
    assert_eq!(view["campaign"]["filter"], example["filter"], "the campaign curl sent");
    let (code, out, err) = bash(&curl_event);
    assert_eq!(code, Some(0), "{curl_event}\n{err}");
    assert!(out.contains("\"ok\":true"), "{curl_event}\n{out}");
    // A live trigger (`data:` of the default event type; replayed ones come as `event: recent`).
    let mut last_event_type = String::new();
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.checked_duration_since(Instant::now()).unwrap_or_else(|| panic!("no live trigger on `{curl_stream}`: {seen:?}"));
        let line = sse.recv_timeout(left).unwrap_or_else(|_| panic!("no live trigger on `{curl_stream}`: {seen:?}"));
        if let Some(t) = line.strip_prefix("event:") {
            last_event_type = t.trim().to_string();
        } else if let Some(data) = line.strip_prefix("data:") {
            if last_event_type.is_empty() && is_seed_trigger(data.trim()) {
                break;
            }
        } else if line.is_empty() {
            last_event_type.clear();
        }
        seen.push(line);
    }
    let _ = stream.kill();
    let _ = stream.wait();

    embedded_limits(&mut dev, &bootstrap, &banner.join("\n"), &mut status);
    let st = dev.sigterm();
    assert!(st.success(), "rtcrm dev must exit 0 on SIGTERM, got {st}");
}

/// Issue 11, item 7: the limits are in the banner; over them, each way in refuses, and nothing
/// that was in the broker is lost.
fn embedded_limits(dev: &mut Processor, bootstrap: &str, banner: &str, status: &mut Reader) {
    assert!(
        banner.contains("an event up to 1000000 bytes") && banner.contains("a campaign up to 5000000 bytes") && banner.contains("latest 5 MiB"),
        "the banner names the embedded broker's limits:\n{banner}"
    );
    let events_before = dev.metric("rtcrm_events_total").unwrap_or(0.0);

    // kcat, as printed (a line on stdin), refuses a record over 1,000,000 bytes itself; so does
    // kcat with the record as a file argument.
    let mut big: serde_json::Value = serde_json::from_str(SEED_EVENT).unwrap();
    big["pad"] = "x".repeat(1_200_000).into();
    let file = target_dir().join(format!("dev-big-event-{}.json", unique_suffix()));
    std::fs::write(&file, big.to_string()).unwrap();
    let (code, _, err) = bash(&format!("kcat -b {bootstrap} -t events-valid -P < {}", file.display()));
    assert_eq!(code, Some(1), "kcat must refuse a 1.2 MB event: {err}");
    assert!(err.contains("Input is too large, maximum size is 1000001"), "{err}");
    let (code, _, err) = bash(&format!("kcat -b {bootstrap} -t events-valid -P {}", file.display()));
    assert_eq!(code, Some(1), "kcat must refuse a 1.2 MB event: {err}");
    assert!(err.contains("Message size too large"), "{err}");

    // The HTTP API refuses over 256 KiB.
    let mut api: serde_json::Value = serde_json::from_str(SEED_EVENT).unwrap();
    api["pad"] = "x".repeat(300_000).into();
    let (code, body) = http_post(&dev.http, "/api/events", &api.to_string()).unwrap();
    assert_eq!(code, 413, "{body}");

    // rtcrm campaign put refuses a campaign over 5,000,000 bytes on the embedded broker.
    let mut campaign: serde_json::Value = serde_json::from_str(SEED_CAMPAIGN).unwrap();
    campaign["pad"] = "x".repeat(5_100_000).into();
    let file = target_dir().join(format!("dev-big-campaign-{}.json", unique_suffix()));
    std::fs::write(&file, campaign.to_string()).unwrap();
    let before = statuses_of_4711(status);
    let out = Command::new(rtcrm_bin())
        .args(["campaign", "put", file.to_str().unwrap(), "--bootstrap-servers", bootstrap])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("over the 5000000 bytes a campaign may have on rtcrm dev's embedded broker") && err.contains("nothing was published"), "{err}");

    // Nothing lost: the event topic still holds every event sent before (offset 0 on), the
    // campaign is in force, and no status came for the refused campaign.
    let mut events = Reader::with_bootstrap(bootstrap, "events-valid");
    let held = events.read_count(events_before as usize, Duration::from_secs(2), WAIT).len();
    assert_eq!(held, events_before as usize, "the embedded broker dropped events");
    assert_eq!(events.records.first().map(|r| r.offset), Some(0), "the events topic starts at offset 0");
    assert_eq!(statuses_of_4711(status), before);
    let (_, view) = dev.get("/api/campaigns/4711");
    assert!(view.contains("\"state\":\"active\""), "{view}");
}
