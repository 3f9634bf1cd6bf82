//! The per-player decision of spec §12, as a pure function of the player's state and the
//! event: the one implementation the processor, the backtest and explain share.
//!
//! Order of checks (after spec §4's checks 1–4, the player's presence, and the filter): `count`,
//! then `cooldown`, then `max_triggers_per_player` — applied alike to both groups, so the control
//! group's would-be triggers are comparable with the live ones — then holdout and variant.
//! An `inactivity` campaign does not trigger on a match: the match (re)arms the player's timer,
//! and the timer's firing goes through cooldown, cap, holdout and variant.
//!
//! Replays: every state carries the position of the last event it applied, per source topic,
//! and the positions of its last triggers. An event at or before that position was applied
//! already (a crash came between its state change and its offset commit): it changes nothing,
//! and triggers again exactly when it triggered the first time (the same `trigger_id`), so
//! at-least-once delivery repeats triggers but never loses or adds one.

use crate::state::controls::{Controls, Millis};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// Which topic an event came from: the events topic, or the repartition topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Source {
    #[serde(rename = "e")]
    Events,
    #[serde(rename = "r")]
    Repartitioned,
}

/// An event's position in its source partition. A repartitioned event is known by where it was
/// first read (`origin`, its partition in the events topic, and `offset` there): a copy forwarded
/// twice (at-least-once, after a crash of the forwarding instance) is then a replay, not a new
/// event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    #[serde(rename = "s")]
    pub source: Source,
    #[serde(rename = "o")]
    pub offset: i64,
    /// The events-topic partition a repartitioned event came from (`None`: the event's own
    /// partition, or a repartitioned record without its origin headers).
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<i32>,
}

impl Position {
    /// The position of an event read from `source` at `offset`, first read at `origin`
    /// (partition, offset) when it was repartitioned.
    pub fn of(source: Source, offset: i64, origin: Option<(i32, i64)>) -> Position {
        match (source, origin) {
            (Source::Repartitioned, Some((partition, offset))) => Position { source, offset, origin: Some(partition) },
            _ => Position { source, offset, origin: None },
        }
    }
}

/// How far (partition time) past its expiry a state is kept: the lateness a player's events may
/// have relative to their partition without losing state (see [`PlayerState::deletable_at`]).
pub const EXPIRY_GRACE_MS: Millis = 24 * 60 * 60 * 1000;

/// How many trigger positions a state remembers for replays (more than a player's events
/// between two offset commits).
const FIRED_KEPT: usize = 8;

/// JSON kept verbatim (an event, a JavaScript state), compared by its text.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Json(pub Box<RawValue>);

impl PartialEq for Json {
    fn eq(&self, other: &Json) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Json {
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// `text` if it is valid JSON.
    pub fn new(text: String) -> Option<Json> {
        RawValue::from_string(text).ok().map(Json)
    }
}

/// An armed inactivity timer: it fires at `due` (partition time) with the player's last
/// matching event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Armed {
    pub due: Millis,
    /// The trigger id the firing will carry (of the last matching event).
    pub id: String,
    /// The last matching event, as received.
    pub event: Json,
}

/// A fired inactivity timer's trigger, until it is delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fired {
    pub armed: Armed,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub control: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// One (campaign, player)'s state: what the controls remember, and the JavaScript filter's own
/// state. Stored as JSON (the changelog topic's value).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlayerState {
    /// The campaign's `state_version` this state belongs to.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub v: i64,
    /// Event time of the last event that touched the state.
    #[serde(default)]
    pub touched: Millis,
    /// The last event applied, per source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_e: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_r: Option<i64>,
    /// The last repartitioned event applied, by the events-topic partition it came from.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub seen_o: std::collections::BTreeMap<i32, i64>,
    /// The positions of the last triggers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fired: Vec<Position>,
    /// Event times of the filter's matches still counted (`count`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<Millis>,
    /// Event time of the last trigger (`cooldown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_trigger: Option<Millis>,
    /// Triggers so far, both groups (`max_triggers_per_player`).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub triggers: u32,
    /// The armed `inactivity` timer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactive: Option<Armed>,
    /// A timer that fired and whose trigger is not confirmed delivered yet: sent again after a
    /// crash or a move of the partition, cleared once delivered (so a firing is never lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Fired>,
    /// The JavaScript filter's state (`state`), as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub js: Option<Json>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

impl PlayerState {
    fn seen(&self, at: Position) -> Option<i64> {
        match (at.source, at.origin) {
            (Source::Events, _) => self.seen_e,
            (Source::Repartitioned, Some(partition)) => self.seen_o.get(&partition).copied(),
            (Source::Repartitioned, None) => self.seen_r,
        }
    }

    fn set_seen(&mut self, at: Position, via: Option<i64>) {
        match (at.source, at.origin) {
            (Source::Events, _) => self.seen_e = Some(at.offset),
            (Source::Repartitioned, Some(partition)) => {
                self.seen_o.insert(partition, at.offset);
                if via.is_some() {
                    self.seen_r = via;
                }
            }
            (Source::Repartitioned, None) => self.seen_r = Some(at.offset),
        }
    }

    /// Whether an event this state applied could still be read again (at-least-once: its offset
    /// is not committed yet). `committed` gives the next offset to read per source of this
    /// state's partition, as last committed (`None`: nothing committed). Deleting such a state
    /// would make the replay of its event look new, so an expiry waits.
    pub fn may_be_replayed(&self, committed: impl Fn(Source) -> Option<i64>) -> bool {
        let pending = |seen: Option<i64>, source: Source| seen.is_some_and(|o| committed(source).is_none_or(|c| o >= c));
        pending(self.seen_e, Source::Events) || pending(self.seen_r, Source::Repartitioned)
    }

    /// This state as the campaign sees it at `now`: a state of another `state_version` is
    /// empty, a JavaScript state untouched for `state.ttl` is gone, and count matches that left
    /// the window are dropped.
    pub fn current(mut self, controls: &Controls, now: Millis) -> PlayerState {
        if self.v != controls.state_version {
            return PlayerState { v: controls.state_version, ..PlayerState::default() };
        }
        if let Some(ttl) = controls.state.and_then(|s| s.ttl_ms) {
            if self.touched.saturating_add(ttl) <= now {
                self.js = None;
            }
        }
        if let Some(count) = controls.count {
            self.matches.retain(|t| *t > now - count.within_ms);
        }
        self
    }

    /// When the state may be deleted: [`PlayerState::expires`] plus [`EXPIRY_GRACE_MS`] of
    /// partition time. Deleting is only garbage collection — every decision reads the state
    /// as of its own event's time ([`PlayerState::current`]) — but a partition's time runs
    /// ahead of a player whose events arrive late (forwarded from another partition, or
    /// after a rebalance), and such an event must still find the state it needs.
    pub fn deletable_at(&self, controls: &Controls) -> Option<Millis> {
        self.expires(controls).map(|t| t.saturating_add(EXPIRY_GRACE_MS))
    }

    /// When this state holds nothing the campaign still needs (then it can be deleted): its
    /// latest deadline, or `None` when it must be kept (a cap, an armed timer, a JS state
    /// without ttl). `Some(t)` with `t` in the past: delete now.
    pub fn expires(&self, controls: &Controls) -> Option<Millis> {
        if self.inactive.is_some() || self.pending.is_some() || (self.triggers > 0 && controls.max_triggers_per_player.is_some()) {
            return None;
        }
        let mut until = self.touched;
        if self.js.is_some() {
            until = until.max(self.touched.saturating_add(controls.state.and_then(|s| s.ttl_ms)?));
        }
        if let (Some(last), Some(cooldown)) = (self.last_trigger, controls.cooldown_ms) {
            until = until.max(last.saturating_add(cooldown));
        }
        if let (Some(newest), Some(count)) = (self.matches.iter().max(), controls.count) {
            until = until.max(newest.saturating_add(count.within_ms));
        }
        Some(until)
    }
}

/// The decision for one event or timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The filter did not match.
    NoMatch,
    /// The event was applied before (a replay): it triggers again exactly when it did.
    Replayed { triggered: bool },
    /// Matched; `count` is not reached yet.
    Counting { so_far: u32, at_least: u32 },
    /// Would trigger, but the player's cooldown runs until `until` (event time).
    Cooldown { until: Millis },
    /// Would trigger, but the player already had `cap` triggers.
    Cap { cap: u32 },
    /// Matched: the inactivity timer is (re)armed to fire at `due`.
    Armed { due: Millis },
    /// Triggers: to the control topic (`control`) or the triggers topic, with a variant.
    Trigger { control: bool, variant: Option<String> },
}

/// What an event brings to the decision.
pub struct Input<'a> {
    pub campaign_id: i64,
    pub player: &'a str,
    /// The event time (spec §4's clock).
    pub now: Millis,
    pub at: Position,
    /// Whether the filter matched.
    pub matched: bool,
    /// The event as received (kept by an inactivity timer).
    pub event: &'a [u8],
    /// The event's trigger id (spec §9).
    pub trigger_id: &'a str,
    /// The JavaScript state the filter left (`state` campaigns; `None`: no JavaScript state).
    pub js: Option<Json>,
    /// A repartitioned event's offset in the repartition topic (kept as `seen_r`, so that the
    /// state is known to be past the partition's committed offset before it may expire).
    pub via: Option<i64>,
}

/// Whether the event at `at` was applied to `prev` already (a replay): then the filter is not
/// run again, and [`decide`] repeats its outcome.
pub fn is_replay(prev: Option<&PlayerState>, controls: &Controls, at: Position) -> bool {
    prev.is_some_and(|s| s.v == controls.state_version && s.seen(at).is_some_and(|seen| at.offset <= seen))
}

/// Decides one event for one (campaign, player): returns the outcome and the new state (`None`
/// when nothing needs writing: a non-match that changed nothing, or a replay). `prev` is the
/// stored state, if any.
pub fn decide(controls: &Controls, prev: Option<PlayerState>, input: &Input<'_>) -> (Outcome, Option<PlayerState>) {
    if is_replay(prev.as_ref(), controls, input.at) {
        let triggered = prev.is_some_and(|s| s.fired.contains(&input.at));
        return (Outcome::Replayed { triggered }, None);
    }
    let mut next = prev.unwrap_or_default().current(controls, input.now);
    let js_changed = input.js.is_some() && input.js != next.js;
    if js_changed {
        next.js = input.js.clone();
    }
    next.v = controls.state_version;
    next.set_seen(input.at, input.via);
    next.touched = next.touched.max(input.now);
    if !input.matched {
        // A non-match changes nothing but the JavaScript state: replaying it decides the same.
        return (Outcome::NoMatch, js_changed.then_some(next));
    }
    if let Some(inactivity) = controls.inactivity_ms {
        let due = input.now.saturating_add(inactivity);
        if let Some(event) = Json::new(String::from_utf8_lossy(input.event).into_owned()) {
            next.inactive = Some(Armed { due, id: input.trigger_id.to_owned(), event });
        }
        return (Outcome::Armed { due }, Some(next));
    }
    if let Some(count) = controls.count {
        next.matches.push(input.now);
        let so_far = next.matches.len() as u32;
        if so_far < count.at_least {
            return (Outcome::Counting { so_far, at_least: count.at_least }, Some(next));
        }
        // Reached: the count starts over (whatever cooldown or cap decide next).
        next.matches.clear();
    }
    let outcome = triggers(controls, &mut next, input.campaign_id, input.player, input.now);
    if matches!(outcome, Outcome::Trigger { .. }) {
        next.fired.push(input.at);
        if next.fired.len() > FIRED_KEPT {
            next.fired.remove(0);
        }
    }
    (outcome, Some(next))
}

/// The firing of an armed inactivity timer at partition time `now` (its due time passed):
/// the outcome (a trigger, or suppressed by cooldown or cap) and the new state: disarmed, and,
/// when it triggers, holding the trigger as `pending` until [`delivered`]. `None` when nothing
/// is armed (any more) or not yet due.
pub fn fire(controls: &Controls, campaign_id: i64, player: &str, prev: PlayerState, now: Millis) -> Option<(Outcome, Armed, PlayerState)> {
    if prev.v != controls.state_version || prev.inactive.as_ref().is_none_or(|a| a.due > now) {
        return None;
    }
    let mut next = prev;
    let armed = next.inactive.take().expect("checked above");
    let outcome = triggers(controls, &mut next, campaign_id, player, armed.due);
    if let Outcome::Trigger { control, variant } = &outcome {
        next.pending = Some(Fired { armed: armed.clone(), control: *control, variant: variant.clone() });
    }
    Some((outcome, armed, next))
}

/// The pending firing's trigger was delivered: the new state without it (`None`: nothing pending).
pub fn delivered(prev: PlayerState) -> Option<PlayerState> {
    prev.pending.is_some().then(|| PlayerState { pending: None, ..prev })
}

/// Cooldown, cap, then holdout and variant, for a would-be trigger at event time `now`.
fn triggers(controls: &Controls, next: &mut PlayerState, campaign_id: i64, player: &str, now: Millis) -> Outcome {
    if let (Some(last), Some(cooldown)) = (next.last_trigger, controls.cooldown_ms) {
        let until = last.saturating_add(cooldown);
        if now < until {
            return Outcome::Cooldown { until };
        }
    }
    if let Some(cap) = controls.max_triggers_per_player {
        if next.triggers >= cap {
            return Outcome::Cap { cap };
        }
    }
    next.last_trigger = Some(now);
    next.triggers += 1;
    let control = in_control_group(campaign_id, player, controls.holdout_bp);
    let variant = if control { None } else { variant(campaign_id, player, controls) };
    Outcome::Trigger { control, variant }
}

/// The first 8 bytes of SHA-256(`text`), big-endian.
fn hash64(text: &str) -> u64 {
    let digest = Sha256::digest(text.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The holdout bucket of a player (spec §12's documented stable hash): the first 8 bytes of
/// SHA-256 of `"<campaign_id>:<player_id>"` as a big-endian unsigned integer, modulo 10,000.
/// The player is in the control group when the bucket is below `holdout_percent` × 100.
pub fn holdout_bucket(campaign_id: i64, player: &str) -> u32 {
    (hash64(&format!("{campaign_id}:{player}")) % 10_000) as u32
}

pub fn in_control_group(campaign_id: i64, player: &str, holdout_bp: u32) -> bool {
    holdout_bp > 0 && holdout_bucket(campaign_id, player) < holdout_bp
}

/// The player's variant: the first 8 bytes of SHA-256 of `"<campaign_id>:<player_id>:variant"`
/// (big-endian) modulo the sum of the weights picks a variant by cumulative weight, in the
/// order given.
pub fn variant(campaign_id: i64, player: &str, controls: &Controls) -> Option<String> {
    let total: u64 = controls.variants.iter().map(|v| u64::from(v.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut x = hash64(&format!("{campaign_id}:{player}:variant")) % total;
    for v in &controls.variants {
        if x < u64::from(v.weight) {
            return Some(v.name.clone());
        }
        x -= u64::from(v.weight);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::controls::{CountRule, Variant};

    const MIN: Millis = 60_000;

    fn at(offset: i64) -> Position {
        Position { source: Source::Events, offset, origin: None }
    }

    fn run(controls: &Controls, events: &[(Millis, bool)]) -> (Vec<Outcome>, Option<PlayerState>) {
        let mut state = None;
        let mut outcomes = Vec::new();
        for (i, (now, matched)) in events.iter().enumerate() {
            let id = format!("7:e{i}");
            let input = Input { campaign_id: 7, player: "p1", now: *now, at: at(i as i64), matched: *matched, event: b"{}", trigger_id: &id, js: None, via: None };
            let (outcome, next) = decide(controls, state.clone(), &input);
            outcomes.push(outcome);
            if next.is_some() {
                state = next;
            }
        }
        (outcomes, state)
    }

    fn triggered(outcomes: &[Outcome]) -> usize {
        outcomes.iter().filter(|o| matches!(o, Outcome::Trigger { .. })).count()
    }

    #[test]
    fn a_cooldown_allows_one_trigger_per_period() {
        let c = Controls { cooldown_ms: Some(60 * MIN), ..Controls::default() };
        let events: Vec<_> = (0..20).map(|i| (i * 3 * MIN, true)).collect();
        let (o, _) = run(&c, &events);
        assert_eq!(triggered(&o), 1, "20 matches within an hour: one trigger");
        assert_eq!(o[1], Outcome::Cooldown { until: 60 * MIN });
        let (o, _) = run(&c, &[(0, true), (60 * MIN, true), (90 * MIN, true)]);
        assert_eq!(triggered(&o), 2, "the cooldown ends exactly after its duration");
    }

    #[test]
    fn a_cap_allows_n_triggers() {
        let c = Controls { max_triggers_per_player: Some(3), ..Controls::default() };
        let (o, state) = run(&c, &(0..20).map(|i| (i * MIN, true)).collect::<Vec<_>>());
        assert_eq!(triggered(&o), 3);
        assert_eq!(o[3], Outcome::Cap { cap: 3 });
        assert_eq!(state.unwrap().triggers, 3);
    }

    #[test]
    fn count_triggers_on_the_nth_match_inside_the_window_and_starts_over() {
        let c = Controls { count: Some(CountRule { at_least: 3, within_ms: 10 * MIN }), ..Controls::default() };
        let (o, _) = run(&c, &[(0, true), (MIN, false), (2 * MIN, true), (3 * MIN, true)]);
        assert_eq!(o[0], Outcome::Counting { so_far: 1, at_least: 3 });
        assert_eq!(o[1], Outcome::NoMatch);
        assert!(matches!(o[3], Outcome::Trigger { .. }), "the 3rd match inside 10 minutes triggers");
        // Spread over 11 minutes: never 3 inside a 10-minute window.
        let (o, _) = run(&c, &[(0, true), (5 * MIN + 30_000, true), (11 * MIN, true)]);
        assert_eq!(triggered(&o), 0, "{o:?}");
        // Starts over: 6 matches in a row trigger twice.
        let (o, _) = run(&c, &(0..6).map(|i| (i * MIN, true)).collect::<Vec<_>>());
        assert_eq!(triggered(&o), 2);
    }

    #[test]
    fn replays_change_nothing_and_trigger_again_exactly_when_they_did() {
        let c = Controls { cooldown_ms: Some(60 * MIN), ..Controls::default() };
        let (_, state) = run(&c, &[(0, true), (MIN, true)]);
        let state = state.unwrap();
        let replay = |offset: i64| {
            let input = Input { campaign_id: 7, player: "p1", now: offset * MIN, at: at(offset), matched: true, event: b"{}", trigger_id: "x", js: None, via: None };
            decide(&c, Some(state.clone()), &input)
        };
        assert_eq!(replay(0), (Outcome::Replayed { triggered: true }, None), "event 0 triggered: again");
        assert_eq!(replay(1), (Outcome::Replayed { triggered: false }, None), "event 1 was in the cooldown: again not");
        assert!(matches!(replay(2).0, Outcome::Cooldown { .. }), "event 2 is new");
        // Another source's positions are independent.
        let other = Input { campaign_id: 7, player: "p1", now: 2 * MIN, at: Position { source: Source::Repartitioned, offset: 0, origin: None }, matched: true, event: b"{}", trigger_id: "y", js: None, via: None };
        assert!(matches!(decide(&c, Some(state), &other).0, Outcome::Cooldown { .. }));
    }

    #[test]
    fn a_repartitioned_event_forwarded_twice_is_a_replay_by_its_origin() {
        let c = Controls { count: Some(crate::state::controls::CountRule { at_least: 2, within_ms: 10 * MIN }), ..Controls::default() };
        let fwd = |repartition_offset: i64, origin: (i32, i64)| Position::of(Source::Repartitioned, repartition_offset, Some(origin));
        let input = |at: Position, now: Millis| Input { campaign_id: 7, player: "p1", now, at, matched: true, event: b"{}", trigger_id: "x", js: None, via: None };
        let (o, s) = decide(&c, None, &input(fwd(0, (3, 40)), 0));
        assert_eq!(o, Outcome::Counting { so_far: 1, at_least: 2 });
        // The forwarding instance crashed before committing: the same event, forwarded again,
        // has a new repartition offset but the same origin. It must not count twice.
        let (o, again) = decide(&c, s.clone(), &input(fwd(7, (3, 40)), 0));
        assert_eq!((o, again), (Outcome::Replayed { triggered: false }, None));
        // An event of another events partition with a smaller offset is new.
        let (o, _) = decide(&c, s, &input(fwd(8, (1, 12)), MIN));
        assert!(matches!(o, Outcome::Trigger { .. }), "{o:?}");
    }

    #[test]
    fn inactivity_arms_on_matches_and_fires_once_with_the_last_event() {
        let c = Controls { inactivity_ms: Some(7 * 24 * 60 * MIN), ..Controls::default() };
        let day = 24 * 60 * MIN;
        let first = Input { campaign_id: 7, player: "p1", now: 0, at: at(0), matched: true, event: br#"{"n":1}"#, trigger_id: "7:a", js: None, via: None };
        let (o, s) = decide(&c, None, &first);
        assert_eq!(o, Outcome::Armed { due: 7 * day });
        let second = Input { now: day, at: at(1), event: br#"{"n":2}"#, trigger_id: "7:b", js: None, ..first };
        let (_, s) = decide(&c, s, &second);
        let s = s.unwrap();
        assert!(fire(&c, 7, "p1", s.clone(), 7 * day).is_none(), "re-armed by the second login: not due yet");
        let (outcome, armed, after) = fire(&c, 7, "p1", s, 8 * day).unwrap();
        assert_eq!(outcome, Outcome::Trigger { control: false, variant: None });
        assert_eq!((armed.id.as_str(), armed.event.get()), ("7:b", r#"{"n":2}"#), "the trigger carries the last matching event");
        assert!(after.inactive.is_none());
        assert_eq!(after.pending.as_ref().map(|p| p.armed.id.as_str()), Some("7:b"), "pending until delivered");
        assert_eq!(after.expires(&c), None, "a pending firing is kept");
        assert!(fire(&c, 7, "p1", after.clone(), 9 * day).is_none(), "fires once");
        let done = delivered(after).unwrap();
        assert!(done.pending.is_none() && delivered(done).is_none());
    }

    #[test]
    fn a_new_state_version_starts_from_empty() {
        let c = Controls { max_triggers_per_player: Some(1), ..Controls::default() };
        let (_, state) = run(&c, &[(0, true)]);
        let c2 = Controls { state_version: 2, ..c.clone() };
        let input = Input { campaign_id: 7, player: "p1", now: MIN, at: at(5), matched: true, event: b"{}", trigger_id: "x", js: None, via: None };
        assert!(matches!(decide(&c, state.clone(), &input).0, Outcome::Cap { .. }));
        assert!(matches!(decide(&c2, state, &input).0, Outcome::Trigger { .. }), "the cap was reset");
    }

    #[test]
    fn holdout_and_variants_follow_the_documented_hash() {
        // Recomputed here from the documented definition, independently of the code above.
        let digest = Sha256::digest(b"4711:12345");
        let bucket = (u64::from_be_bytes(digest[..8].try_into().unwrap()) % 10_000) as u32;
        assert_eq!(holdout_bucket(4711, "12345"), bucket);
        assert!(in_control_group(4711, "12345", bucket + 1) && !in_control_group(4711, "12345", bucket));
        assert!(!in_control_group(4711, "12345", 0));
        let c = Controls {
            variants: vec![Variant { name: "A".into(), weight: 1 }, Variant { name: "B".into(), weight: 3 }],
            ..Controls::default()
        };
        let b = (0..10_000).filter(|p| variant(9, &p.to_string(), &c).as_deref() == Some("B")).count();
        assert!((7_300..7_700).contains(&b), "weights 1:3 give about 75 % B: {b}");
        assert_eq!(variant(9, "42", &c), variant(9, "42", &c), "stable per player");
        let ctl = (0..10_000).filter(|p| in_control_group(9, &p.to_string(), 2_000)).count();
        assert!((1_800..2_200).contains(&ctl), "20 % holdout: {ctl}");
    }

    #[test]
    fn a_non_match_writes_only_a_changed_javascript_state() {
        let c = Controls { state: Some(crate::state::controls::StateOptions { ttl_ms: None, max_bytes: 1024 }), ..Controls::default() };
        let base = Input { campaign_id: 7, player: "p1", now: 0, at: at(0), matched: false, event: b"{}", trigger_id: "x", js: None, via: None };
        assert_eq!(decide(&c, None, &base), (Outcome::NoMatch, None));
        let js = Json::new(r#"{"n":1}"#.into());
        let (o, s) = decide(&c, None, &Input { js: js.clone(), ..base });
        assert_eq!(o, Outcome::NoMatch);
        let s = s.expect("the JavaScript state changed: written");
        assert_eq!(s.js, js);
        let (_, again) = decide(&c, Some(s), &Input { at: at(1), js: js.clone(), ..base });
        assert_eq!(again, None, "the same JavaScript state: nothing to write");
    }

    #[test]
    fn states_expire_when_they_hold_nothing_needed() {
        let c = Controls { cooldown_ms: Some(10 * MIN), ..Controls::default() };
        let (_, s) = run(&c, &[(MIN, true)]);
        assert_eq!(s.unwrap().expires(&c), Some(11 * MIN));
        let capped = Controls { max_triggers_per_player: Some(2), ..Controls::default() };
        let (_, s) = run(&capped, &[(MIN, true)]);
        assert_eq!(s.unwrap().expires(&capped), None, "a cap is kept");
    }
}
