//! A filter that misbehaves: it never returns. The host stops it when the evaluation's fuel runs
//! out (error kind `fuel`), counts no match, rebuilds the instance and keeps running.

use rtcrm_filter::{filter, Event};

#[filter]
fn endless_loop(event: &Event) -> bool {
    // Looks for a field that is never there, forever.
    let mut rounds: u64 = 0;
    while event.data().get("never").is_none() {
        rounds = std::hint::black_box(rounds.wrapping_add(1));
    }
    rounds > 0
}
