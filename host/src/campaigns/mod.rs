//! The campaigns side: campaign messages (`definition`), the registry of campaigns in force
//! (`registry`), their filter instances (`instances`), the campaigns-topic reader (`loader`) and
//! the status messages (`status`).
//!
//! ```text
//! campaigns ──▶ loader: read to the end offsets → compile in parallel → activate in bulk → ready
//!  topic          then follow: compile off the reactor, apply in order per campaign id
//!                   │                                    │
//!                   ▼                                    ▼
//!               registry (arc-swap snapshot) ──▶ workers  status messages ──▶ crm-campaign-status
//! ```

pub mod definition;
pub mod instances;
pub mod loader;
pub mod registry;
pub mod status;
