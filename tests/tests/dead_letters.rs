//! Malformed events go to the dead-letter topic with the original key and bytes and headers
//! naming the error and the source; the valid event after them still triggers.

use std::time::Duration;

use rtcrm_integration_tests::*;

const IDLE: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(30);

#[test]
fn malformed_events_are_dead_lettered() {
    let t = Topics::new("dlq");
    produce(&t.campaigns, &[Msg::keyless(SEED_CAMPAIGN)]);
    let mut p = Processor::start(&t.args());
    let mut status = Reader::new(&t.status);
    wait_status(&mut status, 4711, "active", WAIT);

    // (key, value, what it is)
    #[allow(clippy::type_complexity)]
    let bad: Vec<(Option<&[u8]>, &[u8], &str)> = vec![
        (Some(b"player-1".as_slice()), br#"{"game":"foe","event_name":"fight","data":{"result":"loss""#.as_slice(), "truncated JSON"),
        (Some(b"player-2".as_slice()), b"[1,2]".as_slice(), "a JSON array"),
        (None, b"\xff\xfe{\"game\":\"foe\"}".as_slice(), "bytes that are not UTF-8"),
        (Some(b"player-4".as_slice()), b"\"loss\"".as_slice(), "a JSON string"),
    ];
    let mut msgs: Vec<Msg> = bad
        .iter()
        .map(|(k, v, _)| match k {
            Some(k) => Msg::keyed(k, v),
            None => Msg::keyless(v),
        })
        .collect();
    msgs.push(Msg::keyed("12345", seed_event("dlq-ok", "loss").to_string()));
    let delivered = produce(&t.events, &msgs);

    let mut triggers = Reader::new(&t.triggers);
    triggers.read_count(1, IDLE, WAIT);
    let got = parse_triggers(&triggers.records);
    assert_eq!(got.len(), 1, "the valid event after the malformed ones gives exactly one trigger");
    assert_eq!(got[0].event_id, "dlq-ok");
    p.assert_running();

    let mut dlq = Reader::new(&t.dlq);
    dlq.read_count(bad.len(), IDLE, WAIT);
    assert_eq!(
        dlq.records.len(),
        bad.len(),
        "every malformed event, and only those, on the DLQ; got {:?}",
        dlq.records.iter().map(|r| r.payload_str()).collect::<Vec<_>>()
    );
    for (i, (key, bytes, what)) in bad.iter().enumerate() {
        let d = delivered[i];
        let r = dlq
            .records
            .iter()
            .find(|r| r.header("rtcrm.source.offset") == Some(d.offset.to_string()))
            .unwrap_or_else(|| {
                panic!(
                    "no DLQ record with header rtcrm.source.offset = {} ({what}); headers seen: {:?}",
                    d.offset,
                    dlq.records.iter().map(|r| &r.headers).collect::<Vec<_>>()
                )
            });
        assert_eq!(r.payload.as_deref(), Some(*bytes), "DLQ payload of {what} must be the original bytes");
        match key {
            Some(k) => assert_eq!(r.key.as_deref(), Some(*k), "DLQ key of {what} must be the original key"),
            None => assert!(r.key.as_deref().unwrap_or(b"").is_empty(), "keyless {what} must stay keyless: {:?}", r.key),
        }
        assert_eq!(r.header("rtcrm.source.topic").as_deref(), Some(t.events.as_str()), "source topic of {what}");
        assert_eq!(r.header("rtcrm.source.partition"), Some(d.partition.to_string()), "source partition of {what}");
        let err = r.header("rtcrm.error").unwrap_or_default();
        assert!(!err.trim().is_empty(), "{what}: header rtcrm.error must give the reason; headers {:?}", r.headers);
        println!("{what}: rtcrm.error = {err:?}");
    }
}
