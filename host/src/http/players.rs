//! `GET /api/campaigns/{id}/players/{player}`: one player's stored state for one campaign, for
//! support questions (issue 12, item 6). The answer is a [`PlayerView`] (`state/view.rs`).
//!
//! | case | status |
//! | --- | --- |
//! | the state, or `"found": false` with why (the group and variant still shown) | 200 |
//! | the campaign id was never seen, or has no version in force (deleted, rejected) | 404 |
//! | another instance owns the player's partition: `partition`, `owner` (its instance id and host, when the group says) | 409 |
//! | the event path has not started, or the partition is still being restored | 503 |
//!
//! A state lives only in the store of the instance that owns its partition (spec §12), so the
//! 409 names the partition and, from the consumer group's member assignments, the owner.

use crate::http::{json, ApiError, Http};
use crate::processor::Processor;
use crate::state::lookup::{self, LookupError};
use crate::state::view::{Lookup, PlayerView};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use std::time::Duration;

/// How long the consumer group's members may take to answer (a 409 waits for it).
const GROUP_TIMEOUT: Duration = Duration::from_secs(5);

pub fn routes() -> Router<Http> {
    Router::new().route("/api/campaigns/{id}/players/{player}", get(player_state))
}

async fn player_state(State(http): State<Http>, Path((id, player)): Path<(String, String)>) -> Result<Response, ApiError> {
    let id = crate::http::api::parse_id(&id)?;
    if player.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "the player id is empty"));
    }
    let processor = http.processor.clone();
    let info = processor.registry.info(id).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("campaign {id} is unknown")))?;
    let snapshot = processor.registry.snapshot();
    let Some(campaign) = snapshot.get(id).cloned() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("campaign {id} is {}: no version of it is in force, so it has no per-player state", info.state.as_str()),
        )
        .with("campaign_id", id)
        .with("state", info.state.as_str()));
    };
    let controls = campaign.def.controls.clone();
    let states = processor.states.load_full();
    if !controls.needs_state() {
        // Nothing is stored: the answer is the group and variant alone, wherever the partition is.
        let partition = lookup::partition_of(states.as_deref(), &player);
        let view = PlayerView::build(Lookup { campaign_id: id, player: &player, controls: &controls, partition, now: None, stored: None });
        return Ok(json(StatusCode::OK, &view));
    }
    let (who, read) = (player.clone(), states.clone());
    let found = tokio::task::spawn_blocking(move || lookup::read(read.as_deref(), id, &who))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("reading the per-player state failed: {e}")))?;
    match found {
        Ok(found) => {
            let view = PlayerView::build(Lookup {
                campaign_id: id,
                player: &player,
                controls: &controls,
                partition: Some(found.partition),
                now: found.now,
                stored: found.stored,
            });
            Ok(json(StatusCode::OK, &view))
        }
        Err(e @ LookupError::NotOwned { partition, partitions, .. }) => Err(not_owned(&processor, e, partition, partitions).await),
        Err(e @ (LookupError::NotStarted | LookupError::Restoring { .. })) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
        Err(LookupError::Store(e)) => {
            tracing::error!(error = %e, campaign = id, player, "reading a per-player state for the API");
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("reading the per-player state failed: {e}")))
        }
    }
}

/// The 409: the partition, and which member of the group owns it (when the group says).
async fn not_owned(processor: &std::sync::Arc<Processor>, error: LookupError, partition: i32, partitions: i32) -> ApiError {
    let settings = &processor.settings;
    let p = processor.clone();
    let owner = tokio::task::spawn_blocking(move || owner_of(&p, partition)).await.unwrap_or_else(|e| Err(e.to_string()));
    let group = &settings.group_id;
    let message = match &owner {
        Ok(Some(owner)) => format!(
            "{error}: instance `{}` (host {}) owns it; ask that instance's HTTP API (its --http-addr) for this player",
            owner.instance, owner.host
        ),
        Ok(None) => format!("{error}: no member of group `{group}` owns it right now (a rebalance may be under way); try again"),
        Err(reason) => format!(
            "{error}: another instance of group `{group}` owns it (the group could not be asked which: {reason}); ask the instance that owns partition {partition}"
        ),
    };
    let owner = match owner {
        Ok(Some(o)) => serde_json::json!({ "instance": o.instance, "client_id": o.client_id, "host": o.host }),
        _ => serde_json::Value::Null,
    };
    ApiError::new(StatusCode::CONFLICT, message)
        .with("partition", partition)
        .with("partitions", partitions)
        .with("group", group.as_str())
        .with("instance", settings.instance_id.as_str())
        .with("owner", owner)
}

/// A member of the consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Its `--instance-id` (from its client id `rtcrm-<instance>-events`).
    pub instance: String,
    pub client_id: String,
    pub host: String,
}

/// The member of the processor's group that owns partition `partition` of the events or the
/// repartition topic; `Ok(None)` when none does.
fn owner_of(processor: &Processor, partition: i32) -> Result<Option<Owner>, String> {
    use rdkafka::producer::Producer;
    let settings = &processor.settings;
    let groups = processor.producer.client().fetch_group_list(Some(&settings.group_id), GROUP_TIMEOUT).map_err(|e| e.to_string())?;
    for group in groups.groups() {
        for member in group.members() {
            let Some(assignment) = member.assignment().and_then(parse_assignment) else { continue };
            let owns = assignment
                .iter()
                .any(|(topic, ps)| (*topic == settings.event_topic || *topic == settings.repartition_topic) && ps.contains(&partition));
            if owns {
                let client_id = member.client_id().to_owned();
                let instance = instance_of(&client_id).unwrap_or(&client_id).to_owned();
                return Ok(Some(Owner { instance, client_id, host: member.client_host().trim_start_matches('/').to_owned() }));
            }
        }
    }
    Ok(None)
}

/// The instance id in an events consumer's client id (`rtcrm-<instance>-events`).
fn instance_of(client_id: &str) -> Option<&str> {
    client_id.strip_prefix("rtcrm-")?.strip_suffix("-events")
}

/// A consumer-protocol member assignment (Kafka's `ConsumerProtocolAssignment`, any version:
/// int16 version, then `[topic: string, partitions: [int32]]`, then user data): the topics and
/// their partitions. `None` when the bytes are not one.
pub fn parse_assignment(bytes: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
    struct Reader<'a>(&'a [u8]);
    impl Reader<'_> {
        fn take(&mut self, n: usize) -> Option<&[u8]> {
            let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
            self.0 = rest;
            Some(head)
        }
        fn i16(&mut self) -> Option<i16> {
            Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
        }
        fn i32(&mut self) -> Option<i32> {
            Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
        }
    }
    let mut r = Reader(bytes);
    let _version = r.i16()?;
    let topics = usize::try_from(r.i32()?).ok()?;
    let mut out = Vec::with_capacity(topics.min(64));
    for _ in 0..topics {
        let len = usize::try_from(r.i16()?).ok()?;
        let topic = String::from_utf8(r.take(len)?.to_vec()).ok()?;
        let n = usize::try_from(r.i32()?).ok()?;
        let mut partitions = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            partitions.push(r.i32()?);
        }
        out.push((topic, partitions));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An assignment as a Java consumer's ConsumerProtocol serializes it (version 0).
    fn encode(topics: &[(&str, &[i32])], user_data: Option<&[u8]>) -> Vec<u8> {
        let mut out = 0i16.to_be_bytes().to_vec();
        out.extend_from_slice(&(topics.len() as i32).to_be_bytes());
        for (topic, partitions) in topics {
            out.extend_from_slice(&(topic.len() as i16).to_be_bytes());
            out.extend_from_slice(topic.as_bytes());
            out.extend_from_slice(&(partitions.len() as i32).to_be_bytes());
            for p in *partitions {
                out.extend_from_slice(&p.to_be_bytes());
            }
        }
        match user_data {
            Some(d) => {
                out.extend_from_slice(&(d.len() as i32).to_be_bytes());
                out.extend_from_slice(d);
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        out
    }

    #[test]
    fn member_assignments_are_read_as_the_consumer_protocol_writes_them() {
        let bytes = encode(&[("events-valid", &[0, 2]), ("g-rtcrm-events-by-player", &[0, 2])], None);
        assert_eq!(
            parse_assignment(&bytes),
            Some(vec![("events-valid".to_owned(), vec![0, 2]), ("g-rtcrm-events-by-player".to_owned(), vec![0, 2])])
        );
        assert_eq!(parse_assignment(&encode(&[], Some(b"x"))), Some(vec![]));
        assert_eq!(parse_assignment(&bytes[..bytes.len() - 10]), None, "cut short");
        assert_eq!(parse_assignment(b""), None);
        assert_eq!(instance_of("rtcrm-b-1-events"), Some("b-1"));
        assert_eq!(instance_of("rtcrm-a-campaigns"), None);
    }
}
