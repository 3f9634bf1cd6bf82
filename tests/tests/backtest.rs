//! `rtcrm campaign backtest` (spec §13, issue 9) against a real broker: on 100,000 events over a
//! 4-partition topic the report equals a native computation (matches, candidates, skips, unique
//! players, per-day buckets) and nothing is produced; `--from`/`--to` select exactly the records
//! in the interval by record timestamp; `--events FILE` gives the topic's result; and every
//! fault (garbage campaign files, bad or empty intervals, a filter that throws on every event,
//! a missing topic, an unreachable broker) is reported exactly.

use rtcrm_integration_tests::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const EVENTS: usize = 100_000;
/// Record timestamps: one second apart from here, in production order.
const RECORDS_FROM: &str = "2024-03-01T00:00:00Z";
/// The campaign: losses at level 20 or more, created in its window (8 days of the events' 12).
const CAMPAIGN: &str = r#"{"campaign_id":9001,"enabled":true,"game":"foe","event_name":"fight","start_date":"2023-11-12T00:00:00Z","end_date":"2023-11-20T00:00:00Z","filter":"e => e.data.result === 'loss' && e.data.level >= 20","team":"crm"}"#;

/// One event as produced, with what the native computation reads.
struct Ev {
    json: String,
    event_id: String,
    player: u64,
    game: &'static str,
    name: &'static str,
    created_ms: i64,
    record_ms: i64,
    loss: bool,
    level: i64,
    /// Not a JSON object: no campaign can see it.
    garbage: bool,
}

/// What spec §4 decides for [`CAMPAIGN`], computed in Rust.
#[derive(Debug, Default, PartialEq, Eq)]
struct Native {
    events: u64,
    not_events: u64,
    other_game: u64,
    other_event_name: u64,
    before_start: u64,
    after_end: u64,
    candidates: u64,
    matches: u64,
    players: usize,
    /// Day (UTC, `YYYY-MM-DD`) → triggers.
    per_day: BTreeMap<String, u64>,
}

fn native<'a>(events: impl Iterator<Item = &'a Ev>) -> Native {
    let (start, end) = (ts("2023-11-12T00:00:00Z"), ts("2023-11-20T00:00:00Z"));
    let mut n = Native::default();
    let mut players = BTreeSet::new();
    for e in events {
        n.events += 1;
        if e.garbage {
            n.not_events += 1;
        } else if e.game != "foe" {
            n.other_game += 1;
        } else if e.name != "fight" {
            n.other_event_name += 1;
        } else if e.created_ms <= start {
            n.before_start += 1;
        } else if e.created_ms >= end {
            n.after_end += 1;
        } else {
            n.candidates += 1;
            if e.loss && e.level >= 20 {
                n.matches += 1;
                players.insert(e.player);
                *n.per_day.entry(fmt_rfc3339(e.created_ms, 0, 0)[..10].to_owned()).or_default() += 1;
            }
        }
    }
    n.players = players.len();
    n
}

/// The same computation read from a backtest report.
fn reported(r: &Value) -> Native {
    let skipped = &r["skipped"];
    let per_day = r["histogram"]["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["triggers"].as_u64().unwrap() > 0)
        .map(|b| (b["start"].as_str().unwrap()[..10].to_owned(), b["triggers"].as_u64().unwrap()))
        .collect();
    Native {
        events: r["events_read"].as_u64().unwrap(),
        not_events: r["not_events"].as_u64().unwrap(),
        other_game: skipped["other_game"].as_u64().unwrap(),
        other_event_name: skipped["other_event_name"].as_u64().unwrap(),
        before_start: skipped["before_start"].as_u64().unwrap(),
        after_end: skipped["after_end"].as_u64().unwrap(),
        candidates: r["candidates"].as_u64().unwrap(),
        matches: r["filter_matches"].as_u64().unwrap(),
        players: r["unique_players"].as_u64().unwrap() as usize,
        per_day,
    }
}

fn workload() -> Vec<Ev> {
    let mut rng = Rng::new(9001);
    let created_from = ts("2023-11-10T00:00:00Z");
    let records_from = ts(RECORDS_FROM);
    (0..EVENTS)
        .map(|i| {
            let event_id = rng.uuid();
            let player = rng.range(1, 20_000) as u64;
            let game = rng.weighted(&[("foe", 90), ("elvenar", 10)]);
            let name = rng.weighted(&[("fight", 85), ("login", 15)]);
            let created_ms = created_from + rng.below(12 * 86_400_000) as i64;
            let loss = rng.chance(0.55);
            let level = rng.range(1, 80);
            let garbage = i % 997 == 500;
            let json = if garbage {
                format!("[\"not an event\", {i}]")
            } else {
                json!({
                    "event_id": event_id, "game": game, "event_name": name, "player_id": player, "market": "de",
                    "created_at": fmt_rfc3339(created_ms, 3, 0), "received_at": fmt_rfc3339(created_ms + 2000, 3, 0),
                    "data": {"result": if loss { "loss" } else { "win" }, "level": level},
                })
                .to_string()
            };
            Ev { json, event_id, player, game, name, created_ms, record_ms: records_from + i as i64 * 1000, loss, level, garbage }
        })
        .collect()
}

/// The 100,000 events on a 4-partition topic (keyed by player, explicit record timestamps),
/// loaded once for every test of this file, and an empty triggers topic.
struct Loaded {
    topics: Topics,
    events: Vec<Ev>,
    campaign: PathBuf,
}

fn loaded() -> &'static Loaded {
    static LOADED: OnceLock<Loaded> = OnceLock::new();
    LOADED.get_or_init(|| {
        let topics = Topics::new("backtest");
        create_topic(&topics.events, 4);
        create_topic(&topics.triggers, 1);
        let events = workload();
        let t0 = Instant::now();
        let msgs: Vec<Msg> = events.iter().map(|e| Msg::keyed(e.player.to_string(), &e.json).at(e.record_ms)).collect();
        let delivered = produce(&topics.events, &msgs);
        let partitions: BTreeSet<i32> = delivered.iter().map(|d| d.partition).collect();
        assert_eq!(partitions.len(), 4, "the events spread over the 4 partitions");
        eprintln!("[backtest] {EVENTS} events produced in {:.1?}", t0.elapsed());
        Loaded { campaign: write_file("campaign.json", CAMPAIGN), topics, events }
    })
}

fn write_file(name: &str, text: &str) -> PathBuf {
    let path = target_dir().join(format!("backtest-{}-{name}", unique_suffix()));
    std::fs::write(&path, text).unwrap();
    path
}

fn backtest(args: &[&str]) -> Output {
    Command::new(rtcrm_bin()).args(["campaign", "backtest"]).args(args).env("NO_COLOR", "1").output().expect("rtcrm runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A successful `--json` backtest's report. One at a time: the tests of this file run in
/// parallel on 2 cores, and the sandbox's deadline (a wall-clock backstop behind fuel, see
/// host/sandbox/src/limits.rs) could fail a healthy filter on a thread descheduled for 100 ms.
fn report(args: &[&str]) -> Value {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let t0 = Instant::now();
    let out = backtest(args);
    assert_eq!(out.status.code(), Some(0), "backtest {args:?}: {}", text(&out.stderr));
    eprintln!("[backtest] {args:?} in {:.1?}", t0.elapsed());
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)))
}

fn topic_args<'a>(l: &'a Loaded, bootstrap: &'a str) -> Vec<&'a str> {
    vec![l.campaign.to_str().unwrap(), "--bootstrap-servers", bootstrap, "--event-topic", &l.topics.events, "--json"]
}

#[test]
fn a_backtest_of_the_topic_equals_the_native_computation_and_produces_nothing() {
    let l = loaded();
    let bootstrap = broker();
    let mut args = topic_args(l, &bootstrap);
    args.extend(["--from", "2024-01-01", "--samples", "5"]);
    let r = report(&args);
    assert_eq!(r["errors_total"], 0, "no evaluation failed: {}", r["error_examples"]);
    let expected = native(l.events.iter());
    assert!(expected.matches > 10_000 && expected.before_start > 0 && expected.after_end > 0 && expected.not_events > 0, "{expected:?}");
    assert_eq!(reported(&r), expected);
    assert_eq!((r["triggers"].as_u64(), r["control_group_matches"].as_u64()), (Some(expected.matches), Some(0)));
    assert_eq!((r["errors_total"].as_u64(), r["stopped"].clone()), (Some(0), Value::Null));
    assert_eq!(r["histogram"]["unit"], "day");
    // Contiguous days, the empty ones included.
    let days: Vec<&str> = r["histogram"]["buckets"].as_array().unwrap().iter().map(|b| b["start"].as_str().unwrap()).collect();
    assert_eq!(days.first().copied(), Some("2023-11-12T00:00:00Z"));
    assert_eq!(days.len(), 8, "{days:?}");
    let partitions = r["source"]["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 4);
    let read: i64 = partitions.iter().map(|p| p["end_offset"].as_i64().unwrap() - p["start_offset"].as_i64().unwrap()).sum();
    assert_eq!(read, EVENTS as i64);
    let p50 = r["fuel_p50"].as_u64().unwrap();
    assert!(p50 > 1_000 && r["fuel_p99"].as_u64().unwrap() >= p50, "{r}");

    // Sample triggers: exactly the processor's trigger JSON for matching events.
    let by_id: BTreeMap<&str, &Ev> = l.events.iter().map(|e| (e.event_id.as_str(), e)).collect();
    let samples = r["sample_triggers"].as_array().unwrap();
    assert_eq!(samples.len(), 5);
    let campaign: Value = serde_json::from_str(CAMPAIGN).unwrap();
    for s in samples {
        let keys: Vec<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["campaign", "event", "trigger_id", "triggered_at"]);
        assert_eq!(s["campaign"], campaign);
        let id = s["event"]["event_id"].as_str().unwrap();
        let e = by_id[id];
        assert_eq!(s["event"], serde_json::from_str::<Value>(&e.json).unwrap());
        assert!(!e.garbage && e.loss && e.level >= 20, "a sample is a match: {s}");
        assert_eq!(s["trigger_id"], format!("9001:{id}"));
        assert_eq!(parse_rfc3339(s["triggered_at"].as_str().unwrap()), Some(e.created_ms), "triggered_at is the event's time");
    }

    // Nothing was produced: the triggers topic is still empty.
    assert_eq!(Reader::new(&l.topics.triggers).poll_for(Duration::from_secs(2)), 0, "the triggers topic has no record");
}

#[test]
fn from_and_to_select_exactly_the_records_in_the_interval() {
    let l = loaded();
    let bootstrap = broker();
    // [event 20,000's timestamp, event 50,000's): 30,000 records, by record timestamp (the
    // events' created_at are unrelated to it).
    let (from, to) = (fmt_rfc3339(l.events[20_000].record_ms, 3, 0), fmt_rfc3339(l.events[50_000].record_ms, 3, 0));
    let mut args = topic_args(l, &bootstrap);
    args.extend(["--from", &from, "--to", &to]);
    let r = report(&args);
    let expected = native(l.events[20_000..50_000].iter());
    assert_eq!(expected.events, 30_000);
    assert_eq!(reported(&r), expected);
    assert_eq!(r["source"]["from"], from.replace(".000Z", "Z"));
    assert_eq!(r["source"]["outside_interval"], 0, "the offsets bound the interval exactly: {}", r["source"]);
    // One millisecond more on either side takes one more record.
    let (from2, to2) = (fmt_rfc3339(l.events[20_000].record_ms - 1, 3, 0), fmt_rfc3339(l.events[50_000].record_ms + 1, 3, 0));
    let mut args = topic_args(l, &bootstrap);
    args.extend(["--from", &from2, "--to", &to2]);
    assert_eq!(report(&args)["events_read"], 30_001);
}

#[test]
fn a_file_of_the_same_events_gives_the_same_result() {
    let l = loaded();
    let bootstrap = broker();
    let lines: String = l.events.iter().map(|e| format!("{}\n\n", e.json)).collect();
    let file = write_file("events.jsonl", &lines);
    let from_file = report(&[l.campaign.to_str().unwrap(), "--events", file.to_str().unwrap(), "--json"]);
    let mut args = topic_args(l, &bootstrap);
    args.extend(["--from", RECORDS_FROM]);
    let from_topic = report(&args);
    assert_eq!(reported(&from_file), reported(&from_topic));
    for field in ["events_read", "not_events", "skipped", "candidates", "filter_matches", "triggers", "unique_players", "errors", "histogram"] {
        assert_eq!(from_file[field], from_topic[field], "{field}");
    }
    assert_eq!(from_file["source"], json!({"kind": "file", "path": file.to_str().unwrap()}));
    assert_eq!(reported(&from_file), native(l.events.iter()));
}

/// A small topic of its own for the faults: 10 lost fights inside 4711's window.
fn small_topic() -> &'static Topics {
    static SMALL: OnceLock<Topics> = OnceLock::new();
    SMALL.get_or_init(|| {
        let t = Topics::new("backtest-faults");
        create_topic(&t.events, 2);
        let msgs: Vec<Msg> = (0..10)
            .map(|i| Msg::keyed(format!("{i}"), seed_event(&format!("f-{i}"), "loss").to_string()).at(ts("2024-05-01T00:00:00Z") + i))
            .collect();
        produce(&t.events, &msgs);
        t
    })
}

#[test]
fn garbage_campaign_files_and_bad_times_are_refused_with_the_reason() {
    let t = small_topic();
    let bootstrap = broker();
    let seed = write_file("seed.json", SEED_CAMPAIGN);
    let seed = seed.to_str().unwrap();
    let cluster = ["--bootstrap-servers", bootstrap.as_str(), "--event-topic", t.events.as_str()];
    let refused = |args: &[&str], code: i32, stderr: &str| {
        let out = backtest(&[args, &cluster[..]].concat());
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(stderr), "{args:?}: expected {stderr:?} in:\n{err}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout, got {}", text(&out.stdout));
    };
    let garbage = write_file("garbage.json", "{\"campaign_id\": 1, nope");
    refused(&[garbage.to_str().unwrap(), "--from", "2024-01-01"], 2, &format!("{}: the campaign is not valid JSON: key must be a string at line 1 column 20", garbage.display()));
    let no_game = write_file("no-game.json", r#"{"campaign_id":2,"enabled":true,"event_name":"fight","filter":"e => true"}"#);
    refused(&[no_game.to_str().unwrap(), "--from", "2024-01-01"], 2, &format!("{}: game is missing", no_game.display()));
    let syntax = write_file("syntax.json", r#"{"campaign_id":3,"enabled":true,"game":"foe","event_name":"fight","filter":"e => e.data.result === ;"}"#);
    refused(&[syntax.to_str().unwrap(), "--from", "2024-01-01"], 2, &format!("{}: filter: SyntaxError", syntax.display()));
    refused(&[syntax.to_str().unwrap(), "--from", "2024-01-01"], 2, " at line 1, column ");
    refused(&["/nonexistent/campaign.json", "--from", "2024-01-01"], 1, "error: reading /nonexistent/campaign.json: No such file or directory");
    refused(&[seed, "--from", "yesterday"], 2, "invalid value 'yesterday' for '--from <TIME>': `yesterday` is not a time: use an RFC 3339 time");
    refused(&[seed, "--from", "2024-01-01", "--to", "2024-13-01"], 2, "invalid value '2024-13-01' for '--to <TIME>'");
    refused(
        &[seed, "--from", "2024-01-02", "--to", "2024-01-01T00:00:00Z"],
        2,
        "error: --from 2024-01-02T00:00:00Z is not before --to 2024-01-01T00:00:00Z: the interval [from, to) is empty; give a --from earlier than --to",
    );
    refused(&[seed, "--from", "2024-01-01", "--to", "2024-01-01"], 2, "is not before --to");
    refused(&[seed, "--from", "2024-01-01", "--events", "x.jsonl"], 2, "cannot be used with");
    refused(&[seed], 2, "the following required arguments were not provided:\n  --from <TIME>");
    refused(&[seed, "--to", "2024-01-01"], 2, "--from <TIME>");
    refused(&[seed, "--events", "/nonexistent/events.jsonl"], 1, "error: reading the events file /nonexistent/events.jsonl: No such file or directory");
}

#[test]
fn an_empty_interval_reports_zero_and_says_why() {
    let t = small_topic();
    let bootstrap = broker();
    let seed = write_file("seed.json", SEED_CAMPAIGN);
    let args = [seed.to_str().unwrap(), "--bootstrap-servers", &bootstrap, "--event-topic", &t.events, "--from", "2020-01-01", "--to", "2020-01-02"];
    let r = report(&[&args[..], &["--json"]].concat());
    assert_eq!((r["events_read"].as_u64(), r["candidates"].as_u64(), r["triggers"].as_u64()), (Some(0), Some(0), Some(0)));
    assert_eq!(r["histogram"], json!({"unit": "hour", "buckets": []}));
    assert_eq!(r["sample_triggers"], json!([]));
    assert_eq!(r["warnings"], json!(["no event in the interval: the topic holds no record with a timestamp in [from, to)"]));
    for p in r["source"]["partitions"].as_array().unwrap() {
        assert_eq!(p["start_offset"], p["end_offset"], "{p}");
    }
    let out = backtest(&args);
    assert_eq!(out.status.code(), Some(0));
    let human = text(&out.stdout);
    assert!(human.contains("warning: no event in the interval"), "{human}");
    assert!(human.lines().any(|l| l.trim_start().starts_with("events read") && l.trim_end().ends_with(" 0")), "{human}");
    // After the last record: also nothing.
    let r = report(&[seed.to_str().unwrap(), "--bootstrap-servers", &bootstrap, "--event-topic", &t.events, "--from", "2024-05-02", "--json"]);
    assert_eq!(r["events_read"], 0);
}

#[test]
fn a_filter_that_throws_on_every_event_is_counted_with_its_message() {
    let t = small_topic();
    let bootstrap = broker();
    let throws = write_file(
        "throws.json",
        r#"{"campaign_id":66,"enabled":true,"game":"foe","event_name":"fight","start_date":"2023-09-01T10:00:00.00Z","filter":"e => e.data.nope.deeper"}"#,
    );
    let args = [throws.to_str().unwrap(), "--bootstrap-servers", &bootstrap, "--event-topic", &t.events, "--from", "2024-01-01"];
    let r = report(&[&args[..], &["--json"]].concat());
    assert_eq!((r["events_read"].as_u64(), r["candidates"].as_u64(), r["filter_matches"].as_u64()), (Some(10), Some(10), Some(0)));
    assert_eq!(r["errors"], json!({"fuel": 0, "memory": 0, "deadline": 0, "trap": 0, "exception": 10, "event": 0}));
    assert_eq!(r["errors_total"], 10);
    let examples = r["error_examples"].as_array().unwrap();
    assert_eq!(examples.len(), 1);
    assert_eq!(examples[0]["kind"], "exception");
    let message = examples[0]["message"].as_str().unwrap();
    assert!(message.starts_with("TypeError: "), "{message}");
    // The first failing event: the lowest (partition, offset).
    assert_eq!((examples[0]["partition"].as_i64(), examples[0]["offset"].as_i64()), (Some(0), Some(0)));
    assert_eq!(r["warnings"].as_array().unwrap().len(), 1);
    let warning = r["warnings"][0].as_str().unwrap();
    assert!(warning.starts_with(&format!("10 of 10 filter evaluations failed (first exception: {message}); rtcrm run counts them as no match")), "{warning}");
    let out = backtest(&args);
    assert_eq!(out.status.code(), Some(0), "a broken filter is a finding, not a failure of the backtest");
    let human = text(&out.stdout);
    assert!(human.contains(&format!("first exception error (partition 0, offset 0): {message}")), "{human}");
    assert!(human.contains("errors") && human.contains("10 (exception 10)"), "{human}");
}

#[test]
fn a_missing_topic_and_an_unreachable_broker_are_named() {
    let bootstrap = broker();
    let seed = write_file("seed.json", SEED_CAMPAIGN);
    let seed = seed.to_str().unwrap();
    let topic = format!("no-such-topic-{}", unique_suffix());
    let out = backtest(&[seed, "--bootstrap-servers", &bootstrap, "--event-topic", &topic, "--from", "2024-01-01", "--quiet"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("error: the events topic `{topic}` does not exist on {bootstrap}; check --event-topic")),
        "{}",
        text(&out.stderr)
    );
    let port = free_port();
    let t0 = Instant::now();
    let out = backtest(&[seed, "--bootstrap-servers", &format!("127.0.0.1:{port}"), "--from", "2024-01-01", "--quiet"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("error: the Kafka cluster at 127.0.0.1:{port} does not answer")), "{err}");
    assert!(err.contains("Connection refused"), "librdkafka's reason is named: {err}");
    assert!(t0.elapsed() < Duration::from_secs(20), "reported within seconds: {:.1?}", t0.elapsed());
}

#[test]
fn with_the_processing_clock_the_record_timestamp_is_the_time() {
    let t = small_topic();
    let bootstrap = broker();
    // The ten lost fights were created in 4711's window (2023) and written in May 2024.
    let seed = write_file("seed.json", SEED_CAMPAIGN);
    let args = [seed.to_str().unwrap(), "--bootstrap-servers", &bootstrap, "--event-topic", &t.events, "--from", "2024-01-01", "--json"];
    let by_event = report(&args);
    assert_eq!((by_event["clock"].as_str(), by_event["triggers"].as_u64()), (Some("event"), Some(10)));
    let by_record = report(&[&args[..], &["--clock", "processing"]].concat());
    assert_eq!((by_record["clock"].as_str(), by_record["triggers"].as_u64()), (Some("processing"), Some(0)));
    assert_eq!(by_record["skipped"]["after_end"], 10, "May 2024 is after the window: {}", by_record["skipped"]);
}

#[test]
fn long_runs_show_progress_on_stderr() {
    // About 2 ms of fuel per event, 1,500 events on one thread: 3 s or so.
    let slow = write_file(
        "slow.json",
        r#"{"campaign_id":99,"enabled":true,"game":"foe","event_name":"login","filter":"e => { let x = 0; for (let i = 0; i < 20000; i++) { x += i % 7; } return x < 0; }"}"#,
    );
    let lines: String = (0..1500).map(|i| format!("{}\n", json!({"game": "foe", "event_name": "login", "player_id": i}))).collect();
    let file = write_file("logins.jsonl", &lines);
    let out = backtest(&[slow.to_str().unwrap(), "--events", file.to_str().unwrap(), "--workers", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let progress: Vec<&str> = err.lines().filter(|l| l.starts_with("backtest: ")).collect();
    assert!(!progress.is_empty(), "a progress line after a second:\n{err}");
    // `N events, R events/s`, then `, P %, ETA S s` once the share decided is known.
    let mut with_eta = 0;
    for line in &progress {
        let parts: Vec<&str> = line.strip_prefix("backtest: ").unwrap().split(", ").collect();
        assert!(parts.len() == 2 || parts.len() == 4, "{line}");
        assert!(parts[0].ends_with(" events") && parts[1].ends_with(" events/s"), "{line}");
        if parts.len() == 4 {
            assert!(parts[2].ends_with(" %") && parts[3].starts_with("ETA ") && parts[3].ends_with(" s"), "{line}");
            with_eta += 1;
        }
    }
    assert!(with_eta > 0, "{err}");
    let human = text(&out.stdout);
    assert!(human.lines().any(|l| l.trim_start().starts_with("events read") && l.trim_end().ends_with(" 1,500")), "{human}");
    // A short run shows none, and --quiet none at all.
    let out = backtest(&[slow.to_str().unwrap(), "--events", file.to_str().unwrap(), "--max-events", "10", "--json"]);
    assert!(!text(&out.stderr).contains("backtest: "), "{}", text(&out.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["stopped"], "max_events");
    let out = backtest(&[slow.to_str().unwrap(), "--events", file.to_str().unwrap(), "--workers", "1", "--quiet", "--json"]);
    assert!(!text(&out.stderr).contains("backtest: "), "{}", text(&out.stderr));
}
