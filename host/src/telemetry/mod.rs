//! Telemetry: Prometheus metrics, per-campaign counters for the API, and the logs.

pub mod logging;
pub mod metrics;
pub mod stats;
