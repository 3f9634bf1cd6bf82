//! One player's state for support questions (issue 12, item 6) on a real broker:
//! `GET /api/campaigns/{id}/players/{player}` and `rtcrm campaign state ID PLAYER` after a
//! campaign with `cooldown` and `count` saw a player's events — the count so far and the cooldown
//! until at the exact times computed here, the per-campaign counters of `/api/campaigns`, 404 for
//! an unknown campaign, the "no state" answer with the group and variant by the documented hash,
//! and, with two instances, the 409 of the one that does not own the player's partition.

use rtcrm_integration_tests::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::process::Command;
use std::time::{Duration, Instant};

const MIN: i64 = 60_000;

fn t0() -> i64 {
    ts("2023-11-20T10:00:00Z")
}

/// RFC 3339 with milliseconds, as the API writes times.
fn at(ms: i64) -> String {
    fmt_rfc3339(ms, 3, 0)
}

fn event(id: &str, player: i64, result: &str, at_ms: i64) -> Value {
    json!({"event_id": id, "game": "foe", "event_name": "fight", "player_id": player, "market": "de",
           "created_at": at(at_ms), "data": {"result": result}})
}

fn campaign(id: i64, filter: &str, controls: Value) -> Msg {
    let mut c = json!({"campaign_id": id, "enabled": true, "game": "foe", "event_name": "fight", "filter": filter});
    for (k, v) in controls.as_object().unwrap() {
        c[k] = v.clone();
    }
    Msg::keyed(id.to_string(), c.to_string())
}

/// `GET path` until `done` holds for the (status, JSON) answer, or 60 s (then panics with the last
/// answer). 503 (the event path starting, a partition restoring) is retried.
fn get_until(p: &Processor, path: &str, done: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
    let t = Instant::now();
    loop {
        let (status, body) = p.request("GET", path, None);
        if status != 503 && done(status, &body) {
            return (status, body);
        }
        assert!(t.elapsed() < Duration::from_secs(60), "GET {path}: still {status} {body} after 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `rtcrm campaign state ID PLAYER --api http://ADDR [extra]`: exit code, stdout, stderr.
fn cli_state(api: &str, id: &str, player: &str, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(rtcrm_bin())
        .args(["campaign", "state", id, player, "--api", &format!("http://{api}")])
        .args(extra)
        .env_remove("RTCRM_API_URL")
        .output()
        .expect("running rtcrm campaign state");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The first 8 bytes of SHA-256(text), big-endian (spec §12's documented hash), recomputed here.
fn hash64(text: &str) -> u64 {
    u64::from_be_bytes(Sha256::digest(text.as_bytes())[..8].try_into().unwrap())
}

#[test]
fn a_players_count_so_far_and_cooldown_until_through_the_api_and_the_cli() {
    let t = Topics::new("stateapi");
    create_topic(&t.events, 1);
    produce(&t.campaigns, &[
        campaign(201, "e => e.data.result === 'loss'", json!({"cooldown": "1h", "count": {"at_least": 3, "within": "10m"}})),
        campaign(202, "e => true", json!({"holdout_percent": 50, "variants": [{"name": "A", "weight": 1}, {"name": "B", "weight": 1}]})),
    ]);
    // Player 777: three losses (the third triggers, the count starts over), then two more
    // counted, then a win (no match: nothing stored). Player 778: one loss.
    let plan: [(i64, &str, i64); 7] = [(777, "loss", 0), (777, "loss", MIN), (777, "loss", 2 * MIN), (777, "loss", 4 * MIN), (777, "loss", 5 * MIN), (777, "win", 6 * MIN), (778, "loss", 3 * MIN)];
    let msgs: Vec<Msg> = plan
        .iter()
        .enumerate()
        .map(|(i, (player, result, offset))| Msg::keyed(player.to_string(), event(&format!("sa-{i}"), *player, result, t0() + offset).to_string()))
        .collect();
    produce(&t.events, &msgs);
    // Campaign 202 matches all 7 events: the control group's go to the control topic.
    let control_matches = plan.iter().filter(|(player, _, _)| hash64(&format!("202:{player}")) % 10_000 < 5_000).count();
    let p = Processor::start(&t.args());
    let mut triggers = Reader::new(&t.triggers);
    let live = 1 + 7 - control_matches;
    assert!(triggers.read_until(|r| r.len() >= live, Duration::from_secs(3), Duration::from_secs(60)), "{} of {live} triggers", triggers.records.len());
    let campaign_201: Vec<Value> = parse_triggers(&triggers.records).into_iter().filter(|t| t.campaign_id == 201).map(|t| t.value).collect();
    assert_eq!(campaign_201.len(), 1, "the third loss triggers, nothing else: {campaign_201:?}");
    assert_eq!(campaign_201[0]["trigger_id"], "201:sa-2");

    // Both players' states are written once every event was evaluated.
    let (_, list) = get_until(&p, "/api/campaigns", |_, v| {
        v["campaigns"].as_array().and_then(|cs| cs.iter().find(|c| c["campaign_id"] == 201)).is_some_and(|c| c["counters"]["evaluations"] == 7)
    });
    let (status, view) = get_until(&p, "/api/campaigns/201/players/777", |s, v| s == 200 && v["state"]["count"]["so_far"] == 2);
    assert_eq!(status, 200);
    assert_eq!(view["found"], true);
    assert_eq!((view["campaign_id"].clone(), view["player_id"].clone(), view["key"].clone(), view["partition"].clone()), (json!(201), json!("777"), json!("201:777"), json!(0)));
    let s = &view["state"];
    assert_eq!(s["triggers"], 1);
    assert_eq!(s["last_trigger_at"], at(t0() + 2 * MIN));
    assert_eq!(s["last_event_at"], at(t0() + 5 * MIN), "the win changed nothing");
    assert_eq!(s["cooldown"], json!({"duration": "1h", "until": at(t0() + 62 * MIN), "active": true}));
    assert_eq!(s["count"]["at_least"], 3);
    assert_eq!(s["count"]["within"], "10m");
    assert_eq!(s["count"]["matches"], json!([at(t0() + 4 * MIN), at(t0() + 5 * MIN)]));
    assert_eq!(s["cap"], Value::Null);
    assert_eq!(s["inactivity"], Value::Null);
    assert_eq!(s["pending"], Value::Null);
    assert_eq!(s["raw"]["triggers"], 1, "the stored JSON as it is");
    assert_eq!(s["expires_at"], at(t0() + 62 * MIN), "kept until the cooldown is over (the later of it and the count window)");
    assert_eq!(s["bytes"].as_u64().unwrap() as usize, s["raw"].to_string().len());
    assert_eq!(view["group"]["group"], "live");
    assert_eq!(view["group"]["holdout_bucket"], hash64("201:777") % 10_000);
    assert!(view["partition_time"].as_str().is_some_and(|t| ts(t) >= t0() + 6 * MIN), "the partition's clock passed the last event: {view}");
    let (_, other) = get_until(&p, "/api/campaigns/201/players/778", |s, v| s == 200 && v["found"] == true);
    assert_eq!(other["state"]["count"]["matches"], json!([at(t0() + 3 * MIN)]));
    assert_eq!(other["state"]["last_trigger_at"], Value::Null);
    assert_eq!(other["state"]["cooldown"]["until"], Value::Null);

    // /api/campaigns: the controls as given, and the per-campaign counters.
    let c201 = list["campaigns"].as_array().unwrap().iter().find(|c| c["campaign_id"] == 201).unwrap().clone();
    assert_eq!(c201["controls"], json!({"cooldown": "1h", "count": {"at_least": 3, "within": "10m"}}));
    let n = &c201["counters"];
    assert_eq!(n["suppressed"], json!({"cooldown": 0, "cap": 0, "count": 5}), "losses 1, 2, 4, 5 of 777 and 778's one were counting");
    assert_eq!((n["control_matches"].clone(), n["timers_pending"].clone(), n["state_entries"].clone()), (json!(0), json!(0), json!(2)));
    let bytes = view["state"]["bytes"].as_i64().unwrap() + other["state"]["bytes"].as_i64().unwrap();
    assert_eq!(n["state_bytes"], bytes, "the two states' bytes");
    let c202 = list["campaigns"].as_array().unwrap().iter().find(|c| c["campaign_id"] == 202).unwrap().clone();
    assert_eq!(c202["controls"], json!({"holdout_percent": 50, "variants": [{"name": "A", "weight": 1}, {"name": "B", "weight": 1}]}));
    assert_eq!(c202["counters"]["control_matches"], control_matches);
    assert_eq!(c202["counters"]["state_entries"], 0);

    // No state: the group and variant by the documented hash still.
    let (status, none) = p.request("GET", "/api/campaigns/201/players/4242", None);
    assert_eq!((status, none["found"].clone(), none["state"].clone()), (200, json!(false), Value::Null));
    assert_eq!(none["message"], "no state: player 4242 has no stored state for campaign 201 (no matching event yet, or the state expired or was reset)");
    let (status, stateless) = p.request("GET", "/api/campaigns/202/players/777", None);
    assert_eq!(status, 200);
    let bucket = hash64("202:777") % 10_000;
    let control = bucket < 5_000;
    let variant = if control { Value::Null } else { json!(["A", "B"][(hash64("202:777:variant") % 2) as usize]) };
    assert_eq!(stateless["group"], json!({"group": if control { "control" } else { "live" }, "holdout_percent": 50.0, "holdout_bucket": bucket, "variant": variant}));
    assert!(stateless["message"].as_str().unwrap().contains("campaign 202 keeps no per-player state"), "{stateless}");

    // Unknown campaign, bad id.
    let (status, unknown) = p.request("GET", "/api/campaigns/999/players/777", None);
    assert_eq!((status, unknown["error"].clone()), (404, json!("campaign 999 is unknown")));
    let (status, bad) = p.request("GET", "/api/campaigns/x/players/777", None);
    assert_eq!((status, bad["error"].clone()), (400, json!("campaign id `x` is not an integer")));

    // The command line, human-readable and as JSON.
    let (code, out, err) = cli_state(&p.http, "201", "777", &[]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    for line in [
        "campaign     201 · player 777 · partition 0".to_owned(),
        "triggers     1".to_owned(),
        format!("last trigger {}", at(t0() + 2 * MIN)),
        format!("cooldown     1h: until {} (running)", at(t0() + 62 * MIN)),
        format!("count        2 of 3 matches within 10m: {}, {} (", at(t0() + 4 * MIN), at(t0() + 5 * MIN)),
    ] {
        assert!(out.contains(&line), "`{line}` in:\n{out}");
    }
    let (code, out, _) = cli_state(&p.http, "201", "777", &["--json"]);
    assert_eq!(code, 0);
    let cli_view: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("--json prints the API's JSON ({e}): {out}"));
    assert_eq!(cli_view["state"], view["state"], "the same state as the API's");
    let (code, out, err) = cli_state(&p.http, "201", "4242", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("state        no state: player 4242 has no stored state for campaign 201"), "{out}");
    let (code, _, err) = cli_state(&p.http, "999", "777", &[]);
    assert_eq!((code, err.trim()), (2, "error: campaign 999 is unknown"));
    let port = free_port();
    let (code, _, err) = cli_state(&format!("127.0.0.1:{port}"), "201", "777", &[]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("cannot reach the processor's HTTP API at 127.0.0.1:{port}")), "{err}");

    // After a restart the gauges count the restored states, not only the changes made since.
    let mut p = p;
    assert_eq!(p.sigterm().code(), Some(0));
    let p = Processor::start(&t.args());
    get_until(&p, "/api/campaigns/201/players/777", |s, v| s == 200 && v["found"] == true);
    let (_, list) = p.request("GET", "/api/campaigns", None);
    let c201 = list["campaigns"].as_array().unwrap().iter().find(|c| c["campaign_id"] == 201).unwrap().clone();
    assert_eq!((c201["counters"]["evaluations"].clone(), c201["counters"]["state_entries"].clone()), (json!(0), json!(2)), "restored states counted: {c201}");
    assert_eq!(c201["counters"]["state_bytes"], bytes, "the restored states' bytes");
    assert_eq!(p.metric("rtcrm_state_entries"), Some(2.0), "rtcrm_state_entries over all campaigns after the restart");
}

/// Kafka's murmur2 (the partition of a player's state: murmur2(player id) mod partitions),
/// recomputed here.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]).wrapping_mul(M);
        k ^= k >> 24;
        h = h.wrapping_mul(M) ^ k.wrapping_mul(M);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, b) in rest.iter().enumerate() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

fn state_partition(player: &str, partitions: u32) -> u32 {
    (murmur2(player.as_bytes()) & 0x7fff_ffff) % partitions
}

#[test]
fn the_instance_that_does_not_own_the_players_partition_names_the_owner() {
    assert_eq!(murmur2(b"21") as i32, -973_932_308, "Kafka's test vector");
    let t = Topics::new("stateown");
    let suffix = unique_suffix();
    let (a_id, b_id) = (format!("own-a-{suffix}"), format!("own-b-{suffix}"));
    let args = [t.args(), vec!["--partitions".into(), "2".into()]].concat();
    produce(&t.campaigns, &[campaign(203, "e => e.data.result === 'loss'", json!({"max_triggers_per_player": 2}))]);
    let a = Processor::builder("run").args(args.clone()).arg("--instance-id").arg(&a_id).name("a").start();
    let b = Processor::builder("run").args(args).arg("--instance-id").arg(&b_id).name("b").start();
    let players: Vec<String> = (0..2).map(|part| (1..1000).map(|p| p.to_string()).find(|p| state_partition(p, 2) == part).unwrap()).collect();
    // Wait for the group to split the two partitions: then exactly one of A's answers is a 409.
    let started = Instant::now();
    let (mine, theirs, conflict) = loop {
        let answers: Vec<(u16, Value)> = players.iter().map(|p| a.request("GET", &format!("/api/campaigns/203/players/{p}"), None)).collect();
        let owners: Vec<f64> = [&a, &b].iter().map(|p| p.metric("rtcrm_assigned_partitions").unwrap_or(0.0)).collect();
        if owners == [1.0, 1.0] {
            match (answers[0].0, answers[1].0) {
                (200, 409) => break (0, 1, answers[1].1.clone()),
                (409, 200) => break (1, 0, answers[0].1.clone()),
                _ => {}
            }
        }
        assert!(started.elapsed() < Duration::from_secs(90), "no split of the 2 partitions in 90 s: assigned {owners:?}, A answered {answers:?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let partition = state_partition(&players[theirs], 2);
    assert_eq!(conflict["partition"], partition);
    assert_eq!(conflict["partitions"], 2);
    assert_eq!(conflict["instance"], a_id.as_str());
    assert_eq!(conflict["owner"]["instance"], b_id.as_str(), "the owner, from the group's member assignments: {conflict}");
    let error = conflict["error"].as_str().unwrap();
    assert_eq!(
        error,
        format!(
            "player {}'s state is on partition {partition} (of 2), which this instance does not own: instance `{b_id}` (host {}) owns it; ask that instance's HTTP API (its --http-addr) for this player",
            players[theirs],
            conflict["owner"]["host"].as_str().unwrap()
        )
    );
    // The owner answers, and so does A for its own player.
    let (status, view) = get_until(&b, &format!("/api/campaigns/203/players/{}", players[theirs]), |_, _| true);
    assert_eq!((status, view["partition"].clone(), view["found"].clone()), (200, json!(partition), json!(false)));
    let (status, _) = a.request("GET", &format!("/api/campaigns/203/players/{}", players[mine]), None);
    assert_eq!(status, 200);
    // The command line says the same, and exits 1.
    let (code, _, err) = cli_state(&a.http, "203", &players[theirs], &[]);
    assert_eq!((code, err.trim().to_owned()), (1, format!("error: {error}")));
}
