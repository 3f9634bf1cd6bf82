//! Per-campaign counters for the HTTP API and the console (`GET /api/campaigns`): evaluations,
//! matches, errors by kind, fuel percentiles over recent evaluations, and the last match time.
//!
//! Recorded by the workers on every evaluation, so recording takes no lock beyond a read lock on
//! the id map (taken for writing only when a campaign id is seen for the first time): counters
//! are atomics, and the fuel reservoir is a ring of the last [`FUEL_WINDOW`] values, written
//! without locks. Counters are cumulative per campaign id, across versions (as in `/metrics`).

use rtcrm_sandbox::{ErrorKind, EvalError, Verdict};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// How many recent evaluations the fuel percentiles are computed over.
pub const FUEL_WINDOW: usize = 256;

/// Counters of one campaign id.
pub struct CampaignStats {
    evaluations: AtomicU64,
    matches: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    /// Ring of recent fuel values; `fuel_next` counts writes (the next slot is `fuel_next % N`).
    fuel: [AtomicU64; FUEL_WINDOW],
    fuel_next: AtomicU64,
    /// Unix milliseconds of the last match; 0: none yet.
    last_match_ms: AtomicI64,
    /// The last failed evaluation (written on failures only).
    last_error: Mutex<Option<LastError>>,
}

/// A campaign's last failed evaluation, with the event that caused it (spec §13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    pub kind: ErrorKind,
    /// The error's text (already bounded by the sandbox).
    pub message: String,
    pub partition: i32,
    pub offset: i64,
    /// Unix milliseconds.
    pub at_ms: i64,
}

impl Default for CampaignStats {
    fn default() -> Self {
        CampaignStats {
            evaluations: AtomicU64::new(0),
            matches: AtomicU64::new(0),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            fuel: std::array::from_fn(|_| AtomicU64::new(0)),
            fuel_next: AtomicU64::new(0),
            last_match_ms: AtomicI64::new(0),
            last_error: Mutex::new(None),
        }
    }
}

/// A consistent-enough copy of one campaign's counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CountersView {
    pub evaluations: u64,
    pub matches: u64,
    /// Per error kind, in [`ErrorKind::ALL`] order.
    pub errors: Vec<(ErrorKind, u64)>,
    /// Fuel percentiles over the last [`FUEL_WINDOW`] successful evaluations (None: none yet).
    pub fuel_p50: Option<u64>,
    pub fuel_p99: Option<u64>,
    /// Unix milliseconds of the last match.
    pub last_match_ms: Option<i64>,
    pub last_error: Option<LastError>,
}

impl CampaignStats {
    /// Records the event that made the last evaluation fail.
    pub fn record_error(&self, error: LastError) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    /// Records one evaluation.
    pub fn record(&self, result: &Result<Verdict, EvalError>) {
        self.evaluations.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(verdict) => {
                let slot = self.fuel_next.fetch_add(1, Ordering::Relaxed) as usize % FUEL_WINDOW;
                self.fuel[slot].store(verdict.fuel_used, Ordering::Relaxed);
                if verdict.matched {
                    self.matches.fetch_add(1, Ordering::Relaxed);
                    self.last_match_ms.store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
                }
            }
            Err(err) => {
                let i = ErrorKind::ALL.iter().position(|k| *k == err.kind()).expect("every kind is in ALL");
                self.errors[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn snapshot(&self) -> CountersView {
        let written = (self.fuel_next.load(Ordering::Relaxed) as usize).min(FUEL_WINDOW);
        let mut fuel: Vec<u64> = self.fuel[..written].iter().map(|f| f.load(Ordering::Relaxed)).collect();
        fuel.sort_unstable();
        let percentile = |p: f64| -> Option<u64> {
            // Nearest rank.
            (!fuel.is_empty()).then(|| fuel[((p * fuel.len() as f64).ceil() as usize).clamp(1, fuel.len()) - 1])
        };
        let last = self.last_match_ms.load(Ordering::Relaxed);
        CountersView {
            evaluations: self.evaluations.load(Ordering::Relaxed),
            matches: self.matches.load(Ordering::Relaxed),
            errors: ErrorKind::ALL.iter().zip(&self.errors).map(|(k, n)| (*k, n.load(Ordering::Relaxed))).collect(),
            fuel_p50: percentile(0.50),
            fuel_p99: percentile(0.99),
            last_match_ms: (last != 0).then_some(last),
            last_error: self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

/// Campaign id → counters.
#[derive(Default)]
pub struct Stats {
    campaigns: RwLock<HashMap<i64, Arc<CampaignStats>>>,
}

impl Stats {
    /// The counters of `campaign`, created on first use; workers keep the handle and record
    /// into it without touching the map again.
    pub fn entry(&self, campaign: i64) -> Arc<CampaignStats> {
        let found = self.campaigns.read().unwrap_or_else(|p| p.into_inner()).get(&campaign).cloned();
        match found {
            Some(s) => s,
            None => self.campaigns.write().unwrap_or_else(|p| p.into_inner()).entry(campaign).or_default().clone(),
        }
    }

    /// Records one evaluation of `campaign`.
    #[cfg(test)]
    pub fn record(&self, campaign: i64, result: &Result<Verdict, EvalError>) {
        self.entry(campaign).record(result);
    }

    /// The counters of `campaign` (zeros when it was never evaluated).
    pub fn get(&self, campaign: i64) -> CountersView {
        let found = self.campaigns.read().unwrap_or_else(|p| p.into_inner()).get(&campaign).cloned();
        found.map(|s| s.snapshot()).unwrap_or_else(|| CountersView {
            errors: ErrorKind::ALL.iter().map(|k| (*k, 0)).collect(),
            ..CountersView::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(matched: bool, fuel_used: u64) -> Result<Verdict, EvalError> {
        Ok(Verdict { matched, fuel_used })
    }

    #[test]
    fn counters_and_percentiles() {
        let stats = Stats::default();
        assert_eq!(stats.get(1).evaluations, 0);
        assert_eq!(stats.get(1).errors.len(), ErrorKind::ALL.len());
        for fuel in 1..=100 {
            stats.record(1, &ok(fuel % 10 == 0, fuel * 1000));
        }
        stats.record(1, &Err(EvalError::Fuel { limit: 5 }));
        stats.record(1, &Err(EvalError::Exception("Error: x".into())));
        stats.record(1, &Err(EvalError::Exception("Error: y".into())));
        stats.record(2, &ok(false, 7));
        let s = stats.get(1);
        assert_eq!((s.evaluations, s.matches), (103, 10));
        assert_eq!(s.fuel_p50, Some(50_000));
        assert_eq!(s.fuel_p99, Some(99_000));
        assert!(s.last_match_ms.is_some());
        let errors: HashMap<&str, u64> = s.errors.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        assert_eq!((errors["fuel"], errors["exception"], errors["trap"]), (1, 2, 0));
        let s2 = stats.get(2);
        assert_eq!((s2.evaluations, s2.matches, s2.fuel_p50, s2.fuel_p99, s2.last_match_ms), (1, 0, Some(7), Some(7), None));
    }

    #[test]
    fn the_fuel_window_keeps_the_most_recent_values() {
        let stats = Stats::default();
        for _ in 0..FUEL_WINDOW {
            stats.record(1, &ok(false, 1_000_000));
        }
        for _ in 0..FUEL_WINDOW {
            stats.record(1, &ok(false, 10));
        }
        assert_eq!((stats.get(1).fuel_p50, stats.get(1).fuel_p99), (Some(10), Some(10)));
    }
}
