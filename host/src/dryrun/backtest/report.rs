//! A backtest's report (spec §13): the JSON of `--json` and `POST /api/backtest`, and the human
//! table with its histogram.

use crate::dryrun::backtest::interval::format_time;
use crate::dryrun::backtest::source::SourceView;
use crate::dryrun::backtest::tally::{Tally, SKIPS};
use crate::dryrun::decision::{describe_controls, skip_code};
use crate::state::controls::Controls;
use rtcrm_sandbox::ErrorKind;
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Below this many hours between the first and the last trigger, the histogram is per hour.
pub const HOURLY_SPAN_HOURS: i64 = 48;
/// Beyond this many buckets from the first to the last trigger, only non-empty ones are listed.
pub const MAX_CONTIGUOUS_BUCKETS: i64 = 400;

/// Why a backtest ended before its source did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stopped {
    /// Cancelled (`DELETE /api/backtest/{id}`, or Ctrl-C).
    Cancelled,
    /// `max_events` events were read.
    MaxEvents,
    /// `max_seconds` passed.
    MaxSeconds,
}

/// Triggers per hour or per day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Histogram {
    /// `hour` or `day` (UTC), chosen by the span of the triggers.
    pub unit: &'static str,
    pub buckets: Vec<Bucket>,
}

/// One bucket of the histogram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// The bucket's start, RFC 3339 (UTC).
    pub start: String,
    pub triggers: u64,
}

/// An error example: the first failed evaluation of its kind.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorExampleView {
    pub kind: &'static str,
    pub message: String,
    /// The event's partition and offset (for a file: 0 and its line number).
    pub partition: i32,
    pub offset: i64,
}

/// Everything a backtest reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub campaign_id: i64,
    /// The campaign's controls (spec §12) in a few words; null: none.
    pub controls: Option<String>,
    pub source: SourceView,
    /// `event` or `processing` (then the record timestamp stands for the wall clock).
    pub clock: &'static str,
    /// Records read in the interval (events or not).
    pub events_read: u64,
    /// Records that are not JSON objects (the processor dead-letters them).
    pub not_events: u64,
    /// Events each cheap check of spec §4 excluded (in its order), events without a string
    /// game or event_name, and, for a campaign with controls, events without `player_id`.
    #[serde(serialize_with = "in_order")]
    pub skipped: Vec<(&'static str, u64)>,
    /// Events the filter ran on.
    pub candidates: u64,
    /// The filter returned `true`.
    pub filter_matches: u64,
    /// Triggers after the campaign's controls (spec §12), to the triggers topic: of filter
    /// matches and of inactivity timers.
    pub triggers: u64,
    /// Would-be triggers of the control group (spec §12's holdout): to the control topic.
    pub control_group_matches: u64,
    /// Distinct players of the control group's would-be triggers.
    pub control_group_players: u64,
    /// Would-be triggers held back by the player's `cooldown`.
    pub suppressed_cooldown: u64,
    /// Would-be triggers held back by `max_triggers_per_player`.
    pub suppressed_cap: u64,
    /// Filter matches that did not reach `count` yet (the count goes on).
    pub counting: u64,
    /// Filter matches that (re)armed an `inactivity` timer (such a match never triggers itself).
    pub timers_armed: u64,
    /// Inactivity timers that fired because their partition's time passed their due time
    /// (their outcomes are among triggers, control-group matches and suppressed).
    pub inactivity_firings: u64,
    /// Of `triggers`, those of inactivity timers.
    pub inactivity_triggers: u64,
    /// Inactivity timers still armed at the end of the interval (not due by their partition's
    /// latest event time): they would fire later, and are not counted as triggers.
    pub timers_pending_at_end: u64,
    /// Triggers per variant (spec §12's `variants`), in the campaign's order.
    #[serde(serialize_with = "in_order_owned")]
    pub variants: Vec<(String, u64)>,
    /// Distinct player ids among the triggers.
    pub unique_players: u64,
    pub triggers_without_player: u64,
    /// Failed evaluations by kind.
    #[serde(serialize_with = "in_order")]
    pub errors: Vec<(&'static str, u64)>,
    pub errors_total: u64,
    /// The first failed evaluation of each kind.
    pub error_examples: Vec<ErrorExampleView>,
    /// Nearest-rank percentiles of the fuel of every successful evaluation (within 1 %).
    pub fuel_p50: Option<u64>,
    pub fuel_p99: Option<u64>,
    pub histogram: Histogram,
    /// The first triggers by (partition, offset), exactly as the processor would produce them
    /// (spec §9), `triggered_at` being the time the window was checked against.
    pub sample_triggers: Vec<Box<RawValue>>,
    /// Why the backtest ended early (None: it read its whole source).
    pub stopped: Option<Stopped>,
    /// Wall-clock seconds from the first record to the last evaluation.
    pub seconds: f64,
    pub events_per_second: f64,
    /// What the numbers alone do not say.
    pub warnings: Vec<String>,
}

/// A list of (name, count) as a JSON object, in the list's order.
fn in_order<S: serde::Serializer>(pairs: &[(&'static str, u64)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(pairs.len()))?;
    for (k, v) in pairs {
        map.serialize_entry(k, v)?;
    }
    map.end()
}

/// [`in_order`] for owned names.
fn in_order_owned<S: serde::Serializer>(pairs: &[(String, u64)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(pairs.len()))?;
    for (k, v) in pairs {
        map.serialize_entry(k, v)?;
    }
    map.end()
}

/// The histogram of `per_hour` (Unix hour → triggers).
pub fn histogram(per_hour: &BTreeMap<i64, u64>) -> Histogram {
    let (Some((&first, _)), Some((&last, _))) = (per_hour.first_key_value(), per_hour.last_key_value()) else {
        return Histogram { unit: "hour", buckets: Vec::new() };
    };
    let (unit, width, counts): (&'static str, i64, BTreeMap<i64, u64>) = if last - first < HOURLY_SPAN_HOURS {
        ("hour", 3600, per_hour.clone())
    } else {
        let mut days = BTreeMap::new();
        for (hour, n) in per_hour {
            *days.entry(hour.div_euclid(24)).or_default() += n;
        }
        ("day", 86_400, days)
    };
    let start = |bucket: i64| {
        chrono::DateTime::from_timestamp(bucket.saturating_mul(width), 0).map_or_else(|| format!("unrepresentable ({bucket})"), format_time)
    };
    let (lo, hi) = (*counts.keys().next().expect("non-empty"), *counts.keys().next_back().expect("non-empty"));
    let buckets = if hi - lo < MAX_CONTIGUOUS_BUCKETS {
        (lo..=hi).map(|b| Bucket { start: start(b), triggers: counts.get(&b).copied().unwrap_or(0) }).collect()
    } else {
        counts.iter().map(|(b, n)| Bucket { start: start(*b), triggers: *n }).collect()
    };
    Histogram { unit, buckets }
}

/// Builds the report from the merged tally.
pub fn build(campaign_id: i64, controls: &Controls, clock: &'static str, source: SourceView, tally: Tally, stopped: Option<Stopped>, seconds: f64) -> Report {
    let mut skipped: Vec<(&'static str, u64)> = SKIPS.iter().zip(tally.skipped).map(|(s, n)| (skip_code(*s), n)).collect();
    skipped.push(("no_game_or_event_name", tally.no_game_or_event_name));
    skipped.push(("no_player", tally.no_player));
    let errors: Vec<(&'static str, u64)> = ErrorKind::ALL.iter().zip(tally.errors).map(|(k, n)| (k.as_str(), n)).collect();
    let errors_total = tally.errors.iter().sum();
    let mut warnings = Vec::new();
    if tally.skipped[0] > 0 {
        warnings.push("the campaign is disabled (enabled: false): it matches nothing; set enabled to true to estimate it".into());
    }
    if errors_total > 0 {
        let (kind, example) = tally.error_examples.iter().next().expect("an error has an example");
        warnings.push(format!(
            "{errors_total} of {} filter evaluations failed (first {kind}: {}); rtcrm run counts them as no match and \
             quarantines a campaign after --quarantine-after (default 50) consecutive failures",
            tally.candidates, example.message
        ));
    }
    if controls.needs_state() {
        let from = match &source {
            SourceView::Topic { .. } => "at the interval's start (--from)",
            SourceView::File { .. } => "at the file's first event",
        };
        warnings.push(format!(
            "per-player state starts empty {from}: cooldowns, caps, counts, timers and filter state of earlier events are not \
             known to the backtest (rtcrm run decides on what it has stored)"
        ));
    }
    if tally.no_player > 0 {
        warnings.push(format!(
            "{} events had no player_id: a campaign with controls never matches them",
            thousands(tally.no_player)
        ));
    }
    if tally.events == 0 && stopped.is_none() {
        warnings.push(match &source {
            SourceView::Topic { .. } => "no event in the interval: the topic holds no record with a timestamp in [from, to)".into(),
            SourceView::File { .. } => "the file holds no event".into(),
        });
    }
    let mut examples: Vec<ErrorExampleView> = tally
        .error_examples
        .into_values()
        .map(|e| ErrorExampleView { kind: e.kind.as_str(), message: e.message, partition: e.partition, offset: e.offset })
        .collect();
    examples.sort_by_key(|e| ErrorKind::ALL.iter().position(|k| k.as_str() == e.kind));
    // Every variant, in the campaign's order, those without a trigger included.
    let mut by_variant = tally.variants;
    let variants = controls.variants.iter().map(|v| (v.name.clone(), by_variant.remove(&v.name).unwrap_or(0))).collect();
    Report {
        campaign_id,
        controls: describe_controls(controls),
        clock,
        events_read: tally.events,
        not_events: tally.not_events,
        skipped,
        candidates: tally.candidates,
        filter_matches: tally.matches,
        triggers: tally.triggers,
        control_group_matches: tally.control_matches,
        control_group_players: tally.control_players.len() as u64,
        suppressed_cooldown: tally.suppressed_cooldown,
        suppressed_cap: tally.suppressed_cap,
        counting: tally.counting,
        timers_armed: tally.timers_armed,
        inactivity_firings: tally.inactivity_firings,
        inactivity_triggers: tally.inactivity_triggers,
        timers_pending_at_end: tally.timers_pending,
        variants,
        unique_players: tally.players.len() as u64,
        triggers_without_player: tally.triggers_without_player,
        errors,
        errors_total,
        error_examples: examples,
        fuel_p50: tally.fuel.percentile(0.50),
        fuel_p99: tally.fuel.percentile(0.99),
        histogram: histogram(&tally.per_hour),
        sample_triggers: tally
            .samples
            .into_iter()
            .map(|s| RawValue::from_string(String::from_utf8(s.json).expect("a trigger is UTF-8 JSON")).expect("a trigger is JSON"))
            .collect(),
        stopped,
        seconds,
        events_per_second: if seconds > 0.0 { tally.events as f64 / seconds } else { 0.0 },
        warnings,
        source,
    }
}

/// `12345678` → `12,345,678`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Widest bar of the histogram, in characters.
const BAR: u64 = 40;
/// Most histogram rows printed.
const MAX_ROWS: usize = 60;

impl Report {
    /// The human output: a table, the histogram, sample triggers, warnings.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        match &self.source {
            SourceView::Topic { topic, from, to, partitions, .. } => {
                let _ = writeln!(
                    w,
                    "backtest of campaign {} on {topic}, records from {from} to {} ({} partitions)",
                    self.campaign_id,
                    to.as_deref().unwrap_or("the end"),
                    partitions.len()
                );
            }
            SourceView::File { path } => {
                let _ = writeln!(w, "backtest of campaign {} on {path}", self.campaign_id);
            }
        }
        if let Some(stopped) = self.stopped {
            let why = match stopped {
                Stopped::Cancelled => "cancelled",
                Stopped::MaxEvents => "the event limit was reached",
                Stopped::MaxSeconds => "the time limit was reached",
            };
            let _ = writeln!(w, "stopped early: {why}; the counts cover the events read");
        }
        if let Some(controls) = &self.controls {
            let _ = writeln!(w, "controls: {controls}");
        }
        let _ = writeln!(w);
        let mut rows: Vec<(String, String)> = vec![("events read".into(), thousands(self.events_read))];
        if self.not_events > 0 {
            rows.push(("  not events (dead letters)".into(), thousands(self.not_events)));
        }
        for (code, n) in &self.skipped {
            if *n > 0 {
                rows.push((format!("  skipped: {}", code.replace('_', " ")), thousands(*n)));
            }
        }
        rows.push(("candidates (filter ran)".into(), thousands(self.candidates)));
        rows.push(("filter matches".into(), thousands(self.filter_matches)));
        if self.controls.is_some() {
            let mut controlled = |label: &str, n: u64| {
                if n > 0 {
                    rows.push((label.into(), thousands(n)));
                }
            };
            controlled("  counting (count not reached)", self.counting);
            controlled("  suppressed by cooldown", self.suppressed_cooldown);
            controlled("  suppressed by cap", self.suppressed_cap);
            controlled("  timers armed (inactivity)", self.timers_armed);
            controlled("inactivity firings", self.inactivity_firings);
        }
        rows.push(("triggers (after controls)".into(), thousands(self.triggers)));
        if self.inactivity_triggers > 0 {
            rows.push(("  by inactivity".into(), thousands(self.inactivity_triggers)));
        }
        for (variant, n) in &self.variants {
            rows.push((format!("  variant {variant}"), thousands(*n)));
        }
        rows.push(("control-group matches".into(), thousands(self.control_group_matches)));
        if self.timers_pending_at_end > 0 {
            rows.push(("timers still armed at the end".into(), thousands(self.timers_pending_at_end)));
        }
        rows.push(("unique players".into(), thousands(self.unique_players)));
        if self.triggers_without_player > 0 {
            rows.push(("  triggers without player_id".into(), thousands(self.triggers_without_player)));
        }
        let by_kind: Vec<String> = self.errors.iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{k} {}", thousands(*n))).collect();
        rows.push((
            "errors".into(),
            if by_kind.is_empty() { "0".into() } else { format!("{} ({})", thousands(self.errors_total), by_kind.join(", ")) },
        ));
        let fuel = |f: Option<u64>| f.map_or_else(|| "-".into(), thousands);
        rows.push(("fuel p50 / p99".into(), format!("{} / {}", fuel(self.fuel_p50), fuel(self.fuel_p99))));
        let width = rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
        for (k, v) in &rows {
            let _ = writeln!(w, "  {k:<width$}  {v:>12}");
        }
        if !self.histogram.buckets.is_empty() {
            let _ = writeln!(w, "\ntriggers per {} (UTC)", self.histogram.unit);
            let max = self.histogram.buckets.iter().map(|b| b.triggers).max().unwrap_or(1).max(1);
            let shown: Vec<_> = if self.histogram.buckets.len() > MAX_ROWS {
                self.histogram.buckets.iter().filter(|b| b.triggers > 0).take(MAX_ROWS).collect()
            } else {
                self.histogram.buckets.iter().collect()
            };
            for b in &shown {
                let label = if self.histogram.unit == "day" { b.start.get(..10).unwrap_or(&b.start) } else { b.start.get(..16).unwrap_or(&b.start) };
                let bar = "█".repeat(((b.triggers * BAR).div_ceil(max)) as usize);
                let _ = writeln!(w, "  {label:<16}  {:>10}  {bar}", thousands(b.triggers));
            }
            if shown.len() < self.histogram.buckets.iter().filter(|b| b.triggers > 0).count() {
                let _ = writeln!(w, "  … (--json lists every bucket)");
            }
        }
        for e in &self.error_examples {
            let at = match self.source {
                SourceView::File { .. } => format!("line {}", e.offset),
                SourceView::Topic { .. } => format!("partition {}, offset {}", e.partition, e.offset),
            };
            let _ = writeln!(w, "\nfirst {} error ({at}): {}", e.kind, e.message);
        }
        if !self.sample_triggers.is_empty() {
            let _ = writeln!(w, "\nsample triggers ({} of {}):", self.sample_triggers.len(), thousands(self.triggers));
            for t in &self.sample_triggers {
                let _ = writeln!(w, "  {}", t.get());
            }
        }
        for warning in &self.warnings {
            let _ = writeln!(w, "\nwarning: {warning}");
        }
        let _ = writeln!(
            w,
            "\nread {} events in {:.2} s ({} events/s)",
            thousands(self.events_read),
            self.seconds,
            thousands(self.events_per_second.round() as u64)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_unit_follows_the_span() {
        assert_eq!(histogram(&BTreeMap::new()), Histogram { unit: "hour", buckets: vec![] });
        let base = 1_700_438_400 / 3600; // 2023-11-20T00:00:00Z
        let hours = histogram(&BTreeMap::from([(base, 2), (base + 2, 1)]));
        assert_eq!(hours.unit, "hour");
        assert_eq!(hours.buckets.iter().map(|b| (b.start.as_str(), b.triggers)).collect::<Vec<_>>(), [
            ("2023-11-20T00:00:00Z", 2),
            ("2023-11-20T01:00:00Z", 0),
            ("2023-11-20T02:00:00Z", 1)
        ]);
        let days = histogram(&BTreeMap::from([(base + 1, 2), (base + 23, 1), (base + 72, 4)]));
        assert_eq!(days.unit, "day");
        assert_eq!(days.buckets.iter().map(|b| (b.start.as_str(), b.triggers)).collect::<Vec<_>>(), [
            ("2023-11-20T00:00:00Z", 3),
            ("2023-11-21T00:00:00Z", 0),
            ("2023-11-22T00:00:00Z", 0),
            ("2023-11-23T00:00:00Z", 4)
        ]);
        let sparse = histogram(&BTreeMap::from([(0, 1), (24 * 10_000, 1)]));
        assert_eq!(sparse.buckets.len(), 2, "a huge span lists the non-empty days only");
        assert_eq!(sparse.buckets[0].start, "1970-01-01T00:00:00Z");
    }

    #[test]
    fn numbers_have_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
