//! Dry runs (spec §13): campaigns evaluated with no side effect — nothing produced to any topic,
//! no consumer group joined, no offset committed, and none of the processor's counters,
//! instances or quarantine touched.
//!
//! ```text
//! backtest: events topic (assign, offsets by time) ─┐
//!           or a JSON-lines file                    ├─▶ reader thread: parse, shard by player ─▶ N evaluators ─▶ tallies ─▶ report
//! explain:  one event from POST /api/explain ───────┴─▶ every campaign of its game ────────────▶ the deciding check of each
//! ```
//!
//! Both decide through [`decision::decide`], which is spec §4's checks ([`crate::events::evaluate::precheck`])
//! and the processor's filter run ([`crate::events::evaluate::run_filter`]) — the same code and
//! limits as `rtcrm run` — on campaign copies with detached counters.

pub mod backtest;
pub mod decision;
pub mod explain;
