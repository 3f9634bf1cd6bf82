//! `rtcrm campaign state ID PLAYER`: one player's stored state for a campaign, for support
//! questions ("why did player 12345 get no trigger?"), asked of a processor's HTTP API
//! (`GET /api/campaigns/{id}/players/{player}`; state lives in the processors' stores, not in a
//! topic a command could read directly).
//!
//! Prints the state human-readably (`--json`: the API's JSON as it is). Exit codes: 0 with the
//! state or the "no state" answer; 2 when the campaign is unknown (or has no version in force);
//! 1 for anything else, among them another instance owning the player's partition (the message
//! names the partition and the owner to ask instead) and an unreachable API.

use crate::cli::api_client::{self, segment};
use crate::state::view::PlayerView;
use crate::Exit;
use anyhow::{Context, Result};
use std::time::Duration;

/// How long the API may take (a 409 asks the consumer group for the owner: up to 5 s).
const TIMEOUT: Duration = Duration::from_secs(15);

/// The `state` subcommand's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct StateArgs {
    /// The campaign id.
    pub id: i64,
    /// The player id (the event's `player_id` as text).
    pub player: String,
    /// The processor's HTTP address (its --http-addr).
    #[arg(long, env = "RTCRM_API_URL", default_value = "http://127.0.0.1:8080", value_name = "URL")]
    pub api: String,
    /// Print the API's JSON as it is.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: StateArgs) -> Result<()> {
    let path = format!("/api/campaigns/{}/players/{}", args.id, segment(&args.player));
    let reply = api_client::get(&args.api, &path, TIMEOUT)?;
    let text = String::from_utf8_lossy(&reply.body);
    if args.json {
        println!("{}", text.trim_end());
    }
    if reply.status == 200 {
        if !args.json {
            let view: PlayerView = serde_json::from_str(&text)
                .with_context(|| format!("the API at {} answered with JSON this rtcrm cannot read (another version?): {text}", args.api))?;
            print!("{}", view.render());
        }
        return Ok(());
    }
    let error = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| format!("HTTP {}: {}", reply.status, text.trim()));
    let code = if reply.status == 404 { 2 } else { 1 };
    Err(Exit { code, message: format!("error: {error}") }.into())
}
