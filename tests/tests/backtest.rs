//! `rtcrm campaign backtest` (spec §13, issue 9) against a real broker: on 100,000 events over a
//! 4-partition topic the report equals a native computation (matches, candidates, skips, unique
//! players, per-day buckets) and nothing is produced; `--from`/`--to` select exactly the records
//! in the interval by record timestamp; `--events FILE` gives the topic's result; and every
//! fault (garbage campaign files, bad or empty intervals, a filter that throws on every event,
//! a missing topic, an unreachable broker) is reported exactly. Campaigns with controls (spec
//! §12: cooldown and count, holdout with variants and a cap, inactivity timers on each
//! partition's time) report exactly the counts of a native computation written here.

use rtcrm_integration_tests::*;
use serde_json::Value;
use sha2::Digest;
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
/// Events topics of these tests hold records with timestamps from 2023 and 2024: with the
/// broker's default retention (7 days, by record timestamp) their segments are deleted at its
/// next retention check, and a backtest would find nothing.
const HISTORIC: &[(&str, &str)] = &[("retention.ms", "-1")];

struct Loaded {
    topics: Topics,
    events: Vec<Ev>,
    campaign: PathBuf,
}

fn loaded() -> &'static Loaded {
    static LOADED: OnceLock<Loaded> = OnceLock::new();
    LOADED.get_or_init(|| {
        let topics = Topics::new("backtest");
        create_topic_with(&topics.events, 4, HISTORIC);
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
        create_topic_with(&t.events, 2, HISTORIC);
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
    assert_eq!(r["errors"], json!({"fuel": 0, "memory": 0, "deadline": 0, "trap": 0, "exception": 10, "event": 0, "capacity": 0, "state": 0}));
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
    assert_eq!((by_event["clock"].as_str(), by_event["triggers"].as_u64()), (Some("event"), Some(10)), "{by_event}");
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

// ---------------------------------------------------------------------------------------------
// Campaign controls (spec §12, issue 12): the backtest decides them as the processor does, from
// empty per-player state; the expected counts are computed here, independently of rtcrm.
// ---------------------------------------------------------------------------------------------

const CONTROL_EVENTS: usize = 30_000;
const CONTROL_PLAYERS: u64 = 100;
const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

/// One event of the controls workload.
struct Cev {
    json: String,
    event_id: String,
    player: Option<u64>,
    login: bool,
    loss: bool,
    created_ms: i64,
}

/// 100 players over about 17 hours: a fight or a login every 2 s (created_at jittered by up to a
/// minute, so a player's events are not always in time order), half the fights lost, one event
/// in 1,000 without player_id, one in 1,999 not an event.
fn control_workload() -> Vec<Cev> {
    let mut rng = Rng::new(9100);
    let base = ts("2024-02-01T00:00:00Z");
    (0..CONTROL_EVENTS)
        .map(|i| {
            let event_id = format!("c-{i}");
            let player = (i % 1000 != 7).then(|| rng.range(1, CONTROL_PLAYERS as i64 + 1) as u64);
            let login = rng.chance(0.15);
            let loss = rng.chance(0.5);
            let created_ms = base + i as i64 * 2000 + rng.below(60_000) as i64;
            let json = if i % 1999 == 11 {
                format!("[\"not an event\", {i}]")
            } else {
                let mut e = json!({"event_id": event_id, "game": "foe", "event_name": if login { "login" } else { "fight" }, "market": "de",
                    "created_at": fmt_rfc3339(created_ms, 3, 0), "data": {"result": if loss { "loss" } else { "win" }}});
                if let Some(p) = player {
                    e["player_id"] = p.into();
                }
                e.to_string()
            };
            let garbage = json.starts_with('[');
            Cev { json, event_id, player: player.filter(|_| !garbage), login: login && !garbage, loss: loss && !login && !garbage, created_ms }
        })
        .collect()
}

/// The controls workload on a 4-partition topic, keyed by player id (Kafka's default
/// partitioner), loaded once.
fn control_topic() -> &'static (Topics, Vec<Cev>) {
    static LOADED: OnceLock<(Topics, Vec<Cev>)> = OnceLock::new();
    LOADED.get_or_init(|| {
        let topics = Topics::new("backtest-controls");
        create_topic_with(&topics.events, 4, HISTORIC);
        create_topic(&topics.triggers, 1);
        let events = control_workload();
        let msgs: Vec<Msg> = events.iter().map(|e| match e.player {
            Some(p) => Msg::keyed(p.to_string(), &e.json),
            None => Msg::keyless(&e.json),
        }).collect();
        produce(&topics.events, &msgs);
        (topics, events)
    })
}

/// The documented holdout bucket (spec §12): SHA-256 of `"<campaign_id>:<player_id>"`, first 8
/// bytes big-endian, mod 10,000.
fn holdout_bucket(campaign: i64, player: u64) -> u64 {
    let d = sha2::Sha256::digest(format!("{campaign}:{player}").as_bytes());
    u64::from_be_bytes(d[..8].try_into().unwrap()) % 10_000
}

/// The documented variant (spec §12): SHA-256 of `"<campaign_id>:<player_id>:variant"`, first 8
/// bytes big-endian, mod the sum of the weights, by cumulative weight in order.
fn variant_of(campaign: i64, player: u64, weights: &[(&'static str, u64)]) -> &'static str {
    let d = sha2::Sha256::digest(format!("{campaign}:{player}:variant").as_bytes());
    let mut x = u64::from_be_bytes(d[..8].try_into().unwrap()) % weights.iter().map(|w| w.1).sum::<u64>();
    for (name, w) in weights {
        if x < *w {
            return name;
        }
        x -= w;
    }
    unreachable!("x is below the sum")
}

/// What count, cooldown, cap and holdout decide for the lost fights, computed natively.
#[derive(Debug, Default, PartialEq, Eq)]
struct Controlled {
    candidates: u64,
    matches: u64,
    no_player: u64,
    counting: u64,
    cooldown: u64,
    cap: u64,
    triggers: u64,
    control: u64,
    players: BTreeSet<u64>,
    /// Hour (RFC 3339, UTC) → triggers.
    per_hour: BTreeMap<String, u64>,
    trigger_ids: BTreeSet<String>,
    variants: BTreeMap<String, u64>,
}

/// Per player, in the order its events were produced (one partition, in offset order): a match
/// pushes its time and keeps the times > now − within; reaching `at_least` clears them, then
/// `now < last + cooldown` suppresses, then the cap; a would-be trigger of a player whose
/// holdout bucket is below percent × 100 goes to the control group, others carry their variant.
/// Returns the counts and the control group's players.
fn controlled(events: &[Cev], id: i64, count: Option<(usize, i64)>, cooldown: Option<i64>, cap: Option<u32>, holdout_bp: u64, variants: &[(&'static str, u64)]) -> (Controlled, BTreeSet<u64>) {
    let mut n = Controlled::default();
    let mut control_players = BTreeSet::new();
    let (mut times, mut last, mut fired): (BTreeMap<u64, Vec<i64>>, BTreeMap<u64, i64>, BTreeMap<u64, u32>) = Default::default();
    for e in events.iter().filter(|e| !e.json.starts_with('[') && !e.login) {
        let Some(p) = e.player else {
            n.no_player += 1;
            continue;
        };
        n.candidates += 1;
        if !e.loss {
            continue;
        }
        n.matches += 1;
        let now = e.created_ms;
        if let Some((at_least, within)) = count {
            let t = times.entry(p).or_default();
            t.push(now);
            t.retain(|x| *x > now - within);
            if t.len() < at_least {
                n.counting += 1;
                continue;
            }
            t.clear();
        }
        if let (Some(l), Some(c)) = (last.get(&p), cooldown) {
            if now < l + c {
                n.cooldown += 1;
                continue;
            }
        }
        let f = fired.entry(p).or_default();
        if cap.is_some_and(|cap| *f >= cap) {
            n.cap += 1;
            continue;
        }
        *f += 1;
        last.insert(p, now);
        if holdout_bucket(id, p) < holdout_bp {
            n.control += 1;
            control_players.insert(p);
            continue;
        }
        n.triggers += 1;
        n.players.insert(p);
        n.trigger_ids.insert(format!("{id}:{}", e.event_id));
        *n.per_hour.entry(fmt_rfc3339(now - now.rem_euclid(HOUR), 0, 0)).or_default() += 1;
        if !variants.is_empty() {
            *n.variants.entry(variant_of(id, p, variants).to_owned()).or_default() += 1;
        }
    }
    (n, control_players)
}

/// The same counts read from a report.
fn reported_controls(r: &Value) -> Controlled {
    let samples = r["sample_triggers"].as_array().unwrap();
    assert_eq!(samples.len() as u64, r["triggers"].as_u64().unwrap(), "--samples keeps every trigger here");
    Controlled {
        candidates: r["candidates"].as_u64().unwrap(),
        matches: r["filter_matches"].as_u64().unwrap(),
        no_player: r["skipped"]["no_player"].as_u64().unwrap(),
        counting: r["counting"].as_u64().unwrap(),
        cooldown: r["suppressed_cooldown"].as_u64().unwrap(),
        cap: r["suppressed_cap"].as_u64().unwrap(),
        triggers: r["triggers"].as_u64().unwrap(),
        control: r["control_group_matches"].as_u64().unwrap(),
        players: samples.iter().map(|s| s["event"]["player_id"].as_u64().unwrap()).collect(),
        per_hour: r["histogram"]["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["triggers"].as_u64().unwrap() > 0)
            .map(|b| (b["start"].as_str().unwrap().to_owned(), b["triggers"].as_u64().unwrap()))
            .collect(),
        trigger_ids: samples.iter().map(|s| s["trigger_id"].as_str().unwrap().to_owned()).collect(),
        variants: r["variants"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect(),
    }
}

fn controls_campaign(id: i64, name: &str, controls: Value) -> PathBuf {
    let mut c = json!({"campaign_id": id, "enabled": true, "game": "foe", "event_name": name,
        "filter": if name == "login" { "e => true" } else { "e => e.data.result === 'loss'" }});
    for (k, v) in controls.as_object().unwrap() {
        c[k] = v.clone();
    }
    write_file(&format!("controls-{id}.json"), &c.to_string())
}

#[test]
fn a_backtest_with_cooldown_and_count_equals_the_native_computation() {
    let (t, events) = control_topic();
    let bootstrap = broker();
    let file = controls_campaign(9100, "fight", json!({"cooldown": "1h", "count": {"at_least": 3, "within": "10m"}}));
    let r = report(&[file.to_str().unwrap(), "--bootstrap-servers", &bootstrap, "--event-topic", &t.events, "--from", "2000-01-01", "--samples", "100000", "--json"]);
    let (expected, _) = controlled(events, 9100, Some((3, 10 * MIN)), Some(HOUR), None, 0, &[]);
    assert!(expected.triggers > 300 && expected.counting > 1000 && expected.cooldown > 300, "the workload exercises both controls: {expected:?}");
    assert!(expected.per_hour.len() >= 16, "{:?}", expected.per_hour);
    assert_eq!(r["unique_players"].as_u64(), Some(expected.players.len() as u64));
    assert_eq!(reported_controls(&r), expected);
    assert_eq!(r["events_read"].as_u64(), Some(CONTROL_EVENTS as u64));
    assert_eq!((r["control_group_matches"].as_u64(), r["suppressed_cap"].as_u64(), r["inactivity_firings"].as_u64()), (Some(0), Some(0), Some(0)));
    assert_eq!(r["controls"], "count 3 in 10m, cooldown 1h");
    assert_eq!(r["histogram"]["unit"], "hour");
    assert_eq!(r["errors_total"], 0);
    assert!(r["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().starts_with("per-player state starts empty at the interval's start (--from): cooldowns, caps, counts, timers")), "{}", r["warnings"]);

    // The human table shows what the controls held back.
    let out = backtest(&[file.to_str().unwrap(), "--bootstrap-servers", &bootstrap, "--event-topic", &t.events, "--from", "2000-01-01", "--quiet"]);
    let human = text(&out.stdout);
    assert!(human.contains("controls: count 3 in 10m, cooldown 1h"), "{human}");
    let row = |label: &str, n: u64| human.lines().any(|l| l.trim_start().starts_with(label) && l.trim_end().ends_with(&format!(" {}", thousands(n))));
    assert!(row("counting (count not reached)", expected.counting) && row("suppressed by cooldown", expected.cooldown) && row("triggers (after controls)", expected.triggers), "{human}");

    // Nothing was produced.
    assert_eq!(Reader::new(&t.triggers).poll_for(Duration::from_secs(2)), 0, "the triggers topic has no record");
}

#[test]
fn a_backtest_with_holdout_variants_and_a_cap_equals_the_native_computation() {
    let (t, events) = control_topic();
    let bootstrap = broker();
    let weights = [("A", 3), ("B", 1)];
    let file = controls_campaign(
        9101,
        "fight",
        json!({"holdout_percent": 20, "variants": [{"name": "A", "weight": 3}, {"name": "B", "weight": 1}], "cooldown": "20m", "max_triggers_per_player": 30}),
    );
    let r = report(&[file.to_str().unwrap(), "--bootstrap-servers", &bootstrap, "--event-topic", &t.events, "--from", "2000-01-01", "--samples", "100000", "--json"]);
    let (expected, control_players) = controlled(events, 9101, None, Some(20 * MIN), Some(30), 2000, &weights);
    assert!(expected.control > 100 && expected.cap > 100 && expected.cooldown > 1000 && expected.variants.len() == 2, "{expected:?}");
    assert_eq!(r["control_group_players"].as_u64(), Some(control_players.len() as u64));
    assert_eq!(r["unique_players"].as_u64(), Some(expected.players.len() as u64));
    assert_eq!(reported_controls(&r), expected);
    // Control-group players never appear among the triggers, and each trigger carries its variant.
    for s in r["sample_triggers"].as_array().unwrap() {
        let p = s["event"]["player_id"].as_u64().unwrap();
        assert!(holdout_bucket(9101, p) >= 2000 && s.get("group").is_none(), "{s}");
        assert_eq!(s["variant"], variant_of(9101, p, &weights), "{s}");
    }
    assert_eq!(r["controls"], "cooldown 20m, at most 30 triggers per player, holdout 20%, variants A:3/B:1");
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`), so the test can place each player's
/// events on the partition that holds the player's state (as a Java producer keying by player
/// id does) and compute the partition times natively.
fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]).wrapping_mul(M);
        k ^= k >> 24;
        h = h.wrapping_mul(M) ^ k.wrapping_mul(M);
    }
    let rest = chunks.remainder();
    for (i, b) in rest.iter().enumerate().rev() {
        h ^= u32::from(*b) << (8 * i);
    }
    if !rest.is_empty() {
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    (h ^ (h >> 15)) as i32
}

/// `12345` → `12,345`, as the human table prints counts.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn partition_of(player: u64, partitions: i32) -> i32 {
    (murmur2(player.to_string().as_bytes()) & 0x7fff_ffff) % partitions
}

/// Inactivity natively, per partition in offset order: the partition's time is the latest event
/// time it has seen; before an event is decided, every timer of the partition due by then fires
/// (once); a login (re)arms its player's timer to its time + `inactivity`; at the end, timers due
/// by the partition's final time fire and the rest stay armed. `global`: one time for all
/// partitions instead (what a wrong simulation would do), to show the workload tells them apart.
fn inactivity_native(by_partition: &BTreeMap<i32, Vec<&Cev>>, id: i64, inactivity: i64, global: bool) -> (BTreeSet<String>, u64, BTreeMap<String, u64>) {
    let (mut fired, mut per_hour) = (BTreeSet::new(), BTreeMap::new());
    let mut pending = 0;
    let global_end = by_partition.values().flatten().map(|e| e.created_ms).max().unwrap();
    for events in by_partition.values() {
        let mut clock = i64::MIN;
        let mut timers: BTreeMap<u64, (i64, String)> = BTreeMap::new();
        let mut fire = |timers: &mut BTreeMap<u64, (i64, String)>, now: i64| {
            timers.retain(|_, (due, event_id)| {
                if *due > now {
                    return true;
                }
                fired.insert(format!("{id}:{event_id}"));
                *per_hour.entry(fmt_rfc3339(*due - due.rem_euclid(HOUR), 0, 0)).or_default() += 1u64;
                false
            });
        };
        for e in events {
            clock = clock.max(e.created_ms);
            fire(&mut timers, clock);
            if e.login {
                timers.insert(e.player.unwrap(), (e.created_ms + inactivity, e.event_id.clone()));
            }
        }
        fire(&mut timers, if global { global_end } else { clock });
        pending += timers.len() as u64;
    }
    (fired, pending, per_hour)
}

#[test]
fn a_backtest_with_inactivity_fires_timers_on_each_partitions_time_and_reports_the_armed_ones() {
    let bootstrap = broker();
    let t = Topics::new("backtest-inactivity");
    create_topic_with(&t.events, 4, HISTORIC);
    // 60 players over about 33 hours, an event every 20 s; in the last 8 hours the players of
    // partition 3 send nothing, so that partition's time stops early.
    let mut rng = Rng::new(9102);
    let base = ts("2024-02-10T00:00:00Z");
    let n = 6_000;
    let mut events = Vec::new();
    for i in 0..n {
        let created_ms = base + i as i64 * 20_000 + rng.below(15_000) as i64;
        let mut player = rng.range(1, 61) as u64;
        if i > n - 1440 {
            while partition_of(player, 4) == 3 {
                player = rng.range(1, 61) as u64;
            }
        }
        // Logins are rare enough that some gaps pass 3 hours.
        let login = rng.chance(0.04);
        let event_id = format!("in-{i}");
        let json = json!({"event_id": event_id, "game": "foe", "event_name": if login { "login" } else { "fight" }, "player_id": player,
            "created_at": fmt_rfc3339(created_ms, 3, 0), "data": {"result": "win"}}).to_string();
        events.push(Cev { json, event_id, player: Some(player), login, loss: false, created_ms });
    }
    let msgs: Vec<Msg> = events
        .iter()
        .map(|e| Msg { partition: Some(partition_of(e.player.unwrap(), 4)), ..Msg::keyed(e.player.unwrap().to_string(), &e.json) })
        .collect();
    let delivered = produce(&t.events, &msgs);
    let mut by_partition: BTreeMap<i32, Vec<(i64, &Cev)>> = BTreeMap::new();
    for (d, e) in delivered.iter().zip(&events) {
        by_partition.entry(d.partition).or_default().push((d.offset, e));
    }
    let by_partition: BTreeMap<i32, Vec<&Cev>> = by_partition
        .into_iter()
        .map(|(p, mut v)| {
            v.sort_by_key(|(o, _)| *o);
            (p, v.into_iter().map(|(_, e)| e).collect())
        })
        .collect();
    assert_eq!(by_partition.len(), 4);
    // Kafka's own test vectors (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java).
    assert_eq!((murmur2(b"21"), murmur2(b"foobar"), murmur2(b"abc")), (-973_932_308, -790_332_482, 479_470_107));
    let (fired, pending, per_hour) = inactivity_native(&by_partition, 9102, 3 * HOUR, false);
    let (_, pending_global, _) = inactivity_native(&by_partition, 9102, 3 * HOUR, true);
    assert!(fired.len() > 50 && pending > 0, "{} fired, {pending} pending", fired.len());
    assert!(pending != pending_global, "the workload tells per-partition time from one global time ({pending})");

    let file = controls_campaign(9102, "login", json!({"inactivity": "3h"}));
    let r = report(&[file.to_str().unwrap(), "--bootstrap-servers", &bootstrap, "--event-topic", &t.events, "--from", "2000-01-01", "--samples", "100000", "--json"]);
    let logins = events.iter().filter(|e| e.login).count() as u64;
    assert_eq!((r["filter_matches"].as_u64(), r["timers_armed"].as_u64()), (Some(logins), Some(logins)), "every login (re)arms its player's timer");
    assert_eq!((r["inactivity_firings"].as_u64(), r["inactivity_triggers"].as_u64()), (Some(fired.len() as u64), Some(fired.len() as u64)));
    assert_eq!(r["triggers"].as_u64(), Some(fired.len() as u64));
    assert_eq!(r["timers_pending_at_end"].as_u64(), Some(pending), "timers still armed at the end, not triggers");
    let samples = r["sample_triggers"].as_array().unwrap();
    let ids: BTreeSet<String> = samples.iter().map(|s| s["trigger_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, fired);
    assert!(samples.iter().all(|s| s["reason"] == "inactivity"), "{}", samples[0]);
    let hours: BTreeMap<String, u64> = r["histogram"]["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["triggers"].as_u64().unwrap() > 0)
        .map(|b| (b["start"].as_str().unwrap().to_owned(), b["triggers"].as_u64().unwrap()))
        .collect();
    assert_eq!(hours, per_hour, "each firing in the hour of its due time");
}
