//! The event path (spec §3–§4, §7–§9): from the events topic to triggers, dead letters and
//! committed offsets.
//!
//! ```text
//!              consumer thread (consumer.rs)                  workers (workers.rs)            sink (sink/)
//! events ──▶ poll a batch · parse each event once ──shard by──▶ match · evaluate · build ──▶ at-least-once: idempotent producer,
//!  topic     own partitions (assign / drain+commit   player    triggers (evaluate.rs)         offsets stored after delivery
//!            on revoke) · drive the sink between                                           exactly-once: one transaction per
//!            polls: store offsets / commit the txn                                          100 ms with the consumed offsets
//!                     ▲                                                                          │
//!                     └──────────── Tracker (batch.rs): a batch's offsets pass only when ────────┘
//!                                   it and every batch before it are done
//! ```
//!
//! - One consumer thread polls; each poll's messages become one [`batch::Batch`], split into one
//!   shard per worker by player, so a player's events are evaluated in order by one worker while
//!   the batch's other players are evaluated in parallel — even on a single partition.
//! - Workers read the campaigns in force lock-free (one registry snapshot per shard), take
//!   filter instances from each campaign's pool (bounded across campaigns), and send records to
//!   the sink directly: no per-event channel hop.
//! - Offsets: a batch is done when its shards are evaluated and (at-least-once) its records
//!   acknowledged; the tracker releases offsets only for the done prefix, so nothing is
//!   committed past an event in flight.
//! - Every failure is typed: a record the broker refuses for good becomes a dead letter, a
//!   retriable failure is retried with backoff, a fatal one stops the process through the
//!   supervisor (`supervisor.rs`).

pub mod batch;
pub mod consumer;
pub mod evaluate;
pub mod sink;
pub mod workers;

pub use consumer::run;
