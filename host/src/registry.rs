//! The campaign registry: the campaigns in force, indexed by (game, event_name), swapped
//! atomically so an event sees the old or the new version of a campaign, never a mix.

use crate::campaign::CampaignDef;
use rtcrm_sandbox::{CompiledFilter, EvalError, Limits};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// A campaign's state, as in its status messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    Active,
    Rejected,
    Quarantined,
    Deleted,
}

impl State {
    pub const ALL: [State; 4] = [State::Active, State::Rejected, State::Quarantined, State::Deleted];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Rejected => "rejected",
            State::Quarantined => "quarantined",
            State::Deleted => "deleted",
        }
    }
}

/// One version of a campaign in force.
pub struct LiveCampaign {
    pub def: CampaignDef,
    pub compiled: CompiledFilter,
    /// The campaign as its triggers echo it.
    pub trigger_json: Box<RawValue>,
    pub limits: Limits,
    /// Distinguishes versions of the same id (workers rebuild their instance when it changes).
    pub generation: u64,
    consecutive_failures: AtomicU32,
    quarantined: AtomicBool,
}

impl LiveCampaign {
    pub fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Relaxed)
    }

    /// Records a successful evaluation.
    pub fn succeeded(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failure; returns true exactly once, when this failure quarantines the campaign.
    pub fn failed(&self, threshold: u32) -> bool {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        n >= threshold && !self.quarantined.swap(true, Ordering::Relaxed)
    }
}

/// What the registry knows about every campaign id it has seen (for status and metrics).
#[derive(Debug, Clone)]
pub struct CampaignInfo {
    pub state: State,
    pub error: Option<String>,
}

/// An immutable view of the campaigns in force.
#[derive(Default)]
pub struct Snapshot {
    by_id: BTreeMap<i64, Arc<LiveCampaign>>,
    /// game → event_name → campaigns, by id.
    index: HashMap<String, HashMap<String, Vec<Arc<LiveCampaign>>>>,
}

impl Snapshot {
    /// Campaigns that could match an event of `game` and `event_name`, by id.
    pub fn candidates(&self, game: &str, event_name: &str) -> &[Arc<LiveCampaign>] {
        self.index.get(game).and_then(|names| names.get(event_name)).map_or(&[], Vec::as_slice)
    }

    pub fn get(&self, id: i64) -> Option<&Arc<LiveCampaign>> {
        self.by_id.get(&id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    fn build(by_id: BTreeMap<i64, Arc<LiveCampaign>>) -> Snapshot {
        let mut index: HashMap<String, HashMap<String, Vec<Arc<LiveCampaign>>>> = HashMap::new();
        for c in by_id.values() {
            index.entry(c.def.game.clone()).or_default().entry(c.def.event_name.clone()).or_default().push(c.clone());
        }
        Snapshot { by_id, index }
    }
}

/// The registry shared by the loader (writer) and the workers (readers).
#[derive(Default)]
pub struct Registry {
    current: RwLock<Arc<Snapshot>>,
    info: Mutex<BTreeMap<i64, CampaignInfo>>,
    generations: AtomicU64,
}

impl Registry {
    /// The campaigns in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.read().unwrap().clone()
    }

    fn replace_with(&self, f: impl FnOnce(&mut BTreeMap<i64, Arc<LiveCampaign>>)) {
        let mut current = self.current.write().unwrap();
        let mut by_id = current.by_id.clone();
        f(&mut by_id);
        *current = Arc::new(Snapshot::build(by_id));
    }

    /// Puts a compiled campaign in force, replacing any earlier version.
    pub fn activate(&self, def: CampaignDef, compiled: CompiledFilter, host_limits: Limits) {
        let id = def.id;
        let limits = host_limits.lowered(def.fuel, def.memory_mb);
        let live = Arc::new(LiveCampaign {
            trigger_json: def.trigger_json(),
            def,
            compiled,
            limits,
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
            consecutive_failures: AtomicU32::new(0),
            quarantined: AtomicBool::new(false),
        });
        self.replace_with(|m| {
            m.insert(id, live);
        });
        self.info.lock().unwrap().insert(id, CampaignInfo { state: State::Active, error: None });
    }

    /// Records a rejected message; the version in force, if any, stays.
    pub fn reject(&self, id: i64, reason: &str) {
        let mut info = self.info.lock().unwrap();
        let in_force = self.current.read().unwrap().by_id.contains_key(&id);
        // The id keeps its state when an older version is in force; the status message says why.
        if !in_force {
            info.insert(id, CampaignInfo { state: State::Rejected, error: Some(reason.to_owned()) });
        } else if let Some(i) = info.get_mut(&id) {
            i.error = Some(reason.to_owned());
        }
    }

    /// Removes a campaign (tombstone).
    pub fn delete(&self, id: i64) {
        self.replace_with(|m| {
            m.remove(&id);
        });
        self.info.lock().unwrap().insert(id, CampaignInfo { state: State::Deleted, error: None });
    }

    /// Marks a campaign quarantined (it stops being evaluated until a new version arrives).
    pub fn quarantine(&self, id: i64, error: &EvalError) {
        self.info.lock().unwrap().insert(
            id,
            CampaignInfo { state: State::Quarantined, error: Some(format!("{}: {error}", error.kind())) },
        );
    }

    /// Campaign counts by state.
    pub fn counts(&self) -> BTreeMap<State, usize> {
        let mut counts: BTreeMap<State, usize> = State::ALL.iter().map(|s| (*s, 0)).collect();
        for info in self.info.lock().unwrap().values() {
            *counts.get_mut(&info.state).unwrap() += 1;
        }
        counts
    }

    pub fn info(&self, id: i64) -> Option<CampaignInfo> {
        self.info.lock().unwrap().get(&id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtcrm_sandbox::{Sandbox, SandboxConfig};

    fn campaign(id: i64, game: &str, name: &str) -> (CampaignDef, CompiledFilter) {
        let json = format!(r#"{{"campaign_id":{id},"enabled":true,"game":"{game}","event_name":"{name}","filter":"e => true"}}"#);
        let def = CampaignDef::parse(None, json.as_bytes()).unwrap();
        let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
        let compiled = sandbox.compile_js("e => true").unwrap();
        (def, CompiledFilter::Js(compiled))
    }

    #[test]
    fn campaigns_are_indexed_by_game_and_event_name_and_replaced_atomically() {
        let registry = Registry::default();
        for (id, game, name) in [(1, "foe", "fight"), (2, "foe", "fight"), (3, "foe", "login"), (4, "elvenar", "fight")] {
            let (def, compiled) = campaign(id, game, name);
            registry.activate(def, compiled, Limits::default());
        }
        let before = registry.snapshot();
        let ids = |s: &Snapshot, g: &str, n: &str| s.candidates(g, n).iter().map(|c| c.def.id).collect::<Vec<_>>();
        assert_eq!(ids(&before, "foe", "fight"), [1, 2]);
        assert_eq!(ids(&before, "foe", "login"), [3]);
        assert!(ids(&before, "nope", "fight").is_empty());
        let (def, compiled) = campaign(2, "foe", "login");
        registry.activate(def, compiled, Limits::default());
        registry.delete(1);
        let after = registry.snapshot();
        assert_eq!(ids(&after, "foe", "fight"), Vec::<i64>::new());
        assert_eq!(ids(&after, "foe", "login"), [2, 3]);
        // A snapshot taken before keeps seeing the old versions.
        assert_eq!(ids(&before, "foe", "fight"), [1, 2]);
        assert_eq!(registry.info(1).unwrap().state, State::Deleted);
    }

    #[test]
    fn a_rejected_update_keeps_the_version_in_force() {
        let registry = Registry::default();
        let (def, compiled) = campaign(7, "foe", "fight");
        registry.activate(def, compiled, Limits::default());
        registry.reject(7, "SyntaxError at line 1, column 3");
        assert_eq!(registry.snapshot().candidates("foe", "fight").len(), 1);
        assert_eq!(registry.info(7).unwrap().state, State::Active);
        registry.reject(8, "bad");
        assert_eq!(registry.info(8).unwrap().state, State::Rejected);
        assert_eq!(registry.counts()[&State::Rejected], 1);
    }

    #[test]
    fn quarantine_triggers_once_after_the_threshold_of_consecutive_failures() {
        let registry = Registry::default();
        let (def, compiled) = campaign(9, "foe", "fight");
        registry.activate(def, compiled, Limits::default());
        let c = registry.snapshot().get(9).unwrap().clone();
        assert!(!c.failed(3) && !c.failed(3));
        c.succeeded();
        assert!(!c.failed(3) && !c.failed(3));
        assert!(c.failed(3), "the third consecutive failure quarantines");
        assert!(c.is_quarantined());
        assert!(!c.failed(3), "reported once");
    }
}

impl Registry {
    /// Every campaign id the registry has seen, with its state and error (for the HTTP API).
    pub fn all_info(&self) -> BTreeMap<i64, CampaignInfo> {
        self.info.lock().unwrap().clone()
    }
}
