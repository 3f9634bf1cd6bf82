//! A partition whose committed offset the broker holds back (spec §8: no silent stall). After an
//! outage, an exactly-once instance that died inside a transaction leaves offsets pending in the
//! group. Until that transaction is aborted, the broker answers the next owner's OffsetFetch
//! with UNSTABLE_OFFSET_COMMIT and librdkafka asks again, while rtcrm restores the partition's
//! state. Here a transaction is left open on purpose, with its offsets for the group, before
//! rtcrm starts. Every trigger must come once the broker aborts it, with none lost and none
//! doubled.

use rtcrm_integration_tests::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The broker aborts the dangling transaction this long after it began.
const TRANSACTION_TIMEOUT_MS: u64 = 10_000;

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
    let complete = |r: &[Record]| parse_triggers(r).iter().map(|t| t.value["trigger_id"].as_str().unwrap_or_default().to_owned()).collect::<BTreeSet<_>>().is_superset(&expected);
    triggers.read_until(complete, Duration::from_secs(2), Duration::from_secs(90));
    let got: Vec<String> = parse_triggers(&triggers.records).iter().map(|t| t.value["trigger_id"].as_str().unwrap_or_default().to_owned()).collect();
    let set: BTreeSet<String> = got.iter().cloned().collect();
    println!("{} of {} triggers, {:.1?} after the transaction began (the broker aborts it after {} ms)", set.len(), expected.len(), opened.elapsed(), TRANSACTION_TIMEOUT_MS);
    assert_eq!(set.difference(&expected).count(), 0, "unexpected triggers");
    assert_eq!(expected.difference(&set).count(), 0, "triggers missing: a partition never started");
    assert_eq!(got.len(), set.len(), "duplicates under exactly-once");
    drop(dangling);
    assert_eq!(p.sigterm().code(), Some(0));
}
