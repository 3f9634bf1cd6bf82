//! Per-player state on disk: one store per owned partition (spec §12), in an embedded LSM
//! store (fjall, see `host/README.md` for why), backed by the compacted changelog topic.
//!
//! A partition's store has three keyspaces: `states` (`<campaign>:<player>` → the state's JSON,
//! as in the changelog), `deadlines` (what is due when: inactivity timers, pending firings,
//! expiries; ordered by time) and `meta` (the changelog offset the store is consistent with, the
//! partition clock). Workers read through an overlay of the changes not yet on disk — one overlay
//! per worker, since a player's changes are always made by the same worker — and the consumer
//! thread writes the overlays to disk in one atomic batch together with the changelog offset
//! they reach (`flush`): at-least-once every second and on revocation; exactly-once after each
//! committed transaction (an aborted one discards them).
//!
//! Restore on assignment: the store's checkpointed changelog offset, then the changelog from
//! there to its end (read_committed); the partition's events are held back until it is done.

use crate::state::controls::{Controls, Millis};
use crate::state::decide::PlayerState;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Why the state store failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("the state store in {dir}: {source}")]
    Store { dir: PathBuf, source: fjall::Error },
    #[error("a stored state under `{key}` is not valid: {source}")]
    Corrupt { key: String, source: serde_json::Error },
}

/// The key of a (campaign, player) state: `<campaign id>:<player id>` (also its changelog key).
pub fn state_key(campaign: i64, player: &str) -> String {
    format!("{campaign}:{player}")
}

/// The campaign and player of a state key.
pub fn split_key(key: &str) -> Option<(i64, &str)> {
    let (campaign, player) = key.split_once(':')?;
    Some((campaign.parse().ok()?, player))
}

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeadlineKind {
    /// An armed inactivity timer.
    Inactivity = 0,
    /// A fired timer's trigger, until delivered (due at once after a restore).
    Pending = 1,
    /// The state holds nothing needed any more: delete it.
    Expiry = 2,
}

/// One entry of the `deadlines` keyspace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Deadline {
    pub due: Millis,
    pub kind: DeadlineKind,
    pub key: String,
}

impl Deadline {
    /// Big-endian time (sign bit flipped, so negative times sort first), kind, key.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.key.len());
        out.extend_from_slice(&((self.due as u64) ^ (1 << 63)).to_be_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(self.key.as_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Deadline> {
        let due = (u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?) ^ (1 << 63)) as i64;
        let kind = match bytes.get(8)? {
            0 => DeadlineKind::Inactivity,
            1 => DeadlineKind::Pending,
            2 => DeadlineKind::Expiry,
            _ => return None,
        };
        Some(Deadline { due, kind, key: String::from_utf8(bytes.get(9..)?.to_vec()).ok()? })
    }

    /// The deadlines `state` needs under `controls`.
    pub fn of(key: &str, state: &PlayerState, controls: &Controls) -> Vec<Deadline> {
        let mut out = Vec::new();
        if let Some(armed) = &state.inactive {
            out.push(Deadline { due: armed.due, kind: DeadlineKind::Inactivity, key: key.to_owned() });
        }
        if state.pending.is_some() {
            out.push(Deadline { due: Millis::MIN, kind: DeadlineKind::Pending, key: key.to_owned() });
        }
        if let Some(until) = state.deletable_at(controls) {
            out.push(Deadline { due: until, kind: DeadlineKind::Expiry, key: key.to_owned() });
        }
        out
    }
}

/// The partition clock (spec §12): the latest event time seen, advanced while the partition is
/// idle by the wall-clock time elapsed since that event arrived.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    /// The latest event time seen.
    pub latest: Millis,
    /// Wall-clock time (Unix ms) when it arrived.
    pub arrived: Millis,
}

pub fn wall_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as Millis)
}

impl Clock {
    pub fn now(&self, wall: Millis) -> Millis {
        if self.arrived == 0 {
            return Millis::MIN;
        }
        self.latest.saturating_add((wall - self.arrived).max(0))
    }

    /// An event of time `t` arrived at wall-clock time `wall`.
    pub fn saw(&mut self, t: Millis, wall: Millis) {
        if self.arrived == 0 || t > self.now(wall) {
            *self = Clock { latest: t, arrived: wall };
        }
    }

    fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.latest.to_be_bytes());
        out[8..].copy_from_slice(&self.arrived.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Clock> {
        Some(Clock { latest: i64::from_be_bytes(bytes.get(..8)?.try_into().ok()?), arrived: i64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?) })
    }
}

/// The process's state database (a directory; one set of keyspaces per partition).
pub struct StateDb {
    db: Database,
    dir: PathBuf,
}

impl StateDb {
    pub fn open(dir: &Path) -> Result<Arc<StateDb>, StateError> {
        std::fs::create_dir_all(dir).map_err(|e| StateError::Store { dir: dir.into(), source: e.into() })?;
        let db = Database::builder(dir)
            // Two cores: one background worker for flushes and compactions.
            .worker_threads(1)
            .cache_size(64 * 1024 * 1024)
            .open()
            .map_err(|source| StateError::Store { dir: dir.into(), source })?;
        Ok(Arc::new(StateDb { db, dir: dir.into() }))
    }

    fn err(&self, source: fjall::Error) -> StateError {
        StateError::Store { dir: self.dir.clone(), source }
    }

    /// The store of `partition` (its keyspaces created when missing), with `shards` overlays.
    pub fn partition(self: &Arc<Self>, partition: i32, shards: usize) -> Result<Arc<PartitionStore>, StateError> {
        let open = |name: &str| self.db.keyspace(&format!("p{partition}.{name}"), KeyspaceCreateOptions::default).map_err(|e| self.err(e));
        let (states, deadlines, meta) = (open("states")?, open("deadlines")?, open("meta")?);
        let checkpoint = meta
            .get(b"changelog")
            .map_err(|e| self.err(e))?
            .and_then(|v| Some(i64::from_be_bytes(v.as_ref().try_into().ok()?)))
            .unwrap_or(-1);
        let clock = meta.get(b"clock").map_err(|e| self.err(e))?.and_then(|v| Clock::decode(&v)).unwrap_or_default();
        Ok(Arc::new(PartitionStore {
            partition,
            db: self.clone(),
            states,
            deadlines,
            meta,
            overlays: (0..shards.max(1)).map(|_| Mutex::default()).collect(),
            clock: Mutex::new(clock),
            checkpoint: AtomicI64::new(checkpoint),
            changelog_acked: AtomicI64::new(checkpoint),
            restored: AtomicBool::new(false),
        }))
    }
}

/// Changes not yet on disk. `None`: deleted.
#[derive(Default)]
struct Overlay {
    states: HashMap<String, Option<Vec<u8>>>,
    /// Deadline → present (true) or removed (false).
    deadlines: HashMap<Deadline, bool>,
}

/// One owned partition's state.
pub struct PartitionStore {
    pub partition: i32,
    db: Arc<StateDb>,
    states: Keyspace,
    deadlines: Keyspace,
    meta: Keyspace,
    overlays: Vec<Mutex<Overlay>>,
    clock: Mutex<Clock>,
    /// The changelog offset the data on disk is consistent with (-1: none).
    checkpoint: AtomicI64,
    /// The highest changelog offset acknowledged (at-least-once) or committed (exactly-once).
    changelog_acked: AtomicI64,
    restored: AtomicBool,
}

impl PartitionStore {
    /// The changelog offset the store on disk is consistent with (-1: none).
    pub fn checkpoint(&self) -> i64 {
        self.checkpoint.load(Ordering::SeqCst)
    }

    pub fn is_restored(&self) -> bool {
        self.restored.load(Ordering::SeqCst)
    }

    pub fn set_restored(&self) {
        self.restored.store(true, Ordering::SeqCst);
    }

    /// The state under `key`, as worker `shard` sees it (its own changes first; tests: the
    /// processor reads it with its size, [`PartitionStore::get_sized`]).
    #[cfg(test)]
    pub fn get(&self, shard: usize, key: &str) -> Result<Option<PlayerState>, StateError> {
        Ok(self.get_sized(shard, key)?.map(|(state, _)| state))
    }

    /// [`PartitionStore::get`], with the stored JSON's size.
    pub fn get_sized(&self, shard: usize, key: &str) -> Result<Option<(PlayerState, usize)>, StateError> {
        let bytes = {
            let overlay = self.overlays[shard % self.overlays.len()].lock().unwrap_or_else(|p| p.into_inner());
            match overlay.states.get(key) {
                Some(Some(bytes)) => Some(bytes.clone()),
                Some(None) => return Ok(None),
                None => None,
            }
        };
        let bytes = match bytes {
            Some(b) => b,
            None => match self.states.get(key).map_err(|e| self.db.err(e))? {
                Some(v) => v.to_vec(),
                None => return Ok(None),
            },
        };
        serde_json::from_slice(&bytes).map(|s| Some((s, bytes.len()))).map_err(|source| StateError::Corrupt { key: key.into(), source })
    }

    /// Drops a deadline that no longer applies (its state changed or went).
    pub fn remove_deadline(&self, shard: usize, deadline: &Deadline) {
        self.overlays[shard % self.overlays.len()].lock().unwrap_or_else(|p| p.into_inner()).deadlines.insert(deadline.clone(), false);
    }

    /// The stored JSON under `key` (overlays of every worker first), for the API.
    pub fn raw(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        for overlay in &self.overlays {
            if let Some(found) = overlay.lock().unwrap_or_else(|p| p.into_inner()).states.get(key) {
                return Ok(found.clone());
            }
        }
        Ok(self.states.get(key).map_err(|e| self.db.err(e))?.map(|v| v.to_vec()))
    }

    /// Records worker `shard`'s change of `key` from `prev` to `next` (`None`: deleted), with
    /// the deadlines each needs; returns the JSON to write to the changelog (`None`: a tombstone).
    pub fn put(&self, shard: usize, key: &str, prev: Option<&PlayerState>, next: Option<&PlayerState>, controls: &Controls) -> Option<Vec<u8>> {
        let bytes = next.map(|s| serde_json::to_vec(s).expect("a state serializes"));
        let mut overlay = self.overlays[shard % self.overlays.len()].lock().unwrap_or_else(|p| p.into_inner());
        let old = prev.map(|s| Deadline::of(key, s, controls)).unwrap_or_default();
        let new = next.map(|s| Deadline::of(key, s, controls)).unwrap_or_default();
        for d in old.iter().filter(|d| !new.contains(d)) {
            overlay.deadlines.insert(d.clone(), false);
        }
        for d in new {
            overlay.deadlines.insert(d, true);
        }
        overlay.states.insert(key.to_owned(), bytes.clone());
        bytes
    }

    /// A changelog record of this partition was acknowledged (at-least-once) or committed
    /// (exactly-once) at `offset`.
    pub fn changelog_acked(&self, offset: i64) {
        self.changelog_acked.fetch_max(offset, Ordering::SeqCst);
    }

    /// An event of time `t` was seen on this partition.
    pub fn saw(&self, t: Millis) {
        self.clock.lock().unwrap_or_else(|p| p.into_inner()).saw(t, wall_ms());
    }

    /// The partition time now.
    pub fn now(&self) -> Millis {
        self.clock.lock().unwrap_or_else(|p| p.into_inner()).now(wall_ms())
    }

    /// Writes every overlay to disk in one atomic batch with the changelog offset they reach
    /// and the clock. Workers wait on their overlay only while the batch commits.
    pub fn flush(&self) -> Result<(), StateError> {
        let mut guards: Vec<_> = self.overlays.iter().map(|o| o.lock().unwrap_or_else(|p| p.into_inner())).collect();
        let mut batch = self.db.db.batch();
        let mut changes = 0;
        for overlay in guards.iter_mut() {
            for (key, value) in overlay.states.drain() {
                match value {
                    Some(v) => batch.insert(&self.states, key.into_bytes(), v),
                    None => batch.remove(&self.states, key.into_bytes()),
                }
                changes += 1;
            }
            for (deadline, present) in overlay.deadlines.drain() {
                if present {
                    batch.insert(&self.deadlines, deadline.encode(), b"".as_slice());
                } else {
                    batch.remove(&self.deadlines, deadline.encode());
                }
            }
        }
        let acked = self.changelog_acked.load(Ordering::SeqCst);
        if changes == 0 && acked == self.checkpoint() {
            return Ok(());
        }
        batch.insert(&self.meta, b"changelog".as_slice(), acked.to_be_bytes().as_slice());
        batch.insert(&self.meta, b"clock".as_slice(), self.clock.lock().unwrap_or_else(|p| p.into_inner()).encode().as_slice());
        batch.commit().map_err(|e| self.db.err(e))?;
        self.checkpoint.store(acked, Ordering::SeqCst);
        Ok(())
    }

    /// Drops the changes not on disk (an aborted transaction).
    pub fn discard(&self) {
        for overlay in &self.overlays {
            let mut o = overlay.lock().unwrap_or_else(|p| p.into_inner());
            o.states.clear();
            o.deadlines.clear();
        }
        self.changelog_acked.store(self.checkpoint(), Ordering::SeqCst);
    }

    /// Deadlines due at `now`, on disk (call after [`PartitionStore::flush`]), at most `limit`.
    pub fn due(&self, now: Millis, limit: usize) -> Result<Vec<Deadline>, StateError> {
        let end = Deadline { due: now, kind: DeadlineKind::Expiry, key: String::from("\u{10FFFF}") }.encode();
        let mut out = Vec::new();
        for item in self.deadlines.range(..=end) {
            let key = item.key().map_err(|e| self.db.err(e))?;
            if let Some(d) = Deadline::decode(&key) {
                out.push(d);
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Applies one changelog record while restoring (directly on disk, in `batch`).
    pub fn restore_record(&self, batch: &mut fjall::OwnedWriteBatch, key: &[u8], value: Option<&[u8]>, controls_of: impl Fn(i64) -> Option<Controls>) -> Result<(), StateError> {
        let key_text = String::from_utf8_lossy(key).into_owned();
        let controls = split_key(&key_text).and_then(|(campaign, _)| controls_of(campaign)).unwrap_or_default();
        if let Some(old) = self.states.get(key).map_err(|e| self.db.err(e))? {
            if let Ok(old) = serde_json::from_slice::<PlayerState>(&old) {
                for d in Deadline::of(&key_text, &old, &controls) {
                    batch.remove(&self.deadlines, d.encode());
                }
            }
        }
        match value {
            Some(v) => {
                batch.insert(&self.states, key.to_vec(), v.to_vec());
                if let Ok(state) = serde_json::from_slice::<PlayerState>(v) {
                    for d in Deadline::of(&key_text, &state, &controls) {
                        batch.insert(&self.deadlines, d.encode(), b"".as_slice());
                    }
                }
            }
            None => batch.remove(&self.states, key.to_vec()),
        }
        Ok(())
    }

    /// A write batch for [`PartitionStore::restore_record`].
    pub fn batch(&self) -> fjall::OwnedWriteBatch {
        self.db.db.batch()
    }

    /// Commits a restore batch that reaches changelog offset `offset`.
    pub fn commit_restore(&self, mut batch: fjall::OwnedWriteBatch, offset: i64) -> Result<(), StateError> {
        batch.insert(&self.meta, b"changelog".as_slice(), offset.to_be_bytes().as_slice());
        batch.commit().map_err(|e| self.db.err(e))?;
        self.checkpoint.store(offset, Ordering::SeqCst);
        self.changelog_acked.fetch_max(offset, Ordering::SeqCst);
        Ok(())
    }

    /// Writes what the journal holds to the OS (on revocation and at shutdown).
    pub fn persist(&self) -> Result<(), StateError> {
        self.db.db.persist(PersistMode::SyncData).map_err(|e| self.db.err(e))
    }

    /// States stored on disk (approximate).
    pub fn approximate_len(&self) -> usize {
        self.states.approximate_len()
    }

    /// A consistent view of what is on disk now, for [`PartitionStore::census`].
    pub fn snapshot(&self) -> fjall::Snapshot {
        self.db.db.snapshot()
    }

    /// What this partition held on disk at `snapshot`, per campaign (changes still in the
    /// overlays are not on disk): the states, their bytes and their armed inactivity timers. A
    /// scan of the partition; the per-campaign gauges count restored states with it, and forget
    /// released ones.
    pub fn census(&self, snapshot: &fjall::Snapshot) -> Result<BTreeMap<i64, Census>, StateError> {
        use fjall::Readable;
        let mut out: BTreeMap<i64, Census> = BTreeMap::new();
        for item in snapshot.iter(&self.states) {
            let (key, value) = item.into_inner().map_err(|e| self.db.err(e))?;
            if let Some((campaign, _)) = std::str::from_utf8(&key).ok().and_then(split_key) {
                let c = out.entry(campaign).or_default();
                c.entries += 1;
                c.bytes += value.len() as i64;
            }
        }
        for item in snapshot.iter(&self.deadlines) {
            let key = item.key().map_err(|e| self.db.err(e))?;
            if let Some(d) = Deadline::decode(&key).filter(|d| d.kind == DeadlineKind::Inactivity) {
                if let Some((campaign, _)) = split_key(&d.key) {
                    out.entry(campaign).or_default().timers += 1;
                }
            }
        }
        Ok(out)
    }
}

/// One campaign's share of a partition's store ([`PartitionStore::census`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    pub entries: i64,
    pub bytes: i64,
    pub timers: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::decide::{Armed, Json};

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rtcrm-state-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn overlays_flush_atomically_with_the_changelog_offset_and_survive_a_reopen() {
        let d = dir("flush");
        let controls = Controls { inactivity_ms: Some(1000), ..Controls::default() };
        {
            let db = StateDb::open(&d).unwrap();
            let p = db.partition(3, 2).unwrap();
            assert_eq!(p.checkpoint(), -1);
            let s = PlayerState {
                touched: 5,
                inactive: Some(Armed { due: 1005, id: "7:x".into(), event: Json::new("{}".into()).unwrap() }),
                ..PlayerState::default()
            };
            let json = p.put(1, "7:p1", None, Some(&s), &controls).unwrap();
            assert_eq!(serde_json::from_slice::<PlayerState>(&json).unwrap(), s);
            assert_eq!(p.get(1, "7:p1").unwrap(), Some(s.clone()), "the worker reads its own change");
            assert_eq!(p.get(0, "7:p1").unwrap(), None, "another worker's overlay is not consulted (it never has this player)");
            assert!(p.due(2000, 10).unwrap().is_empty(), "not on disk before the flush");
            p.changelog_acked(41);
            p.saw(5);
            p.flush().unwrap();
            assert_eq!(p.checkpoint(), 41);
            assert_eq!(p.get(0, "7:p1").unwrap(), Some(s), "on disk: every worker sees it");
            let due = p.due(2000, 10).unwrap();
            assert_eq!(due, vec![Deadline { due: 1005, kind: DeadlineKind::Inactivity, key: "7:p1".into() }]);
            assert!(p.due(1004, 10).unwrap().is_empty());
            p.persist().unwrap();
        }
        let db = StateDb::open(&d).unwrap();
        let p = db.partition(3, 2).unwrap();
        assert_eq!(p.checkpoint(), 41, "the checkpoint survives");
        assert!(p.get(0, "7:p1").unwrap().is_some());
        assert!(p.now() >= 5, "the clock survives");
        let other = db.partition(4, 2).unwrap();
        assert_eq!((other.checkpoint(), other.get(0, "7:p1").unwrap()), (-1, None), "partitions are separate");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_census_counts_states_bytes_and_armed_timers_per_campaign() {
        let d = dir("census");
        let db = StateDb::open(&d).unwrap();
        let p = db.partition(0, 2).unwrap();
        let timer = Controls { inactivity_ms: Some(1000), ..Controls::default() };
        let armed = PlayerState {
            touched: 5,
            inactive: Some(Armed { due: 1005, id: "7:x".into(), event: Json::new("{}".into()).unwrap() }),
            ..PlayerState::default()
        };
        let plain = PlayerState { triggers: 2, ..PlayerState::default() };
        let a = p.put(0, "7:a", None, Some(&armed), &timer).unwrap().len() as i64;
        let b = p.put(1, "7:b", None, Some(&plain), &timer).unwrap().len() as i64;
        let c = p.put(0, "8:a", None, Some(&plain), &Controls::default()).unwrap().len() as i64;
        assert!(p.census(&p.snapshot()).unwrap().is_empty(), "changes in the overlays are not on disk yet");
        p.flush().unwrap();
        let before = p.snapshot();
        let census = p.census(&p.snapshot()).unwrap();
        assert_eq!(census.get(&7), Some(&Census { entries: 2, bytes: a + b, timers: 1 }));
        assert_eq!(census.get(&8), Some(&Census { entries: 1, bytes: c, timers: 0 }));
        assert_eq!(census.len(), 2);
        p.put(0, "7:a", Some(&armed), None, &timer);
        p.flush().unwrap();
        assert_eq!(p.census(&p.snapshot()).unwrap().get(&7), Some(&Census { entries: 1, bytes: b, timers: 0 }), "a deleted state and its timer leave");
        assert_eq!(p.census(&before).unwrap(), census, "a snapshot keeps what was on disk when it was taken");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_aborted_transaction_discards_the_overlays() {
        let d = dir("discard");
        let db = StateDb::open(&d).unwrap();
        let p = db.partition(0, 1).unwrap();
        p.put(0, "1:a", None, Some(&PlayerState { triggers: 1, ..PlayerState::default() }), &Controls::default());
        p.changelog_acked(9);
        p.discard();
        p.flush().unwrap();
        assert_eq!((p.get(0, "1:a").unwrap(), p.checkpoint()), (None, -1));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn deadlines_sort_by_time_including_negative_times() {
        let ds = [Millis::MIN, -5, 0, 7, Millis::MAX].map(|due| Deadline { due, kind: DeadlineKind::Expiry, key: "k".into() });
        let mut encoded: Vec<_> = ds.iter().map(Deadline::encode).collect();
        encoded.sort();
        let decoded: Vec<_> = encoded.iter().map(|e| Deadline::decode(e).unwrap()).collect();
        assert_eq!(decoded, ds.to_vec());
        let mut clock = Clock::default();
        assert_eq!(clock.now(100), Millis::MIN, "no event yet: nothing is due");
        clock.saw(1_000, 100);
        assert_eq!(clock.now(600), 1_500, "idle: wall-clock time passes");
        clock.saw(900, 700);
        assert_eq!(clock.now(700), 1_600, "an older event does not move time back");
        clock.saw(10_000, 800);
        assert_eq!(clock.now(800), 10_000);
    }
}
