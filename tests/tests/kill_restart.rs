//! Two instances in one group under steady load; one of them is SIGKILLed (no chance to drain
//! or commit) and restarted 10 times at random moments. At-least-once loses nothing
//! (duplicates allowed, with the same trigger_id); exactly-once loses nothing and duplicates
//! nothing for a read_committed reader. Static membership (an explicit `--instance-id`) gives
//! the restarted instance its partitions back at once.

use rtcrm_integration_tests::faults::{expected_4711, one_at_a_time, Load, Tally};
use rtcrm_integration_tests::*;
use std::time::Duration;

const KILLS: usize = 10;

fn kill_and_restart_ten_times(delivery: &str) -> Tally {
    let t = Topics::new(&format!("kill-{delivery}"));
    create_topic(&t.events, 4);
    produce(&t.campaigns, &[Msg::keyless(SEED_CAMPAIGN)]);
    let suffix = unique_suffix();
    let start = |name: &str| {
        Processor::builder("run")
            .args(t.args())
            .args(["--delivery", delivery, "--instance-id", &format!("{name}-{suffix}")])
            .name(name)
            .start()
    };
    let mut steady = start("steady");
    let mut victim = start("victim");
    let load = Load::start(&broker(), &t.events, 400, 5_000, 10);
    let mut triggers = if delivery == "exactly-once" { Reader::read_committed(&t.triggers) } else { Reader::new(&t.triggers) };
    let mut rng = Rng::new(0x6b11);
    for kill in 1..=KILLS {
        // The victim must be evaluating when it is killed: the kill lands mid-stream.
        wait_until("the victim to evaluate events", Duration::from_secs(60), || {
            (victim.metric("rtcrm_evaluations_total").unwrap_or(0.0) > 0.0).then_some(())
        });
        triggers.poll_for(Duration::from_millis(rng.range(500, 2500) as u64));
        let (sent, seen) = (load.sent(), triggers.records.len());
        let status = victim.signal_and_wait("KILL", Duration::from_secs(10));
        assert!(!status.success(), "SIGKILL");
        println!("kill {kill}: {sent} events sent, {seen} triggers read");
        victim = start("victim");
        steady.assert_running();
    }
    let at_last_kill = triggers.records.len();
    std::thread::sleep(Duration::from_secs(2));
    let produced = load.finish();
    let expected = expected_4711(&produced);
    let missing_then = Tally::of(&triggers.records[..at_last_kill], &expected).lost.len();
    assert!(missing_then > 0, "the last kill came before the end of the stream (nothing was missing then)");
    triggers.read_until(|r| Tally::complete(r, &expected), Duration::from_secs(3), Duration::from_secs(180));
    steady.assert_running();
    victim.assert_running();
    let tally = Tally::of(&triggers.records, &expected);
    println!("{delivery}, {KILLS} SIGKILLs under load: {tally}");
    assert!(tally.lost.is_empty(), "triggers lost: {tally}");
    assert!(tally.unexpected.is_empty(), "unexpected triggers: {tally}");
    assert_eq!(steady.sigterm().code(), Some(0));
    assert_eq!(victim.sigterm().code(), Some(0));
    tally
}

#[test]
fn at_least_once_loses_no_trigger_across_ten_sigkills() {
    let _serial = one_at_a_time();
    kill_and_restart_ten_times("at-least-once");
}

#[test]
fn exactly_once_loses_and_duplicates_no_trigger_across_ten_sigkills() {
    let _serial = one_at_a_time();
    let tally = kill_and_restart_ten_times("exactly-once");
    assert_eq!(tally.duplicates, 0, "duplicates under exactly-once: {tally}");
}
