//! What one evaluation thread of a backtest counts, and how the threads' counts merge.
//!
//! Everything is exact except the fuel percentiles, which come from log-linear buckets
//! ([`FuelHistogram`], within 1 %), so memory stays bounded however many events are read.
//! Unique players are an exact set of player ids.

use crate::dryrun::decision::{Controlled, Decision};
use crate::events::evaluate::Skip;
use rtcrm_sandbox::ErrorKind;
use std::collections::{BTreeMap, HashSet};

/// Significant bits kept per fuel value (64 sub-buckets per power of two: < 1.6 % wide, the
/// midpoint within 0.8 %).
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;

/// Counts of fuel values in log-linear buckets: exact below 64, then 64 buckets per power of two.
#[derive(Debug, Clone)]
pub struct FuelHistogram {
    counts: Vec<u64>,
    n: u64,
}

impl Default for FuelHistogram {
    fn default() -> Self {
        FuelHistogram { counts: vec![0; (SUB + (64 - SUB_BITS as u64) * SUB) as usize], n: 0 }
    }
}

impl FuelHistogram {
    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let exponent = 63 - v.leading_zeros(); // >= SUB_BITS
        let shift = exponent - SUB_BITS;
        let mantissa = (v >> shift) - SUB;
        (SUB + u64::from(shift) * SUB + mantissa) as usize
    }

    /// The midpoint of bucket `i`.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let shift = (i - SUB) / SUB;
        let mantissa = (i - SUB) % SUB;
        let low = (SUB + mantissa) << shift;
        low + (1u64 << shift) / 2
    }

    pub fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.n += 1;
    }

    pub fn merge(&mut self, other: &FuelHistogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.n += other.n;
    }

    /// The nearest-rank percentile `p` (0 < p ≤ 1), None when empty.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((p * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::value(i));
            }
        }
        unreachable!("the counts sum to n")
    }
}

/// A failed evaluation's example: the first (lowest partition, offset) of its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorExample {
    pub kind: ErrorKind,
    pub message: String,
    pub partition: i32,
    pub offset: i64,
}

/// A trigger kept as a sample: its position and its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub partition: i32,
    pub offset: i64,
    pub json: Vec<u8>,
}

/// FNV-1a for the set of player ids (SipHash's resistance to chosen keys buys nothing for a
/// set that only counts, and costs a third of a trigger's bookkeeping).
#[derive(Clone, Copy, Default)]
pub struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// Player ids, hashed with [`Fnv`].
pub type Players = HashSet<Box<str>, std::hash::BuildHasherDefault<Fnv>>;

/// The cheap checks in [`Skip`]'s order, for [`Tally::skipped`].
pub const SKIPS: [Skip; 6] = [Skip::Disabled, Skip::Quarantined, Skip::OtherGame, Skip::OtherEventName, Skip::BeforeStart, Skip::AfterEnd];

/// The counts of one evaluation thread (and, merged, of the backtest).
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Events read (in the interval), valid or not.
    pub events: u64,
    /// Records that are not JSON objects (the processor sends them to the dead-letter topic).
    pub not_events: u64,
    /// Events without a string `game` or `event_name`.
    pub no_game_or_event_name: u64,
    /// Events excluded by each cheap check, in [`SKIPS`] order.
    pub skipped: [u64; 6],
    /// Events without `player_id`, for a campaign with controls (spec §12: never a match).
    pub no_player: u64,
    /// Events the filter ran on.
    pub candidates: u64,
    /// The filter returned `true`.
    pub matches: u64,
    /// Triggers after the controls (spec §12), to the triggers topic: of matches and of
    /// inactivity timers.
    pub triggers: u64,
    /// Would-be triggers of the control group (spec §12's holdout), of matches and of timers.
    pub control_matches: u64,
    /// Would-be triggers held back by the player's cooldown, and by the cap.
    pub suppressed_cooldown: u64,
    pub suppressed_cap: u64,
    /// Matches that did not reach `count` yet.
    pub counting: u64,
    /// Matches that (re)armed an inactivity timer.
    pub timers_armed: u64,
    /// Inactivity timers that fired (their outcomes are counted with the others: triggers,
    /// control group, cooldown, cap).
    pub inactivity_firings: u64,
    /// Of [`Tally::triggers`], those of inactivity timers.
    pub inactivity_triggers: u64,
    /// Timers still armed at the end (not due by their partition's final time): not triggers.
    pub timers_pending: u64,
    /// Triggers per variant (spec §12's `variants`).
    pub variants: BTreeMap<String, u64>,
    /// Failed evaluations by kind, in [`ErrorKind::ALL`] order.
    pub errors: [u64; ErrorKind::ALL.len()],
    pub error_examples: BTreeMap<&'static str, ErrorExample>,
    pub fuel: FuelHistogram,
    /// Player ids (as trigger keys) of the triggers.
    pub players: Players,
    /// Player ids of the control group's would-be triggers.
    pub control_players: Players,
    pub triggers_without_player: u64,
    /// Triggers per hour: Unix hour (seconds / 3600, floored) → count, by the time the window
    /// was checked against.
    pub per_hour: BTreeMap<i64, u64>,
    /// The first triggers by (partition, offset), at most `max_samples`.
    pub samples: Vec<Sample>,
    pub max_samples: usize,
}

impl Tally {
    pub fn new(max_samples: usize) -> Tally {
        Tally { max_samples, ..Tally::default() }
    }

    /// Counts one decision. `player` is the trigger key, `hour` the Unix hour of the event's
    /// window time; `sample` builds the trigger's JSON when it is kept as a sample.
    pub fn record(&mut self, decision: &Decision, at: (i32, i64), player: impl FnOnce() -> String, hour: i64, sample: impl FnOnce() -> Vec<u8>) {
        match decision {
            Decision::Skipped(skip) => {
                let i = SKIPS.iter().position(|s| s == skip).expect("every skip is listed");
                self.skipped[i] += 1;
                return;
            }
            Decision::NoPlayer => {
                self.no_player += 1;
                return;
            }
            Decision::FilterError(e) => {
                let i = ErrorKind::ALL.iter().position(|k| *k == e.kind()).expect("every kind is listed");
                self.errors[i] += 1;
                let example = ErrorExample { kind: e.kind(), message: e.to_string(), partition: at.0, offset: at.1 };
                self.error_examples
                    .entry(e.kind().as_str())
                    .and_modify(|old| {
                        if (at.0, at.1) < (old.partition, old.offset) {
                            *old = example.clone();
                        }
                    })
                    .or_insert(example);
            }
            Decision::FilterFalse { fuel } => self.fuel.record(*fuel),
            Decision::Matched { fuel, then } => {
                self.fuel.record(*fuel);
                self.matches += 1;
                self.controlled(then, at, player, hour, sample);
            }
        }
        self.candidates += 1;
    }

    /// Counts an inactivity timer's firing (spec §12): its outcome as for a match. `at` is the
    /// position of the event it carries, `hour` the Unix hour of its due time.
    pub fn record_firing(&mut self, outcome: &Controlled, at: (i32, i64), player: &str, hour: i64, sample: impl FnOnce() -> Vec<u8>) {
        self.inactivity_firings += 1;
        if matches!(outcome, Controlled::Trigger { .. }) {
            self.inactivity_triggers += 1;
        }
        self.controlled(outcome, at, || player.to_owned(), hour, sample);
    }

    /// Counts what the controls made of a match or a firing.
    fn controlled(&mut self, then: &Controlled, at: (i32, i64), player: impl FnOnce() -> String, hour: i64, sample: impl FnOnce() -> Vec<u8>) {
        match then {
            Controlled::Trigger { variant } => {
                self.triggers += 1;
                let player = player();
                if player.is_empty() {
                    self.triggers_without_player += 1;
                } else if !self.players.contains(player.as_str()) {
                    self.players.insert(player.into_boxed_str());
                }
                if let Some(variant) = variant {
                    match self.variants.get_mut(variant) {
                        Some(n) => *n += 1,
                        None => {
                            self.variants.insert(variant.clone(), 1);
                        }
                    }
                }
                *self.per_hour.entry(hour).or_default() += 1;
                self.keep_sample(at, sample);
            }
            Controlled::ControlGroup => {
                self.control_matches += 1;
                let player = player();
                if !self.control_players.contains(player.as_str()) {
                    self.control_players.insert(player.into_boxed_str());
                }
            }
            Controlled::Counting { .. } => self.counting += 1,
            Controlled::Cooldown { .. } => self.suppressed_cooldown += 1,
            Controlled::Cap { .. } => self.suppressed_cap += 1,
            Controlled::Armed { .. } => self.timers_armed += 1,
            // Explain's; a backtest decides every control.
            Controlled::OnStoredState => {}
        }
    }

    fn keep_sample(&mut self, at: (i32, i64), json: impl FnOnce() -> Vec<u8>) {
        let full = self.samples.len() >= self.max_samples;
        if self.max_samples == 0 || (full && self.samples.last().is_some_and(|s| (s.partition, s.offset) < at)) {
            return;
        }
        let i = self.samples.partition_point(|s| (s.partition, s.offset) < at);
        self.samples.insert(i, Sample { partition: at.0, offset: at.1, json: json() });
        self.samples.truncate(self.max_samples);
    }

    /// Adds another thread's counts.
    pub fn merge(&mut self, other: Tally) {
        self.events += other.events;
        self.not_events += other.not_events;
        self.no_game_or_event_name += other.no_game_or_event_name;
        for (a, b) in self.skipped.iter_mut().zip(other.skipped) {
            *a += b;
        }
        self.no_player += other.no_player;
        self.candidates += other.candidates;
        self.matches += other.matches;
        self.triggers += other.triggers;
        self.control_matches += other.control_matches;
        self.suppressed_cooldown += other.suppressed_cooldown;
        self.suppressed_cap += other.suppressed_cap;
        self.counting += other.counting;
        self.timers_armed += other.timers_armed;
        self.inactivity_firings += other.inactivity_firings;
        self.inactivity_triggers += other.inactivity_triggers;
        self.timers_pending += other.timers_pending;
        for (variant, n) in other.variants {
            *self.variants.entry(variant).or_default() += n;
        }
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        for (kind, example) in other.error_examples {
            let keep = self.error_examples.get(kind).is_none_or(|old| (example.partition, example.offset) < (old.partition, old.offset));
            if keep {
                self.error_examples.insert(kind, example);
            }
        }
        self.fuel.merge(&other.fuel);
        union(&mut self.players, other.players);
        union(&mut self.control_players, other.control_players);
        self.triggers_without_player += other.triggers_without_player;
        for (hour, n) in other.per_hour {
            *self.per_hour.entry(hour).or_default() += n;
        }
        let mut samples = std::mem::take(&mut self.samples);
        samples.extend(other.samples);
        samples.sort_by_key(|s| (s.partition, s.offset));
        samples.truncate(self.max_samples);
        self.samples = samples;
    }
}

/// `a` ∪= `b`, moving the smaller set into the larger.
fn union(a: &mut Players, b: Players) {
    if a.len() < b.len() {
        let mine = std::mem::replace(a, b);
        a.extend(mine);
    } else {
        a.extend(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtcrm_sandbox::EvalError;

    #[test]
    fn fuel_percentiles_are_within_one_percent() {
        let mut h = FuelHistogram::default();
        assert_eq!(h.percentile(0.5), None);
        for v in 1..=100_000u64 {
            h.record(v * 3);
        }
        for (p, exact) in [(0.5, 150_000u64), (0.99, 297_000)] {
            let got = h.percentile(p).unwrap();
            assert!((got as f64 - exact as f64).abs() / exact as f64 <= 0.01, "p{p}: {got} vs {exact}");
        }
        let mut small = FuelHistogram::default();
        for v in [5, 5, 7, 63] {
            small.record(v);
        }
        assert_eq!((small.percentile(0.5), small.percentile(1.0)), (Some(5), Some(63)), "exact below 64");
        let mut big = FuelHistogram::default();
        big.record(u64::MAX);
        assert!(big.percentile(0.5).unwrap() > u64::MAX / 100 * 99);
    }

    #[test]
    fn counts_merge_exactly() {
        let trigger = Decision::Matched { fuel: 1000, then: Controlled::Trigger { variant: None } };
        let mut a = Tally::new(2);
        let mut b = Tally::new(2);
        a.record(&trigger, (0, 5), || "p1".into(), 10, || b"a5".to_vec());
        a.record(&trigger, (0, 9), || "p2".into(), 10, || b"a9".to_vec());
        a.record(&trigger, (0, 12), || "p3".into(), 11, || panic!("not built: the samples are full of earlier ones"));
        b.record(&trigger, (0, 7), || "p1".into(), 40, || b"b7".to_vec());
        b.record(&trigger, (1, 0), String::new, 40, || b"b10".to_vec());
        b.record(&Decision::FilterFalse { fuel: 10 }, (1, 1), || unreachable!(), 0, || unreachable!());
        b.record(&Decision::Skipped(Skip::AfterEnd), (1, 2), || unreachable!(), 0, || unreachable!());
        b.record(&Decision::FilterError(EvalError::Exception("Error: late".into())), (1, 3), || unreachable!(), 0, || unreachable!());
        a.record(&Decision::FilterError(EvalError::Exception("Error: early".into())), (0, 3), || unreachable!(), 0, || unreachable!());
        a.merge(b);
        assert_eq!((a.candidates, a.matches, a.triggers, a.triggers_without_player), (8, 5, 5, 1));
        assert_eq!(a.players.len(), 3);
        assert_eq!(a.per_hour, BTreeMap::from([(10, 2), (11, 1), (40, 2)]));
        assert_eq!(a.skipped[5], 1);
        assert_eq!(a.errors[4], 2);
        assert_eq!(a.error_examples["exception"].message, "Error: early");
        let kept: Vec<(i32, i64)> = a.samples.iter().map(|s| (s.partition, s.offset)).collect();
        assert_eq!(kept, [(0, 5), (0, 7)]);
        // 1000 is the lower bound of its bucket [1000, 1008): the midpoint is reported.
        assert_eq!((a.fuel.percentile(0.01), a.fuel.percentile(1.0)), (Some(10), Some(1004)));
    }

    #[test]
    fn controlled_decisions_and_firings_are_counted_apart_from_triggers() {
        let matched = |then: Controlled| Decision::Matched { fuel: 5, then };
        let mut a = Tally::new(4);
        let mut b = Tally::new(4);
        a.record(&matched(Controlled::Trigger { variant: Some("A".into()) }), (0, 1), || "p1".into(), 1, || b"t1".to_vec());
        a.record(&matched(Controlled::Counting { so_far: 1, at_least: 3 }), (0, 2), || unreachable!(), 1, || unreachable!());
        a.record(&matched(Controlled::Cooldown { until: 9 }), (0, 3), || unreachable!(), 1, || unreachable!());
        a.record(&Decision::NoPlayer, (0, 4), || unreachable!(), 1, || unreachable!());
        b.record(&matched(Controlled::ControlGroup), (1, 1), || "p2".into(), 2, || unreachable!());
        b.record(&matched(Controlled::Cap { cap: 1 }), (1, 2), || unreachable!(), 2, || unreachable!());
        b.record(&matched(Controlled::Armed { due: 7 }), (1, 3), || unreachable!(), 2, || unreachable!());
        b.record(&matched(Controlled::Trigger { variant: Some("A".into()) }), (1, 4), || "p3".into(), 2, || b"t2".to_vec());
        b.record_firing(&Controlled::Trigger { variant: Some("B".into()) }, (1, 3), "p3", 30, || b"f".to_vec());
        b.record_firing(&Controlled::Cooldown { until: 1 }, (1, 0), "p4", 30, || unreachable!());
        b.timers_pending = 2;
        a.merge(b);
        assert_eq!((a.candidates, a.matches, a.no_player), (7, 7, 1), "a firing is not an evaluation");
        assert_eq!((a.triggers, a.control_matches, a.counting, a.suppressed_cooldown, a.suppressed_cap), (3, 1, 1, 2, 1));
        assert_eq!((a.timers_armed, a.inactivity_firings, a.inactivity_triggers, a.timers_pending), (1, 2, 1, 2));
        assert_eq!(a.variants, BTreeMap::from([("A".to_owned(), 2), ("B".to_owned(), 1)]));
        assert_eq!((a.players.len(), a.control_players.len()), (2, 1));
        assert_eq!(a.per_hour, BTreeMap::from([(1, 1), (2, 1), (30, 1)]), "triggers only, a firing at its due hour");
        assert_eq!(a.samples.iter().map(|s| s.json.as_slice()).collect::<Vec<_>>(), [b"t1".as_slice(), b"f", b"t2"]);
    }
}
