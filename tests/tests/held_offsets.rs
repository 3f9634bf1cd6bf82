//! A partition whose committed offset the broker holds back (spec §8: no silent stall). After an
//! outage, an exactly-once instance that died inside a transaction leaves offsets pending in the
//! group. Until that transaction ends, the broker answers the next owner's OffsetFetch with
//! UNSTABLE_OFFSET_COMMIT and librdkafka asks again, while rtcrm restores the partition's state.
//! Here another producer's transaction is left open on purpose, with its offsets for the group,
//! before rtcrm starts. While it stays open, nothing may be consumed and `/healthz` must say so,
//! naming the partitions; rtcrm's own clearing of abandoned offset commits (an aborted empty
//! transaction of its producer id) must leave another producer's commit alone. Once that
//! transaction is aborted, every trigger must come, none doubled, and `/healthz` is 200 again.

use rtcrm_integration_tests::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The broker would abort the dangling transaction this long after it began (the test aborts
/// it before).
const TRANSACTION_TIMEOUT_MS: u64 = 180_000;

/// The value of `rtcrm_transactions_total{kind="<kind>"}`.
fn transactions(p: &Processor, kind: &str) -> f64 {
    let series = format!("rtcrm_transactions_total{{kind=\"{kind}\"}}");
    p.metrics().lines().find_map(|l| l.strip_prefix(series.as_str())).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

#[test]
fn partitions_start_once_a_transaction_holding_their_committed_offsets_is_aborted() {
    let t = Topics::new("heldoff");
    create_topic(&t.events, 2);
    produce(&t.campaigns, &[Msg::keyless(SEED_CAMPAIGN)]);
    let ids: Vec<String> = (0..200).map(|i| format!("held-{i:03}")).collect();
    let msgs: Vec<Msg> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| Msg { partition: Some((i % 2) as i32), ..Msg::keyless(seed_event(id, "loss").to_string()) })
        .collect();
    produce(&t.events, &msgs);
    let expected: BTreeSet<String> = ids.iter().map(|id| format!("4711:{id}")).collect();

    // A transaction that sends offset 0 of both partitions for rtcrm's group, and never ends.
    let group_member: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("group.id", &t.group)
        .create()
        .expect("create a consumer for the group's metadata");
    let dangling: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("transactional.id", format!("dangling-{}", unique_suffix()))
        .set("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS.to_string())
        .create()
        .expect("create the transactional producer");
    dangling.init_transactions(Duration::from_secs(30)).expect("init_transactions");
    dangling.begin_transaction().expect("begin_transaction");
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset(&t.events, p, Offset::Offset(0)).unwrap();
    }
    let metadata = group_member.group_metadata().expect("the group's metadata");
    dangling.send_offsets_to_transaction(&tpl, &metadata, Duration::from_secs(30)).expect("send_offsets_to_transaction");
    let opened = Instant::now();
    let pending = committed_offsets_on(&broker(), &t.group, &t.events, "read_committed");
    println!("OffsetFetch (stable) while the transaction is open: {pending:?}");
    assert!(
        !matches!(&pending, Ok(offsets) if offsets.iter().all(Option::is_some)),
        "the broker holds the offsets back while the transaction is open: {pending:?}"
    );

    let mut p = Processor::builder("run").args(t.args()).args(["--delivery", "exactly-once"]).start();
    let mut triggers = Reader::read_committed(&t.triggers);

    // Held: nothing is consumed, and /healthz names both partitions once they have waited 30 s.
    let unhealthy = loop {
        p.assert_running();
        let (code, body) = p.get("/healthz");
        if code == 503 && body.contains("committed offsets") {
            break body;
        }
        if opened.elapsed() > Duration::from_secs(75) {
            panic!("/healthz did not report the held partitions within 75 s; last: {code} {body}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("{:.1?} after the transaction began: /healthz 503 {unhealthy}", opened.elapsed());
    for partition in 0..2 {
        assert!(unhealthy.contains(&format!("{}[{partition}]", t.events)), "/healthz names partition {partition}: {unhealthy}");
    }
    triggers.poll_for(Duration::from_secs(1));
    assert_eq!(parse_triggers(&triggers.records).len(), 0, "no event is evaluated while its partition's offset is held");
    let cleared = transactions(&p, "abandoned_offsets_cleared");
    println!("abandoned offset commits cleared {cleared} times so far");
    assert!(cleared >= 2.0, "rtcrm clears its own abandoned offset commits at start and again while a partition waits: {cleared}");

    dangling.abort_transaction(Duration::from_secs(30)).expect("abort the dangling transaction");
    let aborted = Instant::now();
    let complete = |r: &[Record]| parse_triggers(r).iter().map(|t| t.value["trigger_id"].as_str().unwrap_or_default().to_owned()).collect::<BTreeSet<_>>().is_superset(&expected);
    triggers.read_until(complete, Duration::from_secs(2), Duration::from_secs(90));
    let got: Vec<String> = parse_triggers(&triggers.records).iter().map(|t| t.value["trigger_id"].as_str().unwrap_or_default().to_owned()).collect();
    let set: BTreeSet<String> = got.iter().cloned().collect();
    println!("{} of {} triggers, {:.1?} after the transaction was aborted", set.len(), expected.len(), aborted.elapsed());
    assert_eq!(set.difference(&expected).count(), 0, "unexpected triggers");
    assert_eq!(expected.difference(&set).count(), 0, "triggers missing: a partition never started");
    assert_eq!(got.len(), set.len(), "duplicates under exactly-once");
    let healthy_again = Instant::now();
    loop {
        let (code, body) = p.get("/healthz");
        if code == 200 {
            break;
        }
        assert!(healthy_again.elapsed() < Duration::from_secs(20), "/healthz stays {code} after the partitions started: {body}");
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(dangling);
    assert_eq!(p.sigterm().code(), Some(0));
}
