//! The backtest's per-player state (spec §12): what the processor keeps in its state store,
//! kept here in memory, per evaluation thread, for the players whose events that thread decides
//! (the reader shards events by player, so each player's events reach one thread, in order).
//!
//! Every decision goes through [`crate::state::decide`], the processor's own code: [`decide`]
//! for an event (count, cooldown, cap, holdout, variant, arming an inactivity timer, the
//! JavaScript state kept only when the evaluation succeeds), [`fire`] for a timer whose due time
//! the partition time has passed. Nothing is written anywhere, and no state exists before the
//! backtest's first event (the processor's stored state is not read).
//!
//! **Time.** A player's state lives on its state partition (`murmur2(player) mod N`, as in the
//! processor, N the events topic's partition count; a file is one partition). The reader
//! advances each partition's time with the event times it reads — every event of the
//! partition, and the events it would forward there for this campaign — and hands each event
//! the time of its player's partition after it. Before an event is decided, the thread fires
//! the timers of that partition that are due by then. A firing's outcome depends only on the
//! player's state and the timer's due time, never on when it fires, so this equals the
//! processor's deadline scan, whenever that runs; a timer still due at the end of the interval
//! fires against the final partition time, and those not due by then are reported as still
//! armed, not as triggers. The processor also advances an idle partition's time by the wall
//! clock; a backtest of past events has no idle time to add.
//!
//! [`decide`]: crate::state::decide::decide
//! [`fire`]: crate::state::decide::fire

use crate::dryrun::backtest::tally::Fnv;
use crate::dryrun::decision::Controlled;
use crate::state::controls::{Controls, Millis};
use crate::state::decide::{self, Armed, Input, Json, PlayerState, Position, Source};
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;

/// A timer that fired: its outcome, the event it carries (the player's last matching event)
/// and that event's position.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    pub player: Box<str>,
    pub outcome: Controlled,
    pub armed: Armed,
    /// The (partition, offset) of the armed event.
    pub at: (i32, i64),
}

/// An armed timer in the index: the player's state partition's timers by (due, player).
type TimerIndex = BTreeMap<(Millis, Box<str>), (i32, i64)>;

/// One evaluation thread's per-player states of the campaign, and its armed timers.
#[derive(Default)]
pub struct Players {
    states: HashMap<Box<str>, PlayerState, BuildHasherDefault<Fnv>>,
    /// Armed inactivity timers by state partition.
    timers: BTreeMap<i32, TimerIndex>,
    /// The position of the next event: strictly increasing, so no event is a replay.
    next: i64,
}

/// One event for [`Players::decide`].
pub struct Event<'a> {
    pub campaign_id: i64,
    pub player: &'a str,
    /// The event time (spec §4's clock), Unix ms.
    pub now: Millis,
    /// Whether the filter matched.
    pub matched: bool,
    /// The event as received (an inactivity timer keeps it).
    pub bytes: &'a [u8],
    pub trigger_id: &'a str,
    /// The JavaScript state the filter left, as compact JSON (`state` campaigns).
    pub js: Option<String>,
    /// Where the event was read: (partition, offset).
    pub at: (i32, i64),
    /// The player's state partition.
    pub home: i32,
}

impl Players {
    /// The player's JavaScript state as the campaign sees it at `now` (another `state_version`
    /// or past `state.ttl`: none), as the processor passes it to `filter(event, state)`.
    pub fn js_state(&self, controls: &Controls, player: &str, now: Millis) -> Option<Json> {
        self.states.get(player).cloned().map(|s| s.current(controls, now)).and_then(|s| s.js)
    }

    /// Decides one evaluated event (the filter ran and succeeded) with [`decide::decide`] on the
    /// player's state, and keeps the new state. `None`: no match.
    pub fn decide(&mut self, controls: &Controls, e: Event<'_>) -> Option<Controlled> {
        let prev = self.states.get(e.player).cloned();
        // As the processor: `{}` for a player without a state yet is no state.
        let js = match e.js {
            Some(text) if !(text == "{}" && prev.as_ref().is_none_or(|p| p.clone().current(controls, e.now).js.is_none())) => Json::new(text),
            _ => None,
        };
        let at = Position::of(Source::Events, self.next, None);
        self.next += 1;
        let input = Input { campaign_id: e.campaign_id, player: e.player, now: e.now, at, matched: e.matched, event: e.bytes, trigger_id: e.trigger_id, js, via: None };
        let armed_before = prev.as_ref().and_then(|p| p.inactive.as_ref()).map(|a| a.due);
        let (outcome, next) = decide::decide(controls, prev, &input);
        if let Some(next) = next {
            let armed_after = next.inactive.as_ref().map(|a| a.due);
            if armed_after != armed_before {
                let timers = self.timers.entry(e.home).or_default();
                if let Some(due) = armed_before {
                    timers.remove(&(due, Box::from(e.player)));
                }
                if let Some(due) = armed_after {
                    timers.insert((due, Box::from(e.player)), e.at);
                }
            }
            match self.states.get_mut(e.player) {
                Some(state) => *state = next,
                None => {
                    self.states.insert(Box::from(e.player), next);
                }
            }
        }
        Controlled::of(outcome, e.campaign_id, e.player, controls)
    }

    /// Fires the timers of state partition `home` that are due at partition time `now` (in due
    /// order), with [`decide::fire`], handing each firing to `each`.
    pub fn fire_due(&mut self, controls: &Controls, campaign_id: i64, home: i32, now: Millis, each: &mut dyn FnMut(Firing)) {
        let Some(timers) = self.timers.get_mut(&home) else { return };
        while let Some(entry) = timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, player), at) = entry.remove_entry();
            let Some(state) = self.states.get_mut(&player) else { continue };
            let Some((outcome, armed, mut next)) = decide::fire(controls, campaign_id, &player, state.clone(), now) else { continue };
            // Delivered at once: nothing is pending in a backtest.
            next.pending = None;
            *state = next;
            if let Some(outcome) = Controlled::of(outcome, campaign_id, &player, controls) {
                each(Firing { player, outcome, armed, at });
            }
        }
    }

    /// At the end of the interval: fires every timer due by its partition's final time
    /// (`clocks`, partition → time; a partition without one has seen no event), and returns how
    /// many timers are still armed (not due by then: not triggers).
    pub fn finish(&mut self, controls: &Controls, campaign_id: i64, clocks: &BTreeMap<i32, Millis>, each: &mut dyn FnMut(Firing)) -> u64 {
        let partitions: Vec<i32> = self.timers.keys().copied().collect();
        for p in partitions {
            if let Some(&now) = clocks.get(&p) {
                self.fire_due(controls, campaign_id, p, now, each);
            }
        }
        self.armed()
    }

    /// Timers armed now.
    pub fn armed(&self) -> u64 {
        self.timers.values().map(|t| t.len() as u64).sum()
    }

    /// Players with a state.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.states.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::controls::CountRule;

    const MIN: Millis = 60_000;

    fn ev<'a>(player: &'a str, now: Millis, matched: bool, id: &'a str, offset: i64) -> Event<'a> {
        Event { campaign_id: 7, player, now, matched, bytes: b"{\"e\":1}", trigger_id: id, js: None, at: (0, offset), home: 0 }
    }

    #[test]
    fn cooldown_count_and_cap_follow_the_processors_decision() {
        let c = Controls { cooldown_ms: Some(60 * MIN), count: Some(CountRule { at_least: 2, within_ms: 10 * MIN }), max_triggers_per_player: Some(2), ..Controls::default() };
        let mut p = Players::default();
        let outcomes: Vec<_> = [0, MIN, 2 * MIN, 3 * MIN, 61 * MIN, 62 * MIN, 200 * MIN, 201 * MIN]
            .iter()
            .enumerate()
            .map(|(i, t)| p.decide(&c, ev("a", *t, true, "x", i as i64)).unwrap().code())
            .collect();
        assert_eq!(outcomes, ["counting", "trigger", "counting", "cooldown", "counting", "trigger", "counting", "cap"]);
        assert_eq!(p.decide(&c, ev("a", 300 * MIN, false, "x", 9)), None, "no match");
        assert_eq!(p.decide(&c, ev("b", 0, true, "x", 10)).unwrap().code(), "counting", "players are separate");
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn timers_fire_once_when_the_partition_time_passes_their_due() {
        let c = Controls { inactivity_ms: Some(10 * MIN), ..Controls::default() };
        let mut p = Players::default();
        assert_eq!(p.decide(&c, ev("a", 0, true, "7:a1", 1)), Some(Controlled::Armed { due: 10 * MIN }));
        assert_eq!(p.decide(&c, ev("a", MIN, true, "7:a2", 2)), Some(Controlled::Armed { due: 11 * MIN }), "re-armed");
        assert_eq!(p.decide(&c, ev("b", 5 * MIN, true, "7:b1", 3)), Some(Controlled::Armed { due: 15 * MIN }));
        assert_eq!(p.armed(), 2, "one timer per player");
        let mut fired = Vec::new();
        p.fire_due(&c, 7, 0, 10 * MIN, &mut |f| fired.push(f));
        assert!(fired.is_empty(), "a's timer was re-armed to 11 min");
        p.fire_due(&c, 7, 1, 60 * MIN, &mut |f| fired.push(f));
        assert!(fired.is_empty(), "another partition's time does not fire them");
        p.fire_due(&c, 7, 0, 11 * MIN, &mut |f| fired.push(f));
        assert_eq!(fired.len(), 1);
        assert_eq!((&*fired[0].player, fired[0].armed.id.as_str(), fired[0].at, &fired[0].outcome), ("a", "7:a2", (0, 2), &Controlled::Trigger { variant: None }));
        assert_eq!(fired[0].armed.event.get(), "{\"e\":1}");
        p.fire_due(&c, 7, 0, 12 * MIN, &mut |f| fired.push(f));
        assert_eq!(fired.len(), 1, "fires once");
        let pending = p.finish(&c, 7, &BTreeMap::from([(0, 14 * MIN)]), &mut |f| fired.push(f));
        assert_eq!((fired.len(), pending), (1, 1), "b's timer (due 15 min) is still armed at the end");
        let pending = p.finish(&c, 7, &BTreeMap::from([(0, 15 * MIN)]), &mut |f| fired.push(f));
        assert_eq!((fired.len(), pending), (2, 0));
    }

    #[test]
    fn a_firing_goes_through_cooldown() {
        let c = Controls { inactivity_ms: Some(10 * MIN), cooldown_ms: Some(60 * MIN), ..Controls::default() };
        let mut p = Players::default();
        let mut fired = Vec::new();
        p.decide(&c, ev("a", 0, true, "1", 1));
        p.fire_due(&c, 7, 0, 10 * MIN, &mut |f| fired.push(f.outcome));
        p.decide(&c, ev("a", 11 * MIN, true, "2", 2));
        p.fire_due(&c, 7, 0, 21 * MIN, &mut |f| fired.push(f.outcome));
        assert_eq!(fired, [Controlled::Trigger { variant: None }, Controlled::Cooldown { until: 70 * MIN }], "the cooldown runs from the first firing's due time");
    }

    #[test]
    fn the_javascript_state_is_kept_only_as_left_and_an_empty_one_is_none() {
        let c = Controls { state: Some(crate::state::controls::StateOptions { ttl_ms: Some(10 * MIN), max_bytes: 64 }), ..Controls::default() };
        let mut p = Players::default();
        p.decide(&c, Event { js: Some("{}".into()), ..ev("a", 0, false, "x", 1) });
        assert!(p.is_empty(), "a first `{{}}` is no state");
        p.decide(&c, Event { js: Some(r#"{"n":1}"#.into()), ..ev("a", MIN, false, "x", 2) });
        assert_eq!(p.js_state(&c, "a", 2 * MIN).map(|j| j.get().to_owned()).as_deref(), Some(r#"{"n":1}"#));
        assert_eq!(p.js_state(&c, "a", 11 * MIN), None, "gone after its ttl");
    }
}
