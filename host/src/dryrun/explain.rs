//! Explain (spec §13): for one event, every campaign of its game with the check that decided —
//! disabled, quarantined, event name, the window with the time it was checked against, no
//! player (a campaign with controls), or the filter's verdict with its error message, then what
//! the controls of spec §12 make of a match — without producing anything. Filters run on
//! [`dry_copy`]s, so the processor's counters, instances and quarantine are untouched.
//!
//! Explain does not read the processor's per-player state. It decides what does not depend on
//! it — the holdout (control group) and the variant, by the player's hash; an inactivity
//! campaign's match (re)arming the player's timer — and for a campaign whose `count`,
//! `cooldown` or `max_triggers_per_player` decide on the stored state it says exactly that
//! (decision `controls`). A `filter(event, state)` filter runs with an empty state, as for a
//! player's first event, and the reason says so.

use crate::campaigns::definition::parse_time;
use crate::campaigns::instances::InstanceBudget;
use crate::campaigns::registry::{LiveCampaign, Registry};
use crate::config::Clock;
use crate::dryrun::decision::{describe_controls, dry_copy, filter_decision, player_of, Controlled, Decision};
use crate::state::decide;
use crate::events::evaluate::{player_key, precheck, str_field, EventMeta, Skip};
use chrono::{DateTime, SecondsFormat, Utc};
use rtcrm_sandbox::{Event, Sandbox};
use serde::Serialize;

/// Most filters one explanation runs (a game may have thousands of campaigns); the campaigns
/// after that are listed as `not_evaluated`.
pub const MAX_FILTER_RUNS: usize = 100;

/// The answer of `POST /api/explain`.
#[derive(Debug, Serialize)]
pub struct Explanation {
    /// The event's `game` (None: it has none, and no campaign can match).
    pub game: Option<String>,
    pub event_name: Option<String>,
    /// The time the windows are checked against (RFC 3339).
    pub time: String,
    /// Where [`Explanation::time`] comes from: `created_at`, `received_at` or `wall clock`.
    pub time_source: &'static str,
    /// The processor's `--clock`: `event` or `processing`.
    pub clock: &'static str,
    /// The player id as the trigger key would carry it (None: the event has none).
    pub player: Option<String>,
    /// Why no campaign can match at all, when that is so.
    pub note: Option<String>,
    /// How many campaigns would trigger.
    pub triggers: usize,
    /// How many campaigns matched and leave the decision to the player's stored state
    /// (decision `controls`), which explain does not read.
    pub decided_by_stored_state: usize,
    /// Every campaign in force of the event's game, by id.
    pub campaigns: Vec<CampaignExplanation>,
}

/// One campaign's verdict for the event.
#[derive(Debug, Serialize)]
pub struct CampaignExplanation {
    pub campaign_id: i64,
    /// A [`Decision::code`], or `not_evaluated` past [`MAX_FILTER_RUNS`].
    pub decision: &'static str,
    /// The decision in a sentence, with the values it compared.
    pub reason: String,
    /// The filter returned `true`.
    pub matched: bool,
    /// The campaign's controls (spec §12) in a few words; null: none.
    pub controls: Option<String>,
    /// The player's variant, when the campaign has variants and the player is not in the
    /// control group.
    pub variant: Option<String>,
    /// Fuel of the filter's evaluation, when it ran and succeeded.
    pub fuel: Option<u64>,
    /// The filter's error, when it failed.
    pub error: Option<ErrorView>,
    /// The campaign's `event_name`, `start_date` and `end_date` (RFC 3339; null: open).
    pub event_name: String,
    pub start_date: Option<String>,
    pub end_date: Option<String>,
}

/// A failed evaluation: its kind (`fuel`, `memory`, `deadline`, `trap`, `exception`) and message.
#[derive(Debug, Serialize)]
pub struct ErrorView {
    pub kind: &'static str,
    pub message: String,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Where the window time of `event` comes from under `clock` (spec §4's order: `created_at`,
/// else `received_at`, else the wall clock), as [`crate::events::evaluate::event_time`] picks it.
pub fn time_source(event: &Event, clock: Clock) -> &'static str {
    if clock == Clock::Event {
        for field in ["created_at", "received_at"] {
            if str_field(event, field).as_deref().and_then(parse_time).is_some() {
                return field;
            }
        }
    }
    "wall clock"
}

/// Explains `event` against the campaigns in force in `registry`. Blocking (filters run): call
/// it off the async reactor.
pub fn explain(sandbox: &Sandbox, registry: &Registry, event: &Event, clock: Clock) -> Explanation {
    let set = registry.snapshot();
    let meta = EventMeta::read(event, clock);
    let source = time_source(event, clock);
    let player = Some(player_key(event)).filter(|p| !p.is_empty());
    let game = str_field(event, "game").map(|g| g.into_owned());
    let event_name = str_field(event, "event_name").map(|n| n.into_owned());
    let mut out = Explanation {
        time: rfc3339(meta.as_ref().map_or_else(|| crate::events::evaluate::event_time(event, clock), |m| m.time)),
        game,
        event_name,
        time_source: source,
        clock: match clock {
            Clock::Event => "event",
            Clock::Processing => "processing",
        },
        player,
        note: None,
        triggers: 0,
        decided_by_stored_state: 0,
        campaigns: Vec::new(),
    };
    let Some(meta) = meta else {
        out.note = Some(match (&out.game, &out.event_name) {
            (None, _) => "the event has no string `game`: no campaign can match it".into(),
            _ => "the event has no string `event_name`: no campaign can match it".into(),
        });
        return out;
    };
    let budget = InstanceBudget::new(MAX_FILTER_RUNS + 1);
    let mut runs = 0;
    // As the processor reads it (an empty string is a player); `out.player` shows it when not empty.
    let player_id = player_of(event);
    for campaign in set.iter().filter(|c| c.def.game == meta.game) {
        let def = &campaign.def;
        let controls = &def.controls;
        let player = player_id.as_deref();
        let decision = match precheck(campaign, &meta) {
            Some(skip) => Some(Decision::Skipped(skip)),
            None if controls.any() && player.is_none() => Some(Decision::NoPlayer),
            None if runs < MAX_FILTER_RUNS => {
                runs += 1;
                Some(match filter_decision(sandbox, &budget, &dry_copy(campaign), event, 1) {
                    Decision::Matched { fuel, .. } => Decision::Matched { fuel, then: controlled(campaign, player.unwrap_or(""), &meta) },
                    other => other,
                })
            }
            None => None,
        };
        let quarantine = || registry.info(def.id).and_then(|i| i.error).map(|e| format!(" (last: {e})")).unwrap_or_default();
        let reason = match &decision {
            None => format!("not evaluated: explain runs at most {MAX_FILTER_RUNS} filters per event"),
            Some(d) => reason(d, campaign, &meta, source, player.unwrap_or(""), quarantine),
        };
        out.triggers += usize::from(decision.as_ref().is_some_and(Decision::triggers));
        out.decided_by_stored_state += usize::from(matches!(decision, Some(Decision::Matched { then: Controlled::OnStoredState, .. })));
        let variant = match &decision {
            Some(Decision::Matched { then: Controlled::Trigger { variant }, .. }) => variant.clone(),
            Some(Decision::Matched { then: Controlled::OnStoredState | Controlled::Armed { .. }, .. }) => {
                player.filter(|p| !decide::in_control_group(def.id, p, controls.holdout_bp)).and_then(|p| decide::variant(def.id, p, controls))
            }
            _ => None,
        };
        out.campaigns.push(CampaignExplanation {
            campaign_id: def.id,
            decision: decision.as_ref().map_or("not_evaluated", Decision::code),
            reason,
            matched: decision.as_ref().is_some_and(Decision::matched),
            controls: describe_controls(controls),
            variant,
            fuel: decision.as_ref().and_then(Decision::fuel),
            error: match &decision {
                Some(Decision::FilterError(e)) => Some(ErrorView { kind: e.kind().as_str(), message: e.to_string() }),
                _ => None,
            },
            event_name: def.event_name.clone(),
            start_date: def.start.map(rfc3339),
            end_date: def.end.map(rfc3339),
        });
    }
    out
}

/// What the controls make of a filter match, as far as it does not depend on the player's
/// stored state: holdout and variant by the player's hash, an inactivity timer armed by the
/// match; else [`Controlled::OnStoredState`].
fn controlled(campaign: &LiveCampaign, player: &str, meta: &EventMeta<'_>) -> Controlled {
    let controls = &campaign.def.controls;
    if let Some(inactivity) = controls.inactivity_ms {
        // spec §12: a match (re)arms the timer whatever the state holds.
        return Controlled::Armed { due: meta.time.timestamp_millis().saturating_add(inactivity) };
    }
    if controls.count.is_some() || controls.cooldown_ms.is_some() || controls.max_triggers_per_player.is_some() {
        return Controlled::OnStoredState;
    }
    Controlled::stateless(campaign.def.id, player, controls)
}

/// The decision in a sentence.
fn reason(decision: &Decision, campaign: &LiveCampaign, meta: &EventMeta<'_>, source: &str, player: &str, quarantine: impl Fn() -> String) -> String {
    let def = &campaign.def;
    let controls = &def.controls;
    let described = || describe_controls(controls).unwrap_or_default();
    let at = || format!("{} ({source})", rfc3339(meta.time));
    let bound = |b: Option<DateTime<Utc>>| b.map_or_else(|| "-".to_owned(), rfc3339);
    // A `filter(event, state)` filter ran on an empty state: the stored one may decide otherwise.
    let empty_state = if controls.state.is_some() {
        "; filter(event, state) ran with an empty state ({}), as for the player's first event: the player's stored state, which explain does not read, may give another verdict"
    } else {
        ""
    };
    // Where a would-be trigger goes: the control group (holdout) or a variant.
    let destination = || {
        if decide::in_control_group(def.id, player, controls.holdout_bp) {
            format!("; the player is in the control group (holdout bucket {} of 10000): a trigger would go to the control topic", decide::holdout_bucket(def.id, player))
        } else {
            decide::variant(def.id, player, controls).map(|v| format!("; a trigger would carry variant `{v}`")).unwrap_or_default()
        }
    };
    match decision {
        Decision::Skipped(Skip::Disabled) => "the campaign is disabled (enabled: false)".into(),
        Decision::Skipped(Skip::Quarantined) => {
            format!("the campaign is quarantined after consecutive failed evaluations{}; a new version lifts it", quarantine())
        }
        Decision::Skipped(Skip::OtherGame) => format!("the event's game `{}` is not the campaign's `{}`", meta.game, def.game),
        Decision::Skipped(Skip::OtherEventName) => {
            format!("the event's event_name `{}` is not the campaign's `{}`", meta.event_name, def.event_name)
        }
        Decision::Skipped(Skip::BeforeStart) => format!("the event's time {} is not after start_date {}", at(), bound(def.start)),
        Decision::Skipped(Skip::AfterEnd) => format!("the event's time {} is not before end_date {}", at(), bound(def.end)),
        Decision::NoPlayer => format!("the event has no player_id, and a campaign with controls ({}) never matches an event without one", described()),
        Decision::FilterFalse { .. } => format!("the window holds the event's time {}, and the filter did not return true{empty_state}", at()),
        Decision::FilterError(e) => format!("the filter failed ({}): {e}", e.kind()),
        Decision::Matched { then, .. } => match then {
            Controlled::Trigger { variant: None } if !controls.any() => "every check passed and the filter returned true: a trigger".into(),
            Controlled::Trigger { variant } => format!(
                "every check passed and the filter returned true: a trigger{}{}{empty_state}",
                variant.as_ref().map(|v| format!(" with variant `{v}`")).unwrap_or_default(),
                if controls.holdout_bp > 0 { " (the player is not in the control group)" } else { "" },
            ),
            Controlled::ControlGroup => format!(
                "filter matched, but the player is in the control group (holdout bucket {} of 10000, below {}): the would-be trigger goes to the control topic, not to the triggers topic{empty_state}",
                decide::holdout_bucket(def.id, player),
                controls.holdout_bp
            ),
            Controlled::Armed { due } => {
                let due = DateTime::from_timestamp_millis(*due).map_or_else(|| due.to_string(), rfc3339);
                let at_firing = if controls.cooldown_ms.is_some() || controls.max_triggers_per_player.is_some() {
                    "; when it fires, cooldown and cap decide on the player's stored state, which explain does not read"
                } else {
                    ""
                };
                format!(
                    "filter matched; controls ({}): the match (re)arms the player's inactivity timer to fire at {due} unless another match comes first \
                     (an inactivity campaign never triggers on the match itself){at_firing}{}{empty_state}",
                    described(),
                    destination()
                )
            }
            Controlled::OnStoredState => {
                format!("filter matched; controls ({}) decide on the player's stored state, which explain does not read{}{empty_state}", described(), destination())
            }
            // A backtest's outcomes; explain does not read the state that would lead to them.
            Controlled::Counting { so_far, at_least } => format!("filter matched; count {so_far} of {at_least} so far"),
            Controlled::Cooldown { until } => format!("filter matched; the player's cooldown runs until {}", DateTime::from_timestamp_millis(*until).map_or_else(|| until.to_string(), rfc3339)),
            Controlled::Cap { cap } => format!("filter matched; the player had {cap} triggers already (max_triggers_per_player)"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaigns::definition::CampaignDef;
    use crate::campaigns::registry::Change;
    use crate::telemetry::metrics::CampaignTelemetry;
    use rtcrm_sandbox::{CompiledFilter, SandboxConfig};
    use std::sync::Arc;

    fn live(sandbox: &Sandbox, json: &str) -> Arc<LiveCampaign> {
        let def = CampaignDef::parse(None, json.as_bytes()).unwrap();
        let crate::campaigns::definition::FilterSource::Js(source) = &def.filter else { panic!("a JS campaign") };
        let compiled = CompiledFilter::Js(sandbox.compile_js(source).unwrap());
        Arc::new(LiveCampaign::new(def.clone(), compiled, sandbox.limits(), CampaignTelemetry::detached(def.id)))
    }

    #[test]
    fn the_time_source_follows_the_event_clock() {
        let ev = |j: &str| Event::parse(j.as_bytes().to_vec()).unwrap();
        for (json, source) in [
            (r#"{"created_at":"2023-11-20T11:00:00Z","received_at":"2023-11-20T11:00:02Z"}"#, "created_at"),
            (r#"{"created_at":"garbage","received_at":"2023-11-20T11:00:02Z"}"#, "received_at"),
            (r#"{"created_at":7}"#, "wall clock"),
        ] {
            let e = ev(json);
            assert_eq!(time_source(&e, Clock::Event), source, "{json}");
            let t = crate::events::evaluate::event_time(&e, Clock::Event);
            if source != "wall clock" {
                assert_eq!(Some(t), str_field(&e, source).as_deref().and_then(parse_time), "the label names the time used");
            }
            assert_eq!(time_source(&e, Clock::Processing), "wall clock");
        }
    }

    #[test]
    fn every_campaign_of_the_game_with_its_deciding_check() {
        let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
        let registry = Registry::default();
        let c = |id: i64, extra: &str, filter: &str| {
            live(&sandbox, &format!(r#"{{"campaign_id":{id},"enabled":true,"game":"foe","event_name":"fight",{extra}"filter":"{filter}"}}"#))
        };
        let campaigns = vec![
            c(1, r#""enabled":false,"#, "e => true"),
            live(&sandbox, r#"{"campaign_id":2,"enabled":true,"game":"foe","event_name":"login","filter":"e => true"}"#),
            c(3, r#""start_date":"2023-12-01T00:00:00Z","#, "e => true"),
            c(4, r#""end_date":"2023-11-01T00:00:00Z","#, "e => true"),
            c(5, "", "e => e.data.result === 'win'"),
            c(6, "", "e => e.nope.deeper"),
            c(7, "", "e => e.data.result === 'loss'"),
            live(&sandbox, r#"{"campaign_id":8,"enabled":true,"game":"elvenar","event_name":"fight","filter":"e => true"}"#),
        ];
        registry.apply(campaigns.iter().cloned().map(Change::Activate).collect());
        let event = Event::parse(crate::examples::EVENT.trim().as_bytes().to_vec()).unwrap();
        let x = explain(&sandbox, &registry, &event, Clock::Event);
        assert_eq!((x.time.as_str(), x.time_source, x.player.as_deref()), ("2023-11-20T11:00:00Z", "created_at", Some("12345")));
        let got: Vec<(i64, &str)> = x.campaigns.iter().map(|c| (c.campaign_id, c.decision)).collect();
        assert_eq!(
            got,
            [(1, "disabled"), (2, "other_event_name"), (3, "before_start"), (4, "after_end"), (5, "filter_false"), (6, "filter_error"), (7, "trigger")]
        );
        assert_eq!(x.triggers, 1);
        let by_id = |id: i64| x.campaigns.iter().find(|c| c.campaign_id == id).unwrap();
        assert_eq!(by_id(2).reason, "the event's event_name `fight` is not the campaign's `login`");
        assert_eq!(by_id(3).reason, "the event's time 2023-11-20T11:00:00Z (created_at) is not after start_date 2023-12-01T00:00:00Z");
        assert_eq!(by_id(4).reason, "the event's time 2023-11-20T11:00:00Z (created_at) is not before end_date 2023-11-01T00:00:00Z");
        let error = by_id(6).error.as_ref().unwrap();
        assert_eq!(error.kind, "exception");
        assert!(error.message.contains("TypeError") && by_id(6).reason.contains(&error.message), "{:?}", by_id(6));
        assert!(by_id(7).matched && by_id(7).fuel.unwrap() > 0);
        // The campaigns in force kept their counters.
        assert!(campaigns.iter().all(|c| c.telemetry.evaluations.get() == 0 && !c.is_quarantined()));

        // A quarantined campaign says so, with the registry's reason.
        assert!(campaigns[5].failed(1));
        registry.quarantine(6, &rtcrm_sandbox::EvalError::Exception("TypeError: x".into()));
        let q = explain(&sandbox, &registry, &event, Clock::Event);
        let six = q.campaigns.iter().find(|c| c.campaign_id == 6).unwrap();
        assert_eq!(six.decision, "quarantined");
        assert_eq!(
            six.reason,
            "the campaign is quarantined after consecutive failed evaluations (last: exception: TypeError: x); a new version lifts it"
        );

        let none = explain(&sandbox, &registry, &Event::parse(br#"{"event_name":"fight"}"#.to_vec()).unwrap(), Clock::Event);
        assert!(none.campaigns.is_empty());
        assert_eq!(none.note.as_deref(), Some("the event has no string `game`: no campaign can match it"));
        assert_eq!(none.time_source, "wall clock");
    }

    #[test]
    fn controls_decide_what_they_can_without_the_stored_state_and_say_so_otherwise() {
        let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
        let registry = Registry::default();
        let c = |id: i64, controls: &str, filter: &str| {
            live(&sandbox, &format!(r#"{{"campaign_id":{id},"enabled":true,"game":"foe","event_name":"fight",{controls},"filter":"{filter}"}}"#))
        };
        let loss = "e => e.data.result === 'loss'";
        let campaigns = vec![
            c(11, r#""cooldown":"1h","count":{"at_least":3,"within":"10m"}"#, loss),
            c(12, r#""holdout_percent":100"#, loss),
            c(13, r#""variants":[{"name":"A","weight":1}]"#, loss),
            c(14, r#""inactivity":"7d","cooldown":"1d""#, loss),
            c(15, r#""state":{}"#, "function(e, s) { return (s.n || 0) > 0 }"),
            c(16, r#""holdout_percent":100,"max_triggers_per_player":2"#, loss),
        ];
        registry.apply(campaigns.iter().cloned().map(Change::Activate).collect());
        let event = Event::parse(crate::examples::EVENT.trim().as_bytes().to_vec()).unwrap();
        let x = explain(&sandbox, &registry, &event, Clock::Event);
        let got: Vec<(i64, &str)> = x.campaigns.iter().map(|c| (c.campaign_id, c.decision)).collect();
        assert_eq!(got, [(11, "controls"), (12, "control_group"), (13, "trigger"), (14, "armed"), (15, "filter_false"), (16, "controls")]);
        assert_eq!((x.triggers, x.decided_by_stored_state), (1, 2));
        let by_id = |id: i64| x.campaigns.iter().find(|c| c.campaign_id == id).unwrap();
        assert_eq!(by_id(11).reason, "filter matched; controls (count 3 in 10m, cooldown 1h) decide on the player's stored state, which explain does not read");
        assert_eq!(by_id(11).controls.as_deref(), Some("count 3 in 10m, cooldown 1h"));
        assert!(by_id(11).matched && by_id(11).fuel.is_some());
        let bucket = decide::holdout_bucket(12, "12345");
        assert_eq!(
            by_id(12).reason,
            format!("filter matched, but the player is in the control group (holdout bucket {bucket} of 10000, below 10000): the would-be trigger goes to the control topic, not to the triggers topic")
        );
        assert_eq!((by_id(13).variant.as_deref(), by_id(13).reason.as_str()), (Some("A"), "every check passed and the filter returned true: a trigger with variant `A`"));
        assert_eq!(
            by_id(14).reason,
            "filter matched; controls (inactivity 7d, cooldown 1d): the match (re)arms the player's inactivity timer to fire at 2023-11-27T11:00:00Z unless another \
             match comes first (an inactivity campaign never triggers on the match itself); when it fires, cooldown and cap decide on the player's stored state, which explain does not read"
        );
        assert!(by_id(15).reason.ends_with("filter(event, state) ran with an empty state ({}), as for the player's first event: the player's stored state, which explain does not read, may give another verdict"), "{}", by_id(15).reason);
        assert!(by_id(16).reason.ends_with(&format!("; the player is in the control group (holdout bucket {} of 10000): a trigger would go to the control topic", decide::holdout_bucket(16, "12345"))), "{}", by_id(16).reason);

        // Without player_id, a campaign with controls never matches (its filter does not run).
        let anonymous = Event::parse(br#"{"game":"foe","event_name":"fight","created_at":"2023-11-20T11:00:00Z","data":{"result":"loss"}}"#.to_vec()).unwrap();
        let x = explain(&sandbox, &registry, &anonymous, Clock::Event);
        assert!(x.campaigns.iter().all(|c| c.decision == "no_player" && c.fuel.is_none()), "{:?}", x.campaigns);
        assert_eq!(x.campaigns[0].reason, "the event has no player_id, and a campaign with controls (count 3 in 10m, cooldown 1h) never matches an event without one");
        assert!(campaigns.iter().all(|c| c.telemetry.evaluations.get() == 0));
    }
}
