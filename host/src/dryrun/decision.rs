//! The deciding check of one campaign for one event, for the backtest and explain.
//!
//! [`Decision`] names what decided, in spec §4's order: one of the cheap checks
//! ([`Skip`]), or the filter's verdict. It is the place spec §12's controls slot in when they
//! land: `NoPlayer` between the cheap checks and the filter, and after a match, in §12's order,
//! `Count`, `Cooldown`, `Cap` and `Holdout` (a control-group match) instead of `Trigger`, with
//! the variant on `Trigger`. The backtest counts decisions and explain shows them, so a new
//! variant reaches both.

use crate::campaigns::registry::LiveCampaign;
use crate::campaigns::instances::InstanceBudget;
use crate::events::evaluate::{precheck, run_filter, EventMeta, Skip};
use crate::telemetry::metrics::CampaignTelemetry;
use rtcrm_sandbox::{EvalError, Event, Sandbox};
use std::sync::Arc;

/// What decided whether a campaign triggers on an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// One of spec §4's checks 1–4 excluded the campaign; its filter did not run.
    Skipped(Skip),
    /// The filter ran and returned something other than boolean `true`.
    FilterFalse {
        /// Fuel the evaluation used.
        fuel: u64,
    },
    /// The filter threw, trapped or exceeded a limit: no match, and an error of its kind.
    FilterError(EvalError),
    /// The filter returned `true` and nothing after it held the trigger back.
    Trigger {
        /// Fuel the evaluation used.
        fuel: u64,
    },
}

impl Decision {
    /// A stable name for the API and reports: `disabled`, `quarantined`, `other_game`,
    /// `other_event_name`, `before_start`, `after_end`, `filter_false`, `filter_error`, `trigger`.
    pub fn code(&self) -> &'static str {
        match self {
            Decision::Skipped(skip) => skip_code(*skip),
            Decision::FilterFalse { .. } => "filter_false",
            Decision::FilterError(_) => "filter_error",
            Decision::Trigger { .. } => "trigger",
        }
    }

    /// Whether the filter ran and returned `true` (a filter match, before any control).
    pub fn matched(&self) -> bool {
        matches!(self, Decision::Trigger { .. })
    }

    /// Fuel of a successful evaluation.
    pub fn fuel(&self) -> Option<u64> {
        match self {
            Decision::FilterFalse { fuel } | Decision::Trigger { fuel } => Some(*fuel),
            _ => None,
        }
    }
}

/// The code of a cheap check (see [`Decision::code`]).
pub fn skip_code(skip: Skip) -> &'static str {
    match skip {
        Skip::Disabled => "disabled",
        Skip::Quarantined => "quarantined",
        Skip::OtherGame => "other_game",
        Skip::OtherEventName => "other_event_name",
        Skip::BeforeStart => "before_start",
        Skip::AfterEnd => "after_end",
    }
}

/// Decides `campaign` for `event`: spec §4's checks, then the filter, with an instance from the
/// campaign's own pool (counted in `budget`). `campaign` should be a [`dry_copy`]: the filter
/// run records into the campaign's counters.
pub fn decide(sandbox: &Sandbox, budget: &Arc<InstanceBudget>, campaign: &LiveCampaign, event: &Event, meta: &EventMeta<'_>, tick: u64) -> Decision {
    match precheck(campaign, meta) {
        Some(skip) => Decision::Skipped(skip),
        None => filter_decision(sandbox, budget, campaign, event, tick),
    }
}

/// The filter's part of [`decide`], for a campaign whose cheap checks passed.
pub fn filter_decision(sandbox: &Sandbox, budget: &Arc<InstanceBudget>, campaign: &LiveCampaign, event: &Event, tick: u64) -> Decision {
    match run_filter(sandbox, budget, campaign, event, tick) {
        Ok(verdict) if verdict.matched => Decision::Trigger { fuel: verdict.fuel_used },
        Ok(verdict) => Decision::FilterFalse { fuel: verdict.fuel_used },
        Err(err) => Decision::FilterError(err),
    }
}

/// A copy of a campaign version for a dry run: the same definition, compiled filter and limits,
/// with its own (empty) instance pool, counters registered nowhere, and no failure count, so
/// nothing it does reaches the processor's metrics, `/api/campaigns` or quarantine.
pub fn dry_copy(campaign: &LiveCampaign) -> LiveCampaign {
    LiveCampaign::new(campaign.def.clone(), campaign.compiled.clone(), campaign.limits, CampaignTelemetry::detached(campaign.def.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaigns::definition::{parse_time, CampaignDef};
    use crate::config::Clock;
    use rtcrm_sandbox::{CompiledFilter, SandboxConfig};

    pub(crate) fn campaign(sandbox: &Sandbox, json: &str) -> LiveCampaign {
        let def = CampaignDef::parse(None, json.as_bytes()).unwrap();
        let crate::campaigns::definition::FilterSource::Js(source) = &def.filter else { panic!("a JS campaign") };
        let compiled = CompiledFilter::Js(sandbox.compile_js(source).unwrap());
        let limits = sandbox.limits().lowered(def.fuel, def.memory_mb);
        LiveCampaign::new(def, compiled, limits, CampaignTelemetry::detached(0))
    }

    #[test]
    fn each_check_decides_in_spec_order() {
        let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
        let budget = InstanceBudget::new(16);
        let event = Event::parse(br#"{"game":"foe","event_name":"fight","created_at":"2023-11-20T11:00:00Z","data":{"result":"loss"}}"#.to_vec()).unwrap();
        let meta = EventMeta::read(&event, Clock::Event).unwrap();
        assert_eq!(meta.time, parse_time("2023-11-20T11:00:00Z").unwrap());
        let cases = [
            (r#"{"campaign_id":1,"enabled":false,"game":"foe","event_name":"login","filter":"e => true"}"#, "disabled"),
            (r#"{"campaign_id":2,"enabled":true,"game":"elvenar","event_name":"fight","filter":"e => true"}"#, "other_game"),
            (r#"{"campaign_id":3,"enabled":true,"game":"foe","event_name":"login","filter":"e => true"}"#, "other_event_name"),
            (r#"{"campaign_id":4,"enabled":true,"game":"foe","event_name":"fight","start_date":"2023-11-20T11:00:00Z","filter":"e => true"}"#, "before_start"),
            (r#"{"campaign_id":5,"enabled":true,"game":"foe","event_name":"fight","end_date":"2023-11-20T11:00:00Z","filter":"e => true"}"#, "after_end"),
            (r#"{"campaign_id":6,"enabled":true,"game":"foe","event_name":"fight","filter":"e => e.data.result === 'win'"}"#, "filter_false"),
            (r#"{"campaign_id":7,"enabled":true,"game":"foe","event_name":"fight","filter":"e => e.nope.deeper"}"#, "filter_error"),
            (r#"{"campaign_id":8,"enabled":true,"game":"foe","event_name":"fight","filter":"e => 1"}"#, "filter_false"),
            (r#"{"campaign_id":9,"enabled":true,"game":"foe","event_name":"fight","filter":"e => e.data.result === 'loss'"}"#, "trigger"),
        ];
        for (json, code) in cases {
            let c = campaign(&sandbox, json);
            let d = decide(&sandbox, &budget, &c, &event, &meta, 1);
            assert_eq!(d.code(), code, "{json}: {d:?}");
            assert_eq!(matches!(d, Decision::Skipped(_)), !(code.starts_with("filter") || code == "trigger"), "{json}");
            assert_eq!(d.fuel().is_some(), code == "filter_false" || code == "trigger", "{json}");
            if let Decision::FilterError(e) = &d {
                assert!(e.to_string().contains("TypeError"), "{e}");
            }
        }
    }

    #[test]
    fn a_dry_copy_leaves_the_original_untouched() {
        let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
        let budget = InstanceBudget::new(16);
        let original = campaign(&sandbox, r#"{"campaign_id":7,"enabled":true,"game":"foe","event_name":"fight","filter":"e => e.nope.deeper"}"#);
        let copy = dry_copy(&original);
        let event = Event::parse(br#"{"game":"foe","event_name":"fight"}"#.to_vec()).unwrap();
        for _ in 0..3 {
            assert_eq!(filter_decision(&sandbox, &budget, &copy, &event, 1).code(), "filter_error");
        }
        assert_eq!(original.telemetry.evaluations.get(), 0);
        assert_eq!(copy.telemetry.evaluations.get(), 3);
        assert!(!original.is_quarantined());
    }
}
