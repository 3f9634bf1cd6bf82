//! `POST /api/explain` and runtime errors in view (spec §13, issue 9), against `rtcrm run` on a
//! real broker: explain names the deciding check of every campaign of the event's game —
//! disabled, other event name, before start, after end, filter false, filter throwing (with its
//! message), trigger — without producing anything or touching the processor's counters; then
//! real events make the throwing filter fail, and its message, partition and offset appear in
//! `/api/campaigns` and, once (rate-limited), in the log at warning level.

use rtcrm_integration_tests::*;
use serde_json::Value;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn campaign(id: i64, changes: Value) -> Value {
    let mut c = json!({"campaign_id": id, "enabled": true, "game": "foe", "event_name": "fight",
        "start_date": "2023-09-01T10:00:00.00Z", "end_date": "2023-12-01T10:00:00.00Z", "filter": "e => true"});
    for (k, v) in changes.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

#[test]
fn explain_names_the_deciding_check_and_runtime_errors_are_in_view() {
    let t = Topics::new("explain");
    let campaigns = [
        campaign(1, json!({"enabled": false})),
        campaign(2, json!({"event_name": "login"})),
        campaign(3, json!({"start_date": "2023-12-01T00:00:00Z", "end_date": null})),
        campaign(4, json!({"start_date": null, "end_date": "2023-11-01T00:00:00Z"})),
        campaign(5, json!({"filter": "e => e.data.result === 'win'"})),
        campaign(6, json!({"filter": "function(e) { return e.data.nope.deeper }"})),
        campaign(7, json!({"filter": "e => e.data.result === 'loss'"})),
        campaign(8, json!({"game": "elvenar"})),
    ];
    produce(&t.campaigns, &campaigns.iter().map(|c| Msg::keyed(c["campaign_id"].to_string(), c.to_string())).collect::<Vec<_>>());
    let p = Processor::start(&t.args());
    let mut status = Reader::new(&t.status);
    for id in 1..=8 {
        wait_status(&mut status, id, "active", WAIT);
    }

    let event = seed_event("explain-1", "loss");
    let (code, x) = p.request("POST", "/api/explain", Some(&event.to_string()));
    assert_eq!(code, 200, "{x}");
    assert_eq!((x["game"].as_str(), x["time"].as_str(), x["time_source"].as_str()), (Some("foe"), Some("2023-11-20T11:00:00Z"), Some("created_at")));
    assert_eq!((x["player"].as_str(), x["triggers"].as_u64(), x["clock"].as_str()), (Some("12345"), Some(1), Some("event")));
    let decisions: Vec<(i64, &str)> = x["campaigns"].as_array().unwrap().iter().map(|c| (c["campaign_id"].as_i64().unwrap(), c["decision"].as_str().unwrap())).collect();
    // Campaign 8 is of another game: not listed.
    assert_eq!(
        decisions,
        [(1, "disabled"), (2, "other_event_name"), (3, "before_start"), (4, "after_end"), (5, "filter_false"), (6, "filter_error"), (7, "trigger")]
    );
    let c = |id: i64| x["campaigns"].as_array().unwrap().iter().find(|c| c["campaign_id"] == id).unwrap().clone();
    assert_eq!(c(1)["reason"], "the campaign is disabled (enabled: false)");
    assert_eq!(c(2)["reason"], "the event's event_name `fight` is not the campaign's `login`");
    assert_eq!(c(3)["reason"], "the event's time 2023-11-20T11:00:00Z (created_at) is not after start_date 2023-12-01T00:00:00Z");
    assert_eq!(c(4)["reason"], "the event's time 2023-11-20T11:00:00Z (created_at) is not before end_date 2023-11-01T00:00:00Z");
    assert_eq!(c(5)["reason"], "the window holds the event's time 2023-11-20T11:00:00Z (created_at), and the filter did not return true");
    assert_eq!((c(5)["matched"].as_bool(), c(7)["matched"].as_bool()), (Some(false), Some(true)));
    assert!(c(5)["fuel"].as_u64().unwrap() > 0 && c(7)["fuel"].as_u64().unwrap() > 0);
    assert_eq!(c(6)["error"]["kind"], "exception");
    let message = c(6)["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.starts_with("TypeError: "), "{message}");
    assert_eq!(c(6)["reason"], format!("the filter failed (exception): {message}"));
    assert_eq!(c(3)["start_date"], "2023-12-01T00:00:00Z");

    // Another event name: campaign 2 decides differently.
    let mut login = seed_event("explain-2", "loss");
    login["event_name"] = json!("login");
    let (_, x2) = p.request("POST", "/api/explain", Some(&login.to_string()));
    assert_eq!(x2["campaigns"][1]["decision"], "trigger", "{x2}");
    assert_eq!(x2["campaigns"][0]["decision"], "disabled");
    assert!(x2["campaigns"].as_array().unwrap()[2..].iter().all(|c| c["decision"] == "other_event_name"), "{x2}");
    // No game: nothing can match, and it says so.
    let (code, none) = p.request("POST", "/api/explain", Some(r#"{"event_name":"fight"}"#));
    assert_eq!((code, none["campaigns"].clone(), none["note"].clone()), (200, json!([]), json!("the event has no string `game`: no campaign can match it")));
    // Not an event.
    let (code, e) = p.request("POST", "/api/explain", Some("[1]"));
    assert_eq!((code, e["error"].as_str()), (400, Some("the event must be a JSON object, not an array")));
    let (code, e) = p.request("POST", "/api/explain", Some("{\"game\":"));
    assert_eq!(code, 400);
    assert!(e["error"].as_str().unwrap().starts_with("the event is not valid JSON: "), "{e}");

    // Explain produced nothing and left the processor's counters alone.
    assert_eq!(Reader::new(&t.triggers).poll_for(Duration::from_secs(2)), 0, "explain produces no trigger");
    assert_eq!(p.metric("rtcrm_evaluations_total").unwrap_or(0.0), 0.0);
    let (_, list) = p.request("GET", "/api/campaigns", None);
    for view in list["campaigns"].as_array().unwrap() {
        assert_eq!(view["counters"]["evaluations"], 0, "{view}");
        assert_eq!(view["counters"]["last_error"], Value::Null, "{view}");
        assert_eq!(view["state"], "active", "explain never quarantines: {view}");
    }

    // Real events: campaign 6 fails on each; its last error names the event.
    let delivered = produce(&t.events, &(0..3).map(|i| Msg::keyed("12345", seed_event(&format!("real-{i}"), "loss").to_string())).collect::<Vec<_>>());
    let mut triggers = Reader::new(&t.triggers);
    triggers.read_count(3, Duration::from_millis(500), WAIT);
    assert_eq!(trigger_pairs(&triggers.records).0.iter().filter(|(c, _)| *c == 7).count(), 3);
    let view = wait_until("campaign 6's three failures in /api/campaigns/6", WAIT, || {
        let (_, v) = p.request("GET", "/api/campaigns/6", None);
        (v["counters"]["errors"]["exception"] == 3).then_some(v)
    });
    let last = &view["counters"]["last_error"];
    assert_eq!(last["kind"], "exception", "{view}");
    assert_eq!(last["message"], message.as_str());
    assert_eq!((last["partition"].as_i64(), last["offset"].as_i64()), (Some(i64::from(delivered[2].partition)), Some(delivered[2].offset)));
    let at = parse_rfc3339(last["at"].as_str().unwrap()).unwrap();
    assert!((now_ms() - at).abs() < 60_000, "{last}");
    let (_, list) = p.request("GET", "/api/campaigns", None);
    let in_list = list["campaigns"].as_array().unwrap().iter().find(|c| c["campaign_id"] == 6).unwrap();
    assert_eq!(&in_list["counters"]["last_error"], last);
    let healthy = list["campaigns"].as_array().unwrap().iter().find(|c| c["campaign_id"] == 7).unwrap();
    assert_eq!(healthy["counters"]["last_error"], Value::Null);

    // The log says it at warning level, once for the three failures (rate-limited per campaign).
    let log = p.log_tail(usize::MAX);
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN") && l.contains("evaluation failed") && l.contains("campaign=6 ")).collect();
    assert_eq!(warnings.len(), 1, "one warning for campaign 6:\n{}", warnings.join("\n"));
    let w = warnings[0];
    assert!(w.contains("kind=exception") && w.contains(&message), "{w}");
    assert!(w.contains(&format!("partition={}", delivered[0].partition)) && w.contains(&format!("offset={}", delivered[0].offset)), "{w}");
}
