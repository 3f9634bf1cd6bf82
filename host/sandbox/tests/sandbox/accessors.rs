//! The event API of spec §5, each accessor with a positive and a negative case, on the
//! original system's example event.

use crate::{verdict, SEED_EVENT, SEED_FILTER};

#[test]
fn the_original_filter_matches_the_original_event() {
    assert!(verdict(SEED_FILTER, SEED_EVENT));
}

#[test]
fn the_original_filter_does_not_match_a_win() {
    let win = SEED_EVENT.replace(r#""result":"loss""#, r#""result":"win""#);
    assert!(!verdict(SEED_FILTER, &win));
}

/// (accessor expression, its value on the seed event as a JS literal, another value).
const ACCESSORS: &[(&str, &str, &str)] = &[
    // Plain snake_case keys.
    ("event.schema_version", "'2023110110010101'", "'1'"),
    ("event.event_id", "'7a8d0614-4e8e-4464-b439-36e31441a040'", "'x'"),
    ("event.game", "'foe'", "'elvenar'"),
    ("event.market", "'de'", "'fr'"),
    ("event.player_id", "12345", "12346"),
    ("event.event_name", "'fight'", "'login'"),
    ("event.data.result", "'loss'", "'win'"),
    // Bean getters for every field of the original event.
    ("event.getSchemaVersion()", "'2023110110010101'", "'x'"),
    ("event.getEventId()", "'7a8d0614-4e8e-4464-b439-36e31441a040'", "'x'"),
    ("event.getSystemType()", "'game'", "'tool'"),
    ("event.getSystemName()", "'foe-backend'", "'x'"),
    ("event.getGame()", "'foe'", "'x'"),
    ("event.getMarket()", "'de'", "'x'"),
    ("event.getPlayerId()", "12345", "1"),
    ("event.getEventType()", "'progress'", "'x'"),
    ("event.getEventName()", "'fight'", "'x'"),
    ("event.getEventScope()", "'user'", "'x'"),
    ("event.getCreatedAt()", "'2023-11-20T11:00:00.00Z'", "'x'"),
    ("event.getReceivedAt()", "'2023-11-20T11:00:02.00Z'", "'x'"),
    ("event.getHostname()", "'foe-backend-1.ig.com'", "'x'"),
    ("event.getData().get('result')", "'loss'", "'win'"),
    ("event.getContext().size()", "0", "1"),
    // camelCase aliases.
    ("event.eventName", "'fight'", "'x'"),
    ("event.playerId", "12345", "1"),
    ("event.schemaVersion", "'2023110110010101'", "'x'"),
    ("event.systemName", "'foe-backend'", "'x'"),
    ("event.eventScope", "'user'", "'x'"),
    ("event.receivedAt", "'2023-11-20T11:00:02.00Z'", "'x'"),
    // java.util.Map methods on data and context.
    ("event.data.get('result')", "'loss'", "'win'"),
    ("event.data.get('missing')", "null", "undefined"),
    ("event.data.containsKey('result')", "true", "false"),
    ("event.data.containsKey('missing')", "false", "true"),
    ("event.data.size()", "1", "2"),
    ("event.data.isEmpty()", "false", "true"),
    ("event.context.isEmpty()", "true", "false"),
    ("event.context.size()", "0", "1"),
    ("event.context.containsKey('x')", "false", "true"),
    ("event.context.get('x')", "null", "'x'"),
    ("event.getData().containsKey('result')", "true", "false"),
    ("event.getContext().isEmpty()", "true", "false"),
    // A getter for a field the event lacks returns null, as the Java bean did.
    ("event.getLevel()", "null", "undefined"),
    ("event.level", "undefined", "null"),
];

#[test]
fn every_accessor_reads_the_right_value() {
    for (expr, value, _) in ACCESSORS {
        let source = format!("function(event) {{ return {expr} === {value} }}");
        assert!(verdict(&source, SEED_EVENT), "expected {expr} === {value}");
    }
}

#[test]
fn every_accessor_rejects_a_wrong_value() {
    for (expr, _, other) in ACCESSORS {
        let source = format!("function(event) {{ return {expr} === {other} }}");
        assert!(!verdict(&source, SEED_EVENT), "expected {expr} !== {other}");
    }
}

#[test]
fn nested_objects_are_maps_too() {
    let ev = r#"{"data":{"player":{"level":23,"tags":[{"vip":true}]}}}"#;
    assert!(verdict("e => e.getData().get('player').get('level') === 23", ev));
    assert!(verdict("e => e.data.player.tags[0].get('vip') === true", ev));
    assert!(!verdict("e => e.getData().get('player').containsKey('xp')", ev));
}

#[test]
fn the_event_is_a_plain_object_with_the_events_own_keys() {
    let keys = "['schema_version','event_id','system_type','system_name','game','market','player_id','event_type','event_name','event_scope','created_at','received_at','hostname','context','data']";
    assert!(verdict(&format!("e => JSON.stringify(Object.keys(e)) === JSON.stringify({keys})"), SEED_EVENT));
    let stringified = format!("e => JSON.stringify(e) === {}", serde_json::to_string(SEED_EVENT).unwrap());
    assert!(verdict(&stringified, SEED_EVENT), "JSON.stringify(event) reproduces the event");
    assert!(verdict("e => 'game' in e && !('nope' in e) && e.hasOwnProperty('data') && !e.hasOwnProperty('getGame')", SEED_EVENT));
    assert!(verdict("e => { let n = 0; for (const k in e) n++; return n === 15 }", SEED_EVENT));
    assert!(verdict("e => Object.entries(e.data).length === 1 && e.data.result.length === 4", SEED_EVENT));
    assert!(!verdict("e => Object.keys(e).includes('getData')", SEED_EVENT));
}

#[test]
fn unknown_fields_reach_the_filter_with_getters_and_aliases() {
    let ev = r#"{"game":"foe","vip_tier":3,"tags":["a","b"]}"#;
    assert!(verdict("e => e.vip_tier === 3 && e.vipTier === 3 && e.getVipTier() === 3", ev));
    assert!(verdict("e => e.tags.includes('b')", ev));
    assert!(!verdict("e => e.tags.includes('c')", ev));
}

#[test]
fn writes_and_deletes_change_only_this_evaluation() {
    let mut f = crate::filter(
        "e => { const before = e.game === 'foe'; e.game = 'x'; delete e.market; e.extra = 1; \
         return before && e.game === 'x' && e.market === undefined && !('market' in e) \
         && Object.keys(e).includes('extra') && !Object.keys(e).includes('market') }",
    );
    let ev = crate::event(crate::SEED_EVENT);
    assert!(f.eval(&ev).unwrap().matched);
    // The next evaluation sees the event as it is again.
    assert!(f.eval(&ev).unwrap().matched);
}

#[test]
fn anything_but_boolean_true_is_no_match() {
    for source in ["e => 1", "e => 'true'", "e => ({})", "e => undefined", "e => [true]", "async e => true", "e => new Boolean(true)"] {
        assert!(!verdict(source, SEED_EVENT), "{source} must not match");
    }
    assert!(verdict("e => !!1", SEED_EVENT));
}

#[test]
fn field_values_read_exactly_as_json_parse_reads_them() {
    // The runtime builds common values without the JSON parser; each must equal JSON.parse's.
    let values = [
        r#""plain""#, r#""esc\"aped\n\u00e9""#, r#""ünïcödé 🎮""#, r#""""#,
        "0", "-0", "42", "-17", "2147483647", "2147483648", "12345678901234", "1.5", "-2.5e-3", "1E3", "1e400",
        "true", "false", "null",
        "{}", "[]", r#"{"a":1}"#, r#"{ "a" : "x" , "b" : -1.25 , "c" : null , "d" : true }"#,
        r#"{"a":1,"a":2}"#, r#"{"k\"q":1}"#, r#"{"s":"a\\b","t":"}"}"#, r#"{"n":{"m":[1,{"x":2}]}}"#, r#"[1,"two",{"three":3}]"#,
    ];
    for value in values {
        let ev = format!(r#"{{"v":{value}}}"#);
        let literal = serde_json::to_string(value).unwrap();
        let source = format!(
            "e => {{ const want = JSON.parse({literal}); const got = e.v; \
             return JSON.stringify(got) === JSON.stringify(want) && typeof got === typeof want \
             && Object.is(got, want) === (typeof want !== 'object' || want === null) }}"
        );
        assert!(verdict(&source, &ev), "field value {value} must read as JSON.parse reads it");
    }
}
