//! `POST /api/backtest` (spec §13, issue 9) on `rtcrm run` against a real broker: a job reports
//! the same counts as the processor's own triggers, and applies a campaign's controls; it is bounded by events and by seconds;
//! two run at once (a third is refused); `DELETE` cancels a running one (its counts so far,
//! `cancelled`) and forgets a finished one; bad requests are refused with the reason; and no
//! backtest produces anything.

use rtcrm_integration_tests::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);
const LOSSES: &str = r#"{"campaign_id":7,"enabled":true,"game":"foe","event_name":"fight","start_date":"2023-09-01T10:00:00.00Z","end_date":"2023-12-01T10:00:00.00Z","filter":"e => e.data.result === 'loss'"}"#;
/// About 1 ms of fuel per event, on the filler logins.
const SLOW: &str = r#"{"campaign_id":99,"enabled":true,"game":"foe","event_name":"login","filter":"e => { let x = 0; for (let i = 0; i < 10000; i++) { x += i % 7; } return x < 0; }"}"#;
const FILLER: usize = 4000;

fn body(campaign: &str, extra: &str) -> String {
    format!(r#"{{"campaign": {campaign}, "from": "2000-01-01"{extra}}}"#)
}

/// Polls the job until it is no longer running.
fn finished(p: &Processor, id: &str) -> Value {
    wait_until(&format!("backtest {id} to finish"), WAIT, || {
        let (code, job) = p.request("GET", &format!("/api/backtest/{id}"), None);
        assert_eq!(code, 200, "{job}");
        (job["state"] != "running").then_some(job)
    })
}

fn start(p: &Processor, body: &str) -> String {
    let (code, job) = p.request("POST", "/api/backtest", Some(body));
    assert_eq!(code, 202, "{job}");
    assert_eq!(job["state"], "running", "{job}");
    assert_eq!(job["report"], Value::Null);
    job["id"].as_str().unwrap().to_owned()
}

#[test]
fn api_backtests_are_exact_bounded_cancellable_and_produce_nothing() {
    let t = Topics::new("btapi");
    produce(&t.campaigns, &[Msg::keyed("7", LOSSES)]);
    let p = Processor::start(&t.args());
    wait_status(&mut Reader::new(&t.status), 7, "active", WAIT);

    // 40 fights (25 lost, by 10 players), then the filler logins.
    let mut rng = Rng::new(7);
    let mut fights = Vec::new();
    let mut losers = BTreeSet::new();
    for i in 0..40 {
        let loss = i < 25;
        let mut e = seed_event(&format!("api-{i}"), if loss { "loss" } else { "win" });
        let player = rng.range(1, 10);
        e["player_id"] = player.into();
        if loss {
            losers.insert(player);
        }
        fights.push(Msg::keyed(player.to_string(), e.to_string()));
    }
    produce(&t.events, &fights);
    let mut triggers = Reader::new(&t.triggers);
    triggers.read_count(25, Duration::from_millis(500), WAIT);
    assert_eq!(triggers.records.len(), 25, "the processor's own triggers");

    // A job over the topic: the processor's counts, exactly.
    let id = start(&p, &body(LOSSES, ""));
    let job = finished(&p, &id);
    assert_eq!(job["state"], "done", "{job}");
    let r = &job["report"];
    assert_eq!((r["events_read"].as_u64(), r["candidates"].as_u64(), r["filter_matches"].as_u64(), r["triggers"].as_u64()), (Some(40), Some(40), Some(25), Some(25)));
    assert_eq!(r["unique_players"].as_u64(), Some(losers.len() as u64));
    assert_eq!((r["stopped"].clone(), job["progress"]["events"].as_u64()), (Value::Null, Some(40)));
    assert_eq!(r["source"]["topic"], t.events.as_str());
    let (code, list) = p.request("GET", "/api/backtest", None);
    assert_eq!(code, 200);
    assert!(list["backtests"].as_array().unwrap().iter().any(|j| j["id"] == id.as_str() && j["report"].is_null()), "{list}");

    // With a control (spec §12): at most one trigger per player, from empty per-player state.
    let capped = LOSSES.replace(r#""filter":"#, r#""max_triggers_per_player":1,"filter":"#);
    let job = finished(&p, &start(&p, &body(&capped, "")));
    let r = &job["report"];
    let players = losers.len() as u64;
    assert_eq!(
        (r["filter_matches"].as_u64(), r["triggers"].as_u64(), r["suppressed_cap"].as_u64(), r["unique_players"].as_u64()),
        (Some(25), Some(players), Some(25 - players), Some(players)),
        "{r}"
    );
    assert_eq!(r["controls"], "at most 1 trigger per player");

    // Bounded by events.
    let job = finished(&p, &start(&p, &body(LOSSES, r#", "max_events": 5"#)));
    assert_eq!((job["state"].as_str(), job["report"]["stopped"].as_str(), job["report"]["events_read"].as_u64()), (Some("done"), Some("max_events"), Some(5)));

    // Refused requests, with the reason.
    let refused = |body: &str, code: u16, error: &str| {
        let (got, answer) = p.request("POST", "/api/backtest", Some(body));
        assert_eq!(got, code, "{body}: {answer}");
        assert!(answer["error"].as_str().unwrap_or_default().contains(error), "{body}: expected {error:?} in {answer}");
        answer
    };
    refused("{\"from\": \"2000-01-01\"}", 400, "`campaign` is missing");
    refused("{\"campaign\": 7}", 400, "`campaign` must be the campaign JSON object, not a number");
    refused("[]", 400, "the backtest request must be a JSON object, not an array");
    refused("{\"campaign\":", 400, "the backtest request is not valid JSON");
    refused(&body(r#"{"campaign_id":8,"enabled":true,"event_name":"fight","filter":"e => true"}"#, ""), 400, "campaign: game is missing");
    let syntax = refused(&body(r#"{"campaign_id":8,"enabled":true,"game":"foe","event_name":"fight","filter":"e => e.data.result === ;"}"#, ""), 400, "filter: SyntaxError");
    assert_eq!((syntax["line"].as_u64(), syntax["campaign_id"].as_i64()), (Some(1), Some(8)));
    assert!(syntax["column"].as_u64().is_some(), "{syntax}");
    refused(&format!(r#"{{"campaign": {LOSSES}, "from": "yesterday"}}"#), 400, "`from`: `yesterday` is not a time: use an RFC 3339 time");
    refused(&format!(r#"{{"campaign": {LOSSES}, "from": "2024-01-02", "to": "2024-01-01"}}"#), 400, "--from 2024-01-02T00:00:00Z is not before --to 2024-01-01T00:00:00Z");
    refused(&body(LOSSES, r#", "max_events": 0"#), 400, "`max_events` 0 must be an integer from 1 to 20000000");
    refused(&body(LOSSES, r#", "max_seconds": 601"#), 400, "`max_seconds` 601 must be an integer from 1 to 600");
    let (code, e) = p.request("GET", "/api/backtest/999999", None);
    assert_eq!((code, e["error"].as_str()), (404, Some("backtest `999999` is unknown (finished backtests are kept 15 min)")));

    // Slow jobs over the filler: bounded by seconds, two at a time, cancellable.
    let logins: Vec<Msg> = (0..FILLER)
        .map(|i| Msg::keyed(i.to_string(), json!({"game": "foe", "event_name": "login", "player_id": i, "event_id": format!("l-{i}"), "created_at": "2023-11-20T11:00:00Z"}).to_string()))
        .collect();
    produce(&t.events, &logins);
    let total = (40 + FILLER) as u64;
    let t0 = Instant::now();
    let job = finished(&p, &start(&p, &body(SLOW, r#", "max_seconds": 1"#)));
    assert_eq!((job["state"].as_str(), job["report"]["stopped"].as_str()), (Some("done"), Some("max_seconds")), "{job}");
    let read = job["report"]["events_read"].as_u64().unwrap();
    assert!(read > 40 && read < total, "stopped part-way: {read} of {total}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:.1?}", t0.elapsed());

    let a = start(&p, &body(SLOW, ""));
    let b = start(&p, &body(SLOW, ""));
    refused(&body(SLOW, ""), 429, "2 backtests are running already; wait for one to finish or cancel it (DELETE /api/backtest/{id})");
    wait_until("backtest a to decide events", WAIT, || {
        let (_, job) = p.request("GET", &format!("/api/backtest/{a}"), None);
        (job["progress"]["events"].as_u64().unwrap() > 40).then_some(())
    });
    for id in [&a, &b] {
        let (code, job) = p.request("DELETE", &format!("/api/backtest/{id}"), None);
        assert_eq!(code, 200, "{job}");
        assert_eq!((job["state"].as_str(), job["report"]["stopped"].as_str()), (Some("cancelled"), Some("cancelled")), "{job}");
        let read = job["report"]["events_read"].as_u64().unwrap();
        assert!(read < total, "cancelled part-way: {read} of {total}");
        let (_, again) = p.request("GET", &format!("/api/backtest/{id}"), None);
        assert_eq!(again["state"], "cancelled");
    }
    // Room again; DELETE of a finished job forgets it.
    let c = start(&p, &body(LOSSES, r#", "max_events": 1"#));
    finished(&p, &c);
    assert_eq!(p.request("DELETE", &format!("/api/backtest/{c}"), None).0, 200);
    assert_eq!(p.request("GET", &format!("/api/backtest/{c}"), None).0, 404);

    // Nothing was produced by any backtest: the triggers topic holds the processor's 25.
    let mut all = Reader::new(&t.triggers);
    all.poll_for(Duration::from_secs(2));
    assert_eq!(all.records.len(), 25, "no backtest produced a trigger");
}
