//! Telemetry: Prometheus metrics, per-campaign counters for the API, and the logs.

pub mod filter_log;
pub mod logging;
pub mod metrics;
pub mod stats;
