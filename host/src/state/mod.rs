//! Per-player state and campaign controls (spec §12).
//!
//! - `controls`: the campaign fields (cooldown, caps, count, inactivity, holdout, variants,
//!   state_version, JS state options), validated with the campaign.
//! - `decide`: the per-player decision, a pure function of the stored state and the event.
//! - `store`: the on-disk store per owned partition and its overlays, backed by the changelog.
//! - `lookup` and `view`: one player's state read from the owned stores and shown for support
//!   (`GET /api/campaigns/{id}/players/{player}`, `rtcrm campaign state`).

pub mod controls;
pub mod decide;
pub mod lookup;
pub mod partitioning;
pub mod store;
pub mod stores;
pub mod view;
