//! Dry runs (spec §13): campaigns evaluated with no side effect — nothing produced to any topic,
//! no consumer group joined, no offset committed, and none of the processor's counters,
//! instances or quarantine touched.
//!
//! ```text
//! backtest: events topic (assign, offsets by time) ─┐
//!           or a JSON-lines file                    ├─▶ reader thread: parse, shard by player ─▶ N evaluators ─▶ tallies ─▶ report
//! explain:  one event from POST /api/explain ───────┴─▶ every campaign of its game ────────────▶ the deciding check of each
//!
//! each evaluator: §4's checks ─▶ player present ─▶ filter ─▶ count, cooldown, cap, holdout, variant,
//!                 inactivity timers (state::decide on its players' in-memory states)
//! ```
//!
//! Both decide through [`decision`]: spec §4's checks ([`crate::events::evaluate::precheck`]) and
//! the processor's filter run ([`crate::events::evaluate::run_filter`], and
//! [`crate::events::evaluate::run_filter_with_state`] for `filter(event, state)`) — the same code
//! and limits as `rtcrm run` — on campaign copies with detached counters; then spec §12's
//! controls through the processor's own decision code ([`crate::state::decide`]): the backtest
//! over in-memory per-player states ([`backtest::players`]), explain as far as it does not
//! depend on the player's stored state, which it does not read.

pub mod backtest;
pub mod decision;
pub mod explain;
