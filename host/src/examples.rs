//! The original system's example campaign and event (`examples/`), shipped inside the binary for
//! `rtcrm dev` and the console's "example" buttons.

/// Campaign 4711 of the original README.
pub const CAMPAIGN_4711: &str = include_str!("../../examples/campaigns/campaign-4711.json");
/// The original README's event (a lost fight).
pub const EVENT: &str = include_str!("../../examples/events/fight-loss.json");
