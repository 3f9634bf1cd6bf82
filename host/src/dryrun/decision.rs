//! The deciding check of one campaign for one event, for the backtest and explain.
//!
//! [`Decision`] names what decided, in spec §4's and §12's order: one of the cheap checks
//! ([`Skip`]), the player's absence (a campaign with controls), the filter's verdict, and after
//! a match what the campaign's controls made of it ([`Controlled`]: a trigger with its variant,
//! a control-group match, counting, cooldown, cap, an armed inactivity timer). The backtest
//! counts decisions and explain shows them, so a new variant reaches both.
//!
//! The controls themselves are decided by [`crate::state::decide`], the processor's own pure
//! decision code: the backtest runs it over an in-memory map of per-player states
//! ([`crate::dryrun::backtest::players`]); explain, which does not read the processor's stored
//! state, decides only what does not depend on it (holdout, variant, arming a timer) and says
//! so otherwise ([`Controlled::OnStoredState`]).

use crate::campaigns::instances::InstanceBudget;
use crate::campaigns::registry::LiveCampaign;
use crate::events::evaluate::{player_key, run_filter, run_filter_with_state};
use crate::state::controls::{Controls, Millis};
use crate::state::decide::{self, Outcome};
use crate::telemetry::metrics::CampaignTelemetry;
use crate::events::evaluate::Skip;
use rtcrm_sandbox::{EvalError, Event, Sandbox, Verdict};
use std::sync::Arc;

/// What decided whether a campaign triggers on an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// One of spec §4's checks 1–4 excluded the campaign; its filter did not run.
    Skipped(Skip),
    /// The campaign has controls (spec §12) and the event no `player_id`: never a match, and
    /// the filter does not run.
    NoPlayer,
    /// The filter ran and returned something other than boolean `true`.
    FilterFalse {
        /// Fuel the evaluation used.
        fuel: u64,
    },
    /// The filter threw, trapped or exceeded a limit: no match, and an error of its kind.
    FilterError(EvalError),
    /// The filter returned `true`; `then` is what the campaign's controls made of the match
    /// (for a campaign without controls: a trigger).
    Matched {
        /// Fuel the evaluation used.
        fuel: u64,
        then: Controlled,
    },
}

/// What spec §12's controls made of a filter match (or of an inactivity timer's firing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Controlled {
    /// A trigger, to the triggers topic, with the player's variant (if the campaign has any).
    Trigger { variant: Option<String> },
    /// A control-group player's would-be trigger (`holdout_percent`): to the control topic.
    ControlGroup,
    /// `count` is not reached yet: `so_far` matches within the window, of `at_least`.
    Counting { so_far: u32, at_least: u32 },
    /// Held back by the player's cooldown, which runs until `until` (event time, Unix ms).
    Cooldown { until: Millis },
    /// Held back: the player had `cap` triggers already (`max_triggers_per_player`).
    Cap { cap: u32 },
    /// An `inactivity` campaign: the match (re)armed the player's timer, due at `due`.
    Armed { due: Millis },
    /// Explain only: the controls decide on the player's stored state, which explain does not
    /// read.
    OnStoredState,
}

impl Controlled {
    /// The controls' part of a [`decide::Outcome`] (`None` for no match).
    ///
    /// A replay (an event at or before the state's last position) cannot occur in a backtest,
    /// whose positions only increase; were one to come, it counts as what it decided first.
    pub fn of(outcome: Outcome, campaign_id: i64, player: &str, controls: &Controls) -> Option<Controlled> {
        Some(match outcome {
            Outcome::NoMatch | Outcome::Replayed { triggered: false } => return None,
            Outcome::Replayed { triggered: true } => Controlled::stateless(campaign_id, player, controls),
            Outcome::Counting { so_far, at_least } => Controlled::Counting { so_far, at_least },
            Outcome::Cooldown { until } => Controlled::Cooldown { until },
            Outcome::Cap { cap } => Controlled::Cap { cap },
            Outcome::Armed { due } => Controlled::Armed { due },
            Outcome::Trigger { control: true, .. } => Controlled::ControlGroup,
            Outcome::Trigger { control: false, variant } => Controlled::Trigger { variant },
        })
    }

    /// A match of a campaign whose controls keep no state (holdout and variants only, or none):
    /// decided by the player's hash alone, as the processor decides it.
    pub fn stateless(campaign_id: i64, player: &str, controls: &Controls) -> Controlled {
        if decide::in_control_group(campaign_id, player, controls.holdout_bp) {
            Controlled::ControlGroup
        } else {
            Controlled::Trigger { variant: decide::variant(campaign_id, player, controls) }
        }
    }

    /// A stable name (see [`Decision::code`]).
    pub fn code(&self) -> &'static str {
        match self {
            Controlled::Trigger { .. } => "trigger",
            Controlled::ControlGroup => "control_group",
            Controlled::Counting { .. } => "counting",
            Controlled::Cooldown { .. } => "cooldown",
            Controlled::Cap { .. } => "cap",
            Controlled::Armed { .. } => "armed",
            Controlled::OnStoredState => "controls",
        }
    }
}

impl Decision {
    /// A stable name for the API and reports: `disabled`, `quarantined`, `other_game`,
    /// `other_event_name`, `before_start`, `after_end`, `no_player`, `filter_false`,
    /// `filter_error`, and after a match `trigger`, `control_group`, `counting`, `cooldown`,
    /// `cap`, `armed` or `controls` (explain: decided on the player's stored state).
    pub fn code(&self) -> &'static str {
        match self {
            Decision::Skipped(skip) => skip_code(*skip),
            Decision::NoPlayer => "no_player",
            Decision::FilterFalse { .. } => "filter_false",
            Decision::FilterError(_) => "filter_error",
            Decision::Matched { then, .. } => then.code(),
        }
    }

    /// Whether the filter ran and returned `true` (a filter match, before any control).
    pub fn matched(&self) -> bool {
        matches!(self, Decision::Matched { .. })
    }

    /// Whether the event triggers (to the triggers topic).
    pub fn triggers(&self) -> bool {
        matches!(self, Decision::Matched { then: Controlled::Trigger { .. }, .. })
    }

    /// Fuel of a successful evaluation.
    pub fn fuel(&self) -> Option<u64> {
        match self {
            Decision::FilterFalse { fuel } | Decision::Matched { fuel, .. } => Some(*fuel),
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

/// The event's player as the processor's event path reads it: `player_id` as text (the trigger
/// key), `None` when the event has none or it is null. An empty string is a player, as there.
pub fn player_of(event: &Event) -> Option<String> {
    match event.field("player_id") {
        None | Some(b"null") => None,
        Some(_) => Some(player_key(event)),
    }
}

/// Runs the campaign's filter as the processor runs it: `filter(event, state)` with `state`
/// (the player's current JavaScript state; `None`: none yet) for a campaign with `state`, and
/// returns the state it left; `filter(event)` otherwise (no state returned). The instance comes
/// from the campaign's own pool (counted in `budget`); `campaign` should be a [`dry_copy`]: the
/// run records into the campaign's counters.
pub fn run(sandbox: &Sandbox, budget: &Arc<InstanceBudget>, campaign: &LiveCampaign, event: &Event, tick: u64, state: Option<&str>) -> Result<(Verdict, Option<String>), EvalError> {
    match campaign.def.controls.state {
        Some(options) => run_filter_with_state(sandbox, budget, campaign, event, tick, state, options.max_bytes).map(|(v, s)| (v, Some(s))),
        None => run_filter(sandbox, budget, campaign, event, tick).map(|v| (v, None)),
    }
}

/// The filter's part of a decision for a campaign whose cheap checks passed (a player without
/// state, for a campaign with `state`); a match is [`Controlled::Trigger`] without variant, for
/// the caller to apply the controls to.
pub fn filter_decision(sandbox: &Sandbox, budget: &Arc<InstanceBudget>, campaign: &LiveCampaign, event: &Event, tick: u64) -> Decision {
    match run(sandbox, budget, campaign, event, tick, None) {
        Ok((verdict, _)) if verdict.matched => Decision::Matched { fuel: verdict.fuel_used, then: Controlled::Trigger { variant: None } },
        Ok((verdict, _)) => Decision::FilterFalse { fuel: verdict.fuel_used },
        Err(err) => Decision::FilterError(err),
    }
}

/// A copy of a campaign version for a dry run: the same definition, compiled filter and limits,
/// with its own (empty) instance pool, counters registered nowhere, and no failure count, so
/// nothing it does reaches the processor's metrics, `/api/campaigns` or quarantine.
pub fn dry_copy(campaign: &LiveCampaign) -> LiveCampaign {
    LiveCampaign::new(campaign.def.clone(), campaign.compiled.clone(), campaign.limits, CampaignTelemetry::detached(campaign.def.id))
}

/// A duration in its shortest exact form: `90s`, `10m`, `1h`, `7d`, `1500ms`.
pub fn duration_text(ms: Millis) -> String {
    const UNITS: [(Millis, &str); 4] = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1_000, "s")];
    for (unit, name) in UNITS {
        if ms % unit == 0 {
            return format!("{}{name}", ms / unit);
        }
    }
    format!("{ms}ms")
}

/// A campaign's controls in a few words (`cooldown 1h, count 3 in 10m, holdout 10%`), in spec
/// §12's order of checks; `None` for a campaign without controls.
pub fn describe_controls(c: &Controls) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(state) = c.state {
        parts.push(match state.ttl_ms {
            Some(ttl) => format!("state (ttl {}, max {} bytes)", duration_text(ttl), state.max_bytes),
            None => format!("state (max {} bytes)", state.max_bytes),
        });
    }
    if let Some(count) = c.count {
        parts.push(format!("count {} in {}", count.at_least, duration_text(count.within_ms)));
    }
    if let Some(inactivity) = c.inactivity_ms {
        parts.push(format!("inactivity {}", duration_text(inactivity)));
    }
    if let Some(cooldown) = c.cooldown_ms {
        parts.push(format!("cooldown {}", duration_text(cooldown)));
    }
    if let Some(cap) = c.max_triggers_per_player {
        parts.push(format!("at most {cap} trigger{} per player", if cap == 1 { "" } else { "s" }));
    }
    if c.holdout_bp > 0 {
        let percent = format!("{:.2}", f64::from(c.holdout_bp) / 100.0);
        parts.push(format!("holdout {}%", percent.trim_end_matches('0').trim_end_matches('.')));
    }
    if !c.variants.is_empty() {
        let v: Vec<String> = c.variants.iter().map(|v| format!("{}:{}", v.name, v.weight)).collect();
        parts.push(format!("variants {}", v.join("/")));
    }
    if c.state_version != 0 {
        parts.push(format!("state_version {}", c.state_version));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaigns::definition::{parse_time, CampaignDef};
    use crate::config::Clock;
    use crate::events::evaluate::{precheck, EventMeta};
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
            // filter(event, state): called with a state (`{}` for a player without one).
            (r#"{"campaign_id":10,"enabled":true,"game":"foe","event_name":"fight","state":{},"filter":"function(e, s) { s.n = 1; return e.data.result === 'loss' }"}"#, "trigger"),
        ];
        for (json, code) in cases {
            let c = campaign(&sandbox, json);
            let d = match precheck(&c, &meta) {
                Some(skip) => Decision::Skipped(skip),
                None => filter_decision(&sandbox, &budget, &c, &event, 1),
            };
            assert_eq!(d.code(), code, "{json}: {d:?}");
            assert_eq!(matches!(d, Decision::Skipped(_)), !(code.starts_with("filter") || code == "trigger"), "{json}");
            assert_eq!(d.fuel().is_some(), code == "filter_false" || code == "trigger", "{json}");
            assert_eq!(d.matched() && d.triggers(), code == "trigger", "{json}");
            if let Decision::FilterError(e) = &d {
                assert!(e.to_string().contains("TypeError"), "{e}");
            }
        }
    }

    #[test]
    fn a_stateful_filter_returns_the_state_it_left() {
        let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
        let budget = InstanceBudget::new(4);
        let c = campaign(&sandbox, r#"{"campaign_id":1,"enabled":true,"game":"foe","event_name":"fight","state":{},"filter":"function(e, s) { s.n = (s.n || 0) + 1; return s.n >= 2 }"}"#);
        let event = Event::parse(br#"{"game":"foe","event_name":"fight"}"#.to_vec()).unwrap();
        let (v, s) = run(&sandbox, &budget, &c, &event, 1, None).unwrap();
        assert_eq!((v.matched, s.as_deref()), (false, Some(r#"{"n":1}"#)));
        let (v, s) = run(&sandbox, &budget, &c, &event, 1, s.as_deref()).unwrap();
        assert_eq!((v.matched, s.as_deref()), (true, Some(r#"{"n":2}"#)));
        let plain = campaign(&sandbox, r#"{"campaign_id":2,"enabled":true,"game":"foe","event_name":"fight","filter":"e => true"}"#);
        assert_eq!(run(&sandbox, &budget, &plain, &event, 1, None).unwrap().1, None, "no state without `state`");
    }

    #[test]
    fn the_player_is_read_as_the_processor_reads_it() {
        let p = |json: &str| player_of(&Event::parse(json.as_bytes().to_vec()).unwrap());
        assert_eq!((p(r#"{"player_id":12345}"#), p(r#"{"player_id":"p-9"}"#)), (Some("12345".into()), Some("p-9".into())));
        assert_eq!((p(r#"{"player_id":null}"#), p("{}")), (None, None));
        assert_eq!(p(r#"{"player_id":""}"#), Some(String::new()), "an empty string is a player, as in the event path");
    }

    #[test]
    fn outcomes_map_to_controlled_decisions() {
        let c = Controls::default();
        assert_eq!(Controlled::of(Outcome::NoMatch, 1, "p", &c), None);
        assert_eq!(Controlled::of(Outcome::Cooldown { until: 5 }, 1, "p", &c), Some(Controlled::Cooldown { until: 5 }));
        assert_eq!(Controlled::of(Outcome::Trigger { control: true, variant: None }, 1, "p", &c), Some(Controlled::ControlGroup));
        assert_eq!(
            Controlled::of(Outcome::Trigger { control: false, variant: Some("B".into()) }, 1, "p", &c),
            Some(Controlled::Trigger { variant: Some("B".into()) })
        );
        let all = Controls { holdout_bp: 10_000, ..Controls::default() };
        assert_eq!(Controlled::stateless(1, "p", &all), Controlled::ControlGroup, "a 100 % holdout holds every player out");
        assert_eq!(Controlled::stateless(1, "p", &c), Controlled::Trigger { variant: None });
    }

    #[test]
    fn controls_are_described_in_a_few_words() {
        let parse = |json: &str| {
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            Controls::parse(v.as_object().unwrap(), 4096).unwrap()
        };
        assert_eq!(describe_controls(&parse("{}")), None);
        assert_eq!(describe_controls(&parse(r#"{"cooldown":"1h","count":{"at_least":3,"within":"10m"}}"#)).unwrap(), "count 3 in 10m, cooldown 1h");
        assert_eq!(
            describe_controls(&parse(
                r#"{"max_triggers_per_player":1,"holdout_percent":12.5,"variants":[{"name":"A","weight":1},{"name":"B","weight":3}],"state_version":2,"inactivity":"7d","state":{"ttl":"30d"}}"#
            ))
            .unwrap(),
            "state (ttl 30d, max 1024 bytes), inactivity 7d, at most 1 trigger per player, holdout 12.5%, variants A:1/B:3, state_version 2"
        );
        assert_eq!(describe_controls(&parse(r#"{"holdout_percent":20}"#)).unwrap(), "holdout 20%");
        assert_eq!((duration_text(90_000), duration_text(5_400_000), duration_text(1_500)), ("90s".into(), "90m".into(), "1500ms".into()));
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
