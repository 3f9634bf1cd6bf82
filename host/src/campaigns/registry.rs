//! The campaign registry: the campaigns in force, indexed by (game, event_name).
//!
//! Readers (the evaluation workers, the HTTP API) take a [`CampaignSet`] with one atomic load
//! (`arc-swap`), without a lock, and keep it for a whole batch of events: an event sees the old or
//! the new version of a campaign, never a mix. The loader publishes changes in bulk with
//! [`Registry::apply`]; the maps are persistent (structure-shared), so a change costs
//! O(size of the change · log N), not O(all campaigns), and the initial load of 10,000 campaigns
//! is one publication.

use crate::campaigns::definition::CampaignDef;
use crate::campaigns::instances::Instances;
use crate::telemetry::metrics::CampaignTelemetry;
use arc_swap::ArcSwap;
use rtcrm_sandbox::{CompiledFilter, EvalError, Limits};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

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

/// One version of a campaign in force: its definition, compiled filter, idle filter instances
/// and metric handles.
pub struct LiveCampaign {
    pub def: CampaignDef,
    pub compiled: CompiledFilter,
    /// The campaign as its triggers echo it.
    pub trigger_json: Box<RawValue>,
    pub limits: Limits,
    /// Idle filter instances of this version, shared by every worker (see `instances.rs`).
    pub instances: Instances,
    /// Metric and counter handles, looked up once at activation.
    pub telemetry: CampaignTelemetry,
    consecutive_failures: AtomicU32,
    quarantined: AtomicBool,
}

impl LiveCampaign {
    pub fn new(def: CampaignDef, compiled: CompiledFilter, limits: Limits, telemetry: CampaignTelemetry) -> LiveCampaign {
        LiveCampaign {
            trigger_json: def.trigger_json(),
            def,
            compiled,
            limits,
            instances: Instances::default(),
            telemetry,
            consecutive_failures: AtomicU32::new(0),
            quarantined: AtomicBool::new(false),
        }
    }

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

/// What the registry knows about every campaign id it has seen (for status and the API).
#[derive(Debug, Clone)]
pub struct CampaignInfo {
    pub state: State,
    pub error: Option<String>,
}

/// The index key of a (game, event_name) pair.
fn pair_key(game: &str, event_name: &str, buf: &mut String) {
    buf.clear();
    buf.push_str(game);
    buf.push('\0');
    buf.push_str(event_name);
}

/// An immutable view of the campaigns in force. Cloning is O(1) (structure sharing).
#[derive(Clone, Default)]
pub struct CampaignSet {
    by_id: imbl::OrdMap<i64, Arc<LiveCampaign>>,
    /// `game \0 event_name` → the campaigns of that pair, by id. The pair is compared again by
    /// the matching checks, so a NUL inside a name cannot mix two pairs up.
    index: imbl::HashMap<Box<str>, Arc<[Arc<LiveCampaign>]>>,
}

impl CampaignSet {
    /// Campaigns that could match an event of `game` and `event_name`, by id. `buf` is a
    /// scratch string the caller keeps (no allocation per event).
    pub fn candidates<'a>(&'a self, game: &str, event_name: &str, buf: &mut String) -> &'a [Arc<LiveCampaign>] {
        pair_key(game, event_name, buf);
        self.index.get(buf.as_str()).map_or(&[], |v| &v[..])
    }

    pub fn get(&self, id: i64) -> Option<&Arc<LiveCampaign>> {
        self.by_id.get(&id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Every campaign in force, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<LiveCampaign>> {
        self.by_id.values()
    }

    /// This set with `changes` applied; touches only the changed ids and their pairs.
    fn with(&self, changes: &[Change]) -> CampaignSet {
        let mut next = self.clone();
        // Every pair a change touches, with the versions activated in it.
        let mut touched: BTreeMap<Box<str>, Vec<Arc<LiveCampaign>>> = BTreeMap::new();
        let mut buf = String::new();
        for change in changes {
            let id = change.id();
            if let Some(old) = next.by_id.remove(&id) {
                pair_key(&old.def.game, &old.def.event_name, &mut buf);
                touched.entry(buf.as_str().into()).or_default();
            }
            if let Change::Activate(live) = change {
                pair_key(&live.def.game, &live.def.event_name, &mut buf);
                touched.entry(buf.as_str().into()).or_default().push(live.clone());
                next.by_id.insert(id, live.clone());
            }
        }
        for (pair, activated) in touched {
            let in_force = |c: &Arc<LiveCampaign>| next.by_id.get(&c.def.id).is_some_and(|now| Arc::ptr_eq(now, c));
            // The members that stay, plus the versions activated here (a later change of the same
            // id in this batch wins), in id order.
            let old: &[Arc<LiveCampaign>] = next.index.get(&pair).map_or(&[], |v| &v[..]);
            let members: BTreeMap<i64, Arc<LiveCampaign>> =
                old.iter().chain(&activated).filter(|c| in_force(c)).map(|c| (c.def.id, c.clone())).collect();
            if members.is_empty() {
                next.index.remove(&pair);
            } else {
                next.index.insert(pair, members.into_values().collect());
            }
        }
        next
    }
}

/// One change to the campaigns in force.
pub enum Change {
    /// Puts a compiled version in force, replacing any earlier one of its id.
    Activate(Arc<LiveCampaign>),
    /// Removes the campaign (tombstone).
    Delete(i64),
}

impl Change {
    fn id(&self) -> i64 {
        match self {
            Change::Activate(live) => live.def.id,
            Change::Delete(id) => *id,
        }
    }
}

/// The registry shared by the loader (writer) and the workers and API (readers).
#[derive(Default)]
pub struct Registry {
    current: ArcSwap<CampaignSet>,
    /// Serialises writers (readers never wait).
    writer: Mutex<()>,
    info: Mutex<BTreeMap<i64, CampaignInfo>>,
}

impl Registry {
    /// The campaigns in force now.
    pub fn snapshot(&self) -> Arc<CampaignSet> {
        self.current.load_full()
    }

    /// Publishes `changes` at once: readers see all of them or none.
    pub fn apply(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let next = self.current.load().with(&changes);
        self.current.store(Arc::new(next));
        let mut info = self.info.lock().unwrap_or_else(|p| p.into_inner());
        for change in &changes {
            let state = match change {
                Change::Activate(_) => State::Active,
                Change::Delete(_) => State::Deleted,
            };
            info.insert(change.id(), CampaignInfo { state, error: None });
        }
    }

    /// Records a rejected message; the version in force, if any, stays.
    pub fn reject(&self, id: i64, reason: &str) {
        let in_force = self.current.load().get(id).is_some();
        let mut info = self.info.lock().unwrap_or_else(|p| p.into_inner());
        // The id keeps its state when an older version is in force; the status message says why.
        if !in_force {
            info.insert(id, CampaignInfo { state: State::Rejected, error: Some(reason.to_owned()) });
        } else if let Some(i) = info.get_mut(&id) {
            i.error = Some(reason.to_owned());
        }
    }

    /// Marks a campaign quarantined (it stops being evaluated until a new version arrives).
    pub fn quarantine(&self, id: i64, error: &EvalError) {
        self.info
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, CampaignInfo { state: State::Quarantined, error: Some(format!("{}: {error}", error.kind())) });
    }

    /// Campaign counts by state.
    pub fn counts(&self) -> BTreeMap<State, usize> {
        let mut counts: BTreeMap<State, usize> = State::ALL.iter().map(|s| (*s, 0)).collect();
        for info in self.info.lock().unwrap_or_else(|p| p.into_inner()).values() {
            *counts.get_mut(&info.state).expect("every state is counted") += 1;
        }
        counts
    }

    pub fn info(&self, id: i64) -> Option<CampaignInfo> {
        self.info.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// Every campaign id the registry has seen, with its state and error (for the HTTP API).
    pub fn all_info(&self) -> BTreeMap<i64, CampaignInfo> {
        self.info.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtcrm_sandbox::{Sandbox, SandboxConfig};

    fn live(_registry: &Registry, sandbox: &Sandbox, id: i64, game: &str, name: &str) -> Arc<LiveCampaign> {
        let json = format!(r#"{{"campaign_id":{id},"enabled":true,"game":"{game}","event_name":"{name}","filter":"e => true"}}"#);
        let def = CampaignDef::parse(None, json.as_bytes()).unwrap();
        let compiled = CompiledFilter::Js(sandbox.compile_js("e => true").unwrap());
        Arc::new(LiveCampaign::new(def, compiled, Limits::default(), CampaignTelemetry::detached(id)))
    }

    fn ids(s: &CampaignSet, g: &str, n: &str) -> Vec<i64> {
        s.candidates(g, n, &mut String::new()).iter().map(|c| c.def.id).collect()
    }

    #[test]
    fn campaigns_are_indexed_by_game_and_event_name_and_replaced_atomically() {
        let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
        let registry = Registry::default();
        let changes = [(2, "foe", "fight"), (1, "foe", "fight"), (3, "foe", "login"), (4, "elvenar", "fight")]
            .into_iter()
            .map(|(id, g, n)| Change::Activate(live(&registry, &sandbox, id, g, n)))
            .collect();
        registry.apply(changes);
        let before = registry.snapshot();
        assert_eq!(ids(&before, "foe", "fight"), [1, 2], "by id");
        assert_eq!(ids(&before, "foe", "login"), [3]);
        assert!(ids(&before, "nope", "fight").is_empty());
        assert!(ids(&before, "foe\0fight", "").is_empty(), "a NUL does not reach another pair's entry");
        registry.apply(vec![Change::Activate(live(&registry, &sandbox, 2, "foe", "login")), Change::Delete(1)]);
        let after = registry.snapshot();
        assert_eq!(ids(&after, "foe", "fight"), Vec::<i64>::new());
        assert_eq!(ids(&after, "foe", "login"), [2, 3]);
        assert_eq!(after.len(), 3);
        // A snapshot taken before keeps seeing the old versions.
        assert_eq!(ids(&before, "foe", "fight"), [1, 2]);
        assert_eq!(registry.info(1).unwrap().state, State::Deleted);
        // Replacing a version within its pair keeps one entry per id.
        let v2 = live(&registry, &sandbox, 3, "foe", "login");
        registry.apply(vec![Change::Activate(v2.clone())]);
        let now = registry.snapshot();
        assert_eq!(ids(&now, "foe", "login"), [2, 3]);
        assert!(Arc::ptr_eq(now.get(3).unwrap(), &v2));
        assert!(Arc::ptr_eq(&now.candidates("foe", "login", &mut String::new())[1], &v2));
    }

    #[test]
    fn a_rejected_update_keeps_the_version_in_force() {
        let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
        let registry = Registry::default();
        registry.apply(vec![Change::Activate(live(&registry, &sandbox, 7, "foe", "fight"))]);
        registry.reject(7, "SyntaxError at line 1, column 3");
        assert_eq!(registry.snapshot().candidates("foe", "fight", &mut String::new()).len(), 1);
        assert_eq!(registry.info(7).unwrap().state, State::Active);
        registry.reject(8, "bad");
        assert_eq!(registry.info(8).unwrap().state, State::Rejected);
        assert_eq!(registry.counts()[&State::Rejected], 1);
    }

    #[test]
    fn quarantine_triggers_once_after_the_threshold_of_consecutive_failures() {
        let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
        let registry = Registry::default();
        let c = live(&registry, &sandbox, 9, "foe", "fight");
        assert!(!c.failed(3) && !c.failed(3));
        c.succeeded();
        assert!(!c.failed(3) && !c.failed(3));
        assert!(c.failed(3), "the third consecutive failure quarantines");
        assert!(c.is_quarantined());
        assert!(!c.failed(3), "reported once");
    }
}
