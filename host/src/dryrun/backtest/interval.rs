//! The backtest's interval: `--from TIME [--to TIME]`, by record timestamp, `from` inclusive and
//! `to` exclusive.

use crate::campaigns::definition::parse_time;
use chrono::{DateTime, NaiveDate, SecondsFormat, TimeDelta, Utc};

/// What a `--from`/`--to` value may be, for error messages.
pub const TIME_FORMS: &str = "an RFC 3339 time (2023-11-20T11:00:00Z), a date (2023-11-20, midnight UTC), \
                              `now`, or now-DURATION (now-7d, now-24h, now-30m, now-90s)";

/// Parses a `--from`/`--to` value (see [`TIME_FORMS`]) against the wall clock `now`.
pub fn parse_time_at(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let t = text.trim();
    if let Some(time) = parse_time(t) {
        return Ok(time);
    }
    if let Ok(date) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(date.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    if t == "now" {
        return Ok(now);
    }
    if let Some(ago) = t.strip_prefix("now-").and_then(parse_duration) {
        return now.checked_sub_signed(ago).ok_or_else(|| format!("`{text}` is too far in the past"));
    }
    Err(format!("`{text}` is not a time: use {TIME_FORMS}"))
}

/// A clap value parser for `--from`/`--to` (relative forms are against the wall clock now).
pub fn parse_time_arg(text: &str) -> Result<DateTime<Utc>, String> {
    parse_time_at(text, Utc::now())
}

/// `90s`, `30m`, `24h`, `7d`.
fn parse_duration(text: &str) -> Option<TimeDelta> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: i64 = n.parse().ok()?;
    match unit {
        "s" => TimeDelta::try_seconds(n),
        "m" => TimeDelta::try_minutes(n),
        "h" => TimeDelta::try_hours(n),
        "d" => TimeDelta::try_days(n),
        _ => None,
    }
}

/// RFC 3339 with the precision the value has.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Why an interval is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntervalError {
    /// `from >= to`: no record timestamp can lie in `[from, to)`.
    #[error("--from {from} is not before --to {to}: the interval [from, to) is empty; give a --from earlier than --to")]
    Empty { from: String, to: String },
}

/// Record timestamps in `[from, to)`; `to` absent: up to the end of the topic when the run
/// starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub from: DateTime<Utc>,
    pub to: Option<DateTime<Utc>>,
}

impl Interval {
    /// Checks that the interval can hold a timestamp.
    pub fn new(from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> Result<Interval, IntervalError> {
        match to {
            Some(to) if from >= to => Err(IntervalError::Empty { from: format_time(from), to: format_time(to) }),
            _ => Ok(Interval { from, to }),
        }
    }

    pub fn from_ms(&self) -> i64 {
        self.from.timestamp_millis()
    }

    pub fn to_ms(&self) -> Option<i64> {
        self.to.map(|t| t.timestamp_millis())
    }

    /// Whether a record timestamp (Unix milliseconds) lies in the interval.
    pub fn contains(&self, ms: i64) -> bool {
        ms >= self.from_ms() && self.to_ms().is_none_or(|to| ms < to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_every_accepted_form() {
        let now = parse_time("2024-01-10T12:00:00Z").unwrap();
        let at = |s: &str| parse_time_at(s, now).map(format_time);
        assert_eq!(at("2023-11-20T11:00:00.5+01:00").unwrap(), "2023-11-20T10:00:00.500Z");
        assert_eq!(at("2023-11-20").unwrap(), "2023-11-20T00:00:00Z");
        assert_eq!(at("now").unwrap(), "2024-01-10T12:00:00Z");
        assert_eq!(at("now-7d").unwrap(), "2024-01-03T12:00:00Z");
        assert_eq!(at(" now-90s ").unwrap(), "2024-01-10T11:58:30Z");
        for bad in ["yesterday", "2023-13-01", "now-7w", "now-", "now-d", "1700000000"] {
            let e = at(bad).unwrap_err();
            assert!(e.starts_with(&format!("`{bad}` is not a time: use an RFC 3339 time")), "{bad}: {e}");
        }
        assert!(at("now-99999999999999d").is_err());
    }

    #[test]
    fn intervals_are_half_open_and_never_empty() {
        let t = |s: &str| parse_time(s).unwrap();
        let i = Interval::new(t("2024-01-01T00:00:00Z"), Some(t("2024-01-02T00:00:00Z"))).unwrap();
        assert!(i.contains(i.from_ms()) && !i.contains(i.to_ms().unwrap()) && i.contains(i.to_ms().unwrap() - 1));
        assert!(!i.contains(i.from_ms() - 1));
        assert!(Interval::new(t("2024-01-01T00:00:00Z"), None).unwrap().contains(i64::MAX));
        let e = Interval::new(t("2024-01-02T00:00:00Z"), Some(t("2024-01-01T00:00:00Z"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--from 2024-01-02T00:00:00Z is not before --to 2024-01-01T00:00:00Z: the interval [from, to) is empty; give a --from earlier than --to"
        );
        assert!(Interval::new(t("2024-01-01T00:00:00Z"), Some(t("2024-01-01T00:00:00Z"))).is_err());
    }
}
