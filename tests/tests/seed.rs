//! The original README scenario, byte for byte: campaign 4711 and the README's event, both
//! produced without a key, give exactly one trigger; a "win" gives none; with `--clock processing`
//! the 2023 window excludes everything today; and the original `config.json` keys are honoured.

use std::time::Duration;

use rtcrm_integration_tests::*;
use serde_json::Value;

const IDLE: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(30);

fn check_status_shape(st: &Value, id: i64, state: &str) {
    assert_eq!(st["campaign_id"].as_i64(), Some(id), "status: {st}");
    assert_eq!(st["state"].as_str(), Some(state), "status: {st}");
    assert!(st["digest"].as_str().is_some_and(|d| !d.is_empty()), "status without a digest: {st}");
    assert!(st["instance"].as_str().is_some_and(|d| !d.is_empty()), "status without an instance: {st}");
    assert!(
        st["at"].as_str().and_then(parse_rfc3339).is_some(),
        "status `at` is not RFC 3339: {st}"
    );
}

#[test]
fn readme_scenario_byte_for_byte() {
    let t = Topics::new("seed");
    let mut p = Processor::start(&t.args());
    let mut status = Reader::new(&t.status);
    let mut triggers = Reader::new(&t.triggers);

    // kcat -b … -t crm-campaigns -P  (no key)
    produce(&t.campaigns, &[Msg::keyless(SEED_CAMPAIGN)]);
    let st = wait_status(&mut status, 4711, "active", WAIT);
    check_status_shape(&st, 4711, "active");
    assert!(st["error"].is_null(), "an accepted campaign's status has error null: {st}");

    // kcat -b … -t events-valid -P  (no key)
    produce(&t.events, &[Msg::keyless(SEED_EVENT)]);
    triggers.read_count(1, IDLE, WAIT);
    assert_eq!(
        triggers.records.len(),
        1,
        "the README event must give exactly one trigger; got {:?}",
        triggers.records.iter().map(|r| r.payload_str()).collect::<Vec<_>>()
    );
    let rec = triggers.records[0].clone();
    assert_eq!(rec.key_str().as_deref(), Some("12345"), "trigger key must be the player id as text");
    let raw = rec.payload_str().unwrap_or_default();
    assert!(
        raw.trim_start().starts_with(r#"{"campaign":"#),
        "the original's two fields come first (campaign, then event): {raw}"
    );
    let v = rec.json();
    let campaign: Value = serde_json::from_str(SEED_CAMPAIGN).unwrap();
    let event: Value = serde_json::from_str(SEED_EVENT).unwrap();
    assert_eq!(v["campaign"], campaign, "trigger.campaign must equal the campaign as received");
    assert_eq!(v["event"], event, "trigger.event must equal the event as received");
    let trigger_id = v["trigger_id"].as_str().unwrap_or_else(|| panic!("trigger without trigger_id: {v}"));
    assert!(!trigger_id.is_empty(), "empty trigger_id: {v}");
    let at = v["triggered_at"].as_str().unwrap_or_else(|| panic!("trigger without triggered_at: {v}"));
    let at_ms = parse_rfc3339(at).unwrap_or_else(|| panic!("triggered_at is not RFC 3339: {at}"));
    assert!((at_ms - now_ms()).abs() < 10 * 60_000, "triggered_at {at} is not about now");

    // The same event with "result":"win" gives nothing.
    let win = SEED_EVENT.replace(r#""result":"loss""#, r#""result":"win""#);
    assert_ne!(win, SEED_EVENT);
    produce(&t.events, &[Msg::keyless(&win)]);
    p.wait_metric_at_least("rtcrm_events_total", 2.0, WAIT);
    triggers.poll_for(IDLE);
    assert_eq!(
        triggers.records.len(),
        1,
        "a win must not trigger the loss campaign; triggers: {:?}",
        triggers.records.iter().map(|r| r.payload_str()).collect::<Vec<_>>()
    );

    // Same (event, campaign) again: the trigger id is deterministic.
    produce(&t.events, &[Msg::keyless(SEED_EVENT)]);
    triggers.read_count(2, IDLE, WAIT);
    assert_eq!(triggers.records.len(), 2, "the loss event produced again triggers again");
    let again = triggers.records[1].json();
    assert_eq!(
        again["trigger_id"].as_str(),
        Some(trigger_id),
        "trigger_id must be deterministic per (event, campaign)"
    );
}

#[test]
fn processing_clock_uses_wall_clock() {
    let t = Topics::new("seed-proc");
    // Campaigns are on the topic before the processor starts (read up to the end at start).
    // 4712: the same campaign with an open window, as a control that the event is evaluated.
    let control = SEED_CAMPAIGN
        .replace("4711", "4712")
        .replace(r#""start_date":"2023-09-01T10:00:00.00Z","end_date":"2023-12-01T10:00:00.00Z","#, "");
    assert!(!control.contains("start_date"));
    produce(&t.campaigns, &[Msg::keyless(SEED_CAMPAIGN), Msg::keyless(&control)]);

    let mut p = Processor::start(&[t.args(), vec!["--clock".into(), "processing".into()]].concat());
    let mut status = Reader::new(&t.status);
    wait_status(&mut status, 4711, "active", WAIT);
    wait_status(&mut status, 4712, "active", WAIT);
    let mut triggers = Reader::new(&t.triggers);

    produce(&t.events, &[Msg::keyless(SEED_EVENT)]);
    p.wait_metric_at_least("rtcrm_events_total", 1.0, WAIT);
    triggers.read_count(1, IDLE, WAIT);
    let ids: Vec<i64> = parse_triggers(&triggers.records).iter().map(|t| t.campaign_id).collect();
    assert_eq!(
        ids,
        vec![4712],
        "with --clock processing, campaign 4711 (window 2023-09-01..2023-12-01) must not match today; \
         only the open-window control 4712 may"
    );
}

#[test]
fn config_json_with_the_original_keys() {
    let t = Topics::new("seed-cfg");
    let cfg = json!({
        "default_parallelism": 2,
        "checkpoint_interval": 10000,
        "checkpoint_dir": "file:///tmp/flink-checkpoints",
        "kafka_bootstrap_servers": broker(),
        "kafka_group_id": t.group,
        "event_topic": t.events,
        "campaign_topic": t.campaigns,
        "trigger_topic": t.triggers,
    });
    let path = log_dir().join(format!("config-{}.json", unique_suffix()));
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();

    // The campaign is on the topic before rtcrm starts (the README's flow, where `kcat -P`
    // created the topics); the keyless-on-a-created-topic case is readme_scenario_byte_for_byte's.
    produce(&t.campaigns, &[Msg::keyless(SEED_CAMPAIGN)]);

    // No --bootstrap-servers, no topic flags: all from config.json; status and DLQ topics from
    // the environment (RTCRM_*), which config.json has no keys for.
    let mut p = Processor::builder("run")
        .no_bootstrap_flag()
        .arg("--config")
        .arg(path.to_str().unwrap())
        .env("RTCRM_STATUS_TOPIC", &t.status)
        .env("RTCRM_DLQ_TOPIC", &t.dlq)
        .start();
    let mut status = Reader::new(&t.status);
    wait_status(&mut status, 4711, "active", WAIT);

    let mut triggers = Reader::new(&t.triggers);
    let d = produce(&t.events, &[Msg::keyless(SEED_EVENT)])[0];
    triggers.read_count(1, IDLE, WAIT);
    let got = parse_triggers(&triggers.records);
    assert_eq!(got.len(), 1, "one trigger on the config.json trigger_topic {}", t.triggers);
    assert_eq!(got[0].campaign_id, 4711);
    p.assert_running();

    // kafka_group_id: the processor commits the event's offset under that group.
    let committed = wait_until(
        &format!("group {} to commit offset {} on {}", t.group, d.offset + 1, t.events),
        WAIT,
        || {
            let c = committed_offsets(&t.group, &t.events);
            (c[0] == Some(d.offset + 1)).then_some(c)
        },
    );
    assert_eq!(committed, vec![Some(d.offset + 1)]);
}
