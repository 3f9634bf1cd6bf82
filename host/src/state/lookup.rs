//! Reading one (campaign, player)'s state from this process's stores, for the HTTP API: the
//! player's partition (`state_partition`), whether this process owns it and has restored it,
//! and the stored JSON (the workers' changes not yet on disk first).

use crate::state::controls::Millis;
use crate::state::decide::{Json, PlayerState};
use crate::state::partitioning::state_partition;
use crate::state::store::{state_key, StateError};
use crate::state::stores::States;

/// Why a player's state cannot be read here.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The event path has not opened the stores yet (the campaigns are still loading).
    #[error("the event path has not started yet (the campaigns are still loading); try again in a few seconds")]
    NotStarted,
    /// Another instance of the consumer group owns the partition.
    #[error("player {player}'s state is on partition {partition} (of {partitions}), which this instance does not own")]
    NotOwned { player: String, partition: i32, partitions: i32 },
    /// The partition is owned, and its state is still being restored from the changelog.
    #[error("partition {partition}'s state is being restored from the changelog; try again in a few seconds")]
    Restoring { partition: i32 },
    #[error(transparent)]
    Store(#[from] StateError),
}

/// A player's state as read here.
#[derive(Debug)]
pub struct Found {
    pub partition: i32,
    /// The partition's clock (None: no event seen on it yet).
    pub now: Option<Millis>,
    /// The decoded state and its stored JSON (None: no state).
    pub stored: Option<(PlayerState, Json)>,
}

/// The partition holding `player`'s state, of this process's event path (`None`: not started).
pub fn partition_of(states: Option<&States>, player: &str) -> Option<i32> {
    states.map(|s| state_partition(player, s.partitions))
}

/// Reads campaign `campaign_id`'s state of `player` from the owned stores.
pub fn read(states: Option<&States>, campaign_id: i64, player: &str) -> Result<Found, LookupError> {
    let states = states.ok_or(LookupError::NotStarted)?;
    let partition = state_partition(player, states.partitions);
    let store = states
        .store(partition)
        .ok_or_else(|| LookupError::NotOwned { player: player.to_owned(), partition, partitions: states.partitions })?;
    if !store.is_restored() {
        return Err(LookupError::Restoring { partition });
    }
    let key = state_key(campaign_id, player);
    let stored = match store.raw(&key)? {
        None => None,
        Some(bytes) => {
            let state: PlayerState = serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt { key: key.clone(), source })?;
            let text = String::from_utf8(bytes).map_err(|e| StateError::Corrupt {
                key: key.clone(),
                source: serde::de::Error::custom(format!("not UTF-8: {e}")),
            })?;
            let raw = Json::new(text).expect("decoded above: valid JSON");
            Some((state, raw))
        }
    };
    let now = Some(store.now()).filter(|t| *t != Millis::MIN);
    Ok(Found { partition, now, stored })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::controls::Controls;
    use crate::state::store::StateDb;

    #[test]
    fn reads_an_owned_partition_and_names_the_partition_of_another() {
        let dir = std::env::temp_dir().join(format!("rtcrm-lookup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = StateDb::open(&dir).unwrap();
        let partitions = 4;
        // A player on partition 0 and one elsewhere.
        let mine = (0..100).map(|p| p.to_string()).find(|p| state_partition(p, partitions) == 0).unwrap();
        let other = (0..100).map(|p| p.to_string()).find(|p| state_partition(p, partitions) != 0).unwrap();
        let states = States::detached(db, partitions, &[0]);
        assert!(matches!(read(None, 7, &mine), Err(LookupError::NotStarted)));
        let found = read(Some(&states), 7, &mine).unwrap();
        assert_eq!((found.partition, found.now, found.stored.is_none()), (0, None, true), "owned, nothing stored, no event yet");
        let state = PlayerState { touched: 1_000, triggers: 2, ..PlayerState::default() };
        let store = states.store(0).unwrap();
        store.put(0, &state_key(7, &mine), None, Some(&state), &Controls::default());
        store.saw(1_000);
        let found = read(Some(&states), 7, &mine).unwrap();
        let (decoded, raw) = found.stored.expect("the worker's change is read before it is on disk");
        assert_eq!(decoded, state);
        assert_eq!(raw.get(), serde_json::to_string(&state).unwrap());
        assert!(found.now.is_some_and(|t| t >= 1_000));
        assert!(read(Some(&states), 8, &mine).unwrap().stored.is_none(), "another campaign's state is another key");
        match read(Some(&states), 7, &other) {
            Err(e @ LookupError::NotOwned { .. }) => {
                let LookupError::NotOwned { partition, partitions, .. } = &e else { unreachable!() };
                assert_eq!((*partition, *partitions), (state_partition(&other, 4), 4));
                assert!(e.to_string().contains(&format!("is on partition {partition} (of 4), which this instance does not own")), "{e}");
            }
            other => panic!("expected NotOwned: {other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
