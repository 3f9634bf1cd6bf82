//! The HTTP API (spec §11, issue 5), for the console and for scripts:
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /api/campaigns` | `{"campaigns": [view, ...]}`, by id |
//! | `GET /api/campaigns/{id}` | one view; 404 when the id was never seen |
//! | `GET /api/campaigns/{id}/players/{player}` | one player's stored state for the campaign (`players.rs`): 200 (`"found": false` when none), 404, 409 when another instance owns the player's partition |
//! | `POST /api/compile`, body `{"source": "<JavaScript>"}` | `{"ok": true}` or `{"ok": false, "error": {"message", "line", "column"}}` |
//! | `POST /api/campaigns`, body: the campaign JSON | validated and compiled, then produced to the campaigns topic keyed by its id: 202 `{"ok": true, "campaign_id", ...}`; 400 with the reason |
//! | `DELETE /api/campaigns/{id}` | a tombstone under the id: 202; 404 when the id is unknown or deleted |
//! | `POST /api/events`, body: an event (a JSON object) | produced to the events topic keyed by its player id: 202 |
//! | `GET /api/triggers/stream` | server-sent events: the latest triggers first (`event: recent`), then one `data:` line per trigger (its JSON) produced from now on |
//! | `GET /api/info`, `GET /api/examples` | versions, topics, whether a token is needed; the example campaign and event |
//!
//! A view: `{"campaign_id", "state", "error", "campaign": <the JSON in force, or null>,
//! "controls": <its fields of spec §12 as given, or null>, "counters": {"evaluations",
//! "matches", "errors": {kind: n}, "errors_total", "fuel_p50", "fuel_p99", "last_match_at",
//! "last_error": null | {"kind", "message", "partition", "offset", "at"}, "control_matches",
//! "suppressed": {"cooldown", "cap", "count"}, "no_player", "timers_pending", "state_entries",
//! "state_bytes"}}`.
//! Backtests and explain (`/api/backtest`, `/api/explain`) are in `backtest.rs`. Bodies are capped at [`BODY_LIMIT`] (413 beyond).

use crate::campaigns::definition::CampaignDef;
use crate::campaigns::loader::FilterRejection;
use crate::http::{json, ApiError, Http};
use crate::processor::Processor;
use crate::telemetry::metrics::ControlCounters;
use anyhow::{Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::{Stream, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use rtcrm_sandbox::CompileError;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json as j, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch, Mutex};

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 256 * 1024;
/// An over-large body is read and dropped up to this size before the 413 is sent, so the client
/// sees the answer rather than a reset connection.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;
/// How long producing to Kafka may take before the request fails.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(15);

use crate::examples::{CAMPAIGN_4711 as EXAMPLE_CAMPAIGN, EVENT as EXAMPLE_EVENT};

pub fn routes() -> Router<Http> {
    Router::new()
        .route("/api/info", get(info))
        .route("/api/examples", get(examples))
        .route("/api/campaigns", get(list_campaigns).post(put_campaign))
        .route("/api/campaigns/{id}", get(get_campaign).delete(delete_campaign))
        .route("/api/compile", post(compile))
        .route("/api/events", post(send_event))
        .route("/api/triggers/stream", get(trigger_stream))
        .route("/api", get(|| async { ApiError::new(StatusCode::NOT_FOUND, "see /api/campaigns, /api/events, /api/compile, /api/triggers/stream") }))
}

// ---------------------------------------------------------------------------------------------
// Reading requests

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

fn too_large() -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is over the limit of {} KiB", BODY_LIMIT / 1024))
        .with("limit_bytes", BODY_LIMIT)
}

/// Reads what is left of a refused body (bounded in size and time, and stopping when the client
/// pauses) so the client gets the answer instead of a reset connection.
async fn drain(mut stream: impl Stream<Item = Result<Bytes, axum::Error>> + Unpin, mut read: usize) {
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while read < DRAIN_LIMIT {
            match tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
                Ok(Some(Ok(chunk))) => read += chunk.len(),
                _ => break,
            }
        }
    })
    .await;
}

/// The request body, at most [`BODY_LIMIT`] bytes.
pub(crate) async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    if content_length(headers).is_some_and(|n| n > BODY_LIMIT as u64) {
        drain(stream, 0).await;
        return Err(too_large());
    }
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("reading the request body: {e}")))?;
        if buf.len() + chunk.len() > BODY_LIMIT {
            drain(stream, buf.len() + chunk.len()).await;
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.into())
}

/// The body as a JSON object; `what` names it in errors ("the event").
pub(crate) fn json_object(bytes: &[u8], what: &str) -> Result<serde_json::Map<String, Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("the request body is empty; send {what} as a JSON object")));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{what} must be a JSON object, not {}", crate::campaigns::definition::kind_of(&other)),
        )),
        Err(e) => Err(ApiError::new(StatusCode::BAD_REQUEST, format!("{what} is not valid JSON: {e}"))
            .with("line", e.line())
            .with("column", e.column())),
    }
}

pub(crate) fn parse_id(text: &str) -> Result<i64, ApiError> {
    text.trim().parse().map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, format!("campaign id `{text}` is not an integer")))
}

// ---------------------------------------------------------------------------------------------
// Campaigns

#[derive(Serialize)]
struct Counters {
    evaluations: u64,
    matches: u64,
    errors: BTreeMap<&'static str, u64>,
    errors_total: u64,
    fuel_p50: Option<u64>,
    fuel_p99: Option<u64>,
    last_match_at: Option<String>,
    /// The last failed evaluation (spec §13): `{"kind", "message", "partition", "offset", "at"}`.
    last_error: Option<Value>,
    /// Per-player controls (spec §12): `control_matches`, `suppressed` `{"cooldown", "cap",
    /// "count"}`, `no_player`, `timers_pending`, `state_entries`, `state_bytes` — the series of
    /// `/metrics`.
    #[serde(flatten)]
    per_player: ControlCounters,
}

#[derive(Serialize)]
struct CampaignView<'a> {
    campaign_id: i64,
    state: &'static str,
    error: Option<String>,
    /// The version in force as its triggers echo it: as received, a `filter_wasm` module replaced
    /// by its digest (None for a rejected or deleted id).
    campaign: Option<&'a RawValue>,
    /// The version in force's fields of spec §12 as it gives them (`{}`: none; None: no
    /// version in force).
    controls: Option<&'a serde_json::Map<String, Value>>,
    counters: Counters,
}

fn counters(processor: &Processor, id: i64) -> Counters {
    let s = processor.stats.get(id);
    Counters {
        per_player: processor.metrics.control_counters(id),
        evaluations: s.evaluations,
        matches: s.matches,
        errors_total: s.errors.iter().map(|(_, n)| n).sum(),
        errors: s.errors.iter().map(|(k, n)| (k.as_str(), *n)).collect(),
        fuel_p50: s.fuel_p50,
        fuel_p99: s.fuel_p99,
        last_match_at: s
            .last_match_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        last_error: s.last_error.map(|e| {
            j!({
                "kind": e.kind.as_str(),
                "message": e.message,
                "partition": e.partition,
                "offset": e.offset,
                "at": chrono::DateTime::from_timestamp_millis(e.at_ms).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            })
        }),
    }
}

async fn list_campaigns(State(http): State<Http>) -> Response {
    let processor = &http.processor;
    let snapshot = processor.registry.snapshot();
    let views: Vec<CampaignView<'_>> = processor
        .registry
        .all_info()
        .into_iter()
        .map(|(id, info)| CampaignView {
            campaign_id: id,
            state: info.state.as_str(),
            error: info.error,
            campaign: snapshot.get(id).map(|c| &*c.trigger_json),
            controls: snapshot.get(id).map(|c| &c.def.controls_given),
            counters: counters(processor, id),
        })
        .collect();
    #[derive(Serialize)]
    struct List<'a> {
        campaigns: Vec<CampaignView<'a>>,
    }
    json(StatusCode::OK, &List { campaigns: views })
}

async fn get_campaign(State(http): State<Http>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let processor = &http.processor;
    let info = processor
        .registry
        .info(id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("campaign {id} is unknown")))?;
    let snapshot = processor.registry.snapshot();
    let view = CampaignView {
        campaign_id: id,
        state: info.state.as_str(),
        error: info.error,
        campaign: snapshot.get(id).map(|c| &*c.trigger_json),
        controls: snapshot.get(id).map(|c| &c.def.controls_given),
        counters: counters(processor, id),
    };
    Ok(json(StatusCode::OK, &view))
}

/// A compile error as `{"message", "line", "column"}` (line and column null when not a syntax error).
pub(crate) fn compile_error(err: &CompileError) -> Value {
    match err {
        CompileError::Syntax { message, line, column } => j!({ "message": message, "line": line, "column": column }),
        other => j!({ "message": other.to_string(), "line": null, "column": null }),
    }
}

async fn compile_source(processor: &Processor, source: String) -> Result<Result<(), CompileError>, ApiError> {
    let sandbox = processor.sandbox.clone();
    tokio::task::spawn_blocking(move || sandbox.compile_js(&source).map(drop))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the compiler failed: {e}")))
}

async fn compile(State(http): State<Http>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let body = read_body(&headers, body).await?;
    // Either `{"source": "<JavaScript>"}` or the JavaScript itself as the body (spec §11: "JS
    // source → ok or error").
    let source = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(request)) if request.contains_key("source") => match request.get("source") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("`source` must be a string, not {}", crate::campaigns::definition::kind_of(other))))
            }
            None => unreachable!("checked above"),
        },
        _ => String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "send {\"source\": \"<JavaScript>\"} or the JavaScript itself, as UTF-8"))?,
    };
    Ok(match compile_source(&http.processor, source).await? {
        Ok(()) => json(StatusCode::OK, &j!({ "ok": true })),
        Err(err) => json(StatusCode::OK, &j!({ "ok": false, "error": compile_error(&err) })),
    })
}

/// Produces a record and waits for its acknowledgement.
async fn produce(processor: &Processor, topic: &str, key: &str, payload: Option<&[u8]>) -> Result<(i32, i64), ApiError> {
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key);
    if let Some(p) = payload {
        record = record.payload(p);
    }
    processor.producer.send(record, PRODUCE_TIMEOUT).await.map(|d| (d.partition, d.offset)).map_err(|(e, _)| {
        tracing::warn!(error = %e, topic, "HTTP API: producing failed");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("producing to {topic} failed: {e}"))
    })
}

async fn put_campaign(State(http): State<Http>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let processor = &http.processor;
    let body = read_body(&headers, body).await?;
    json_object(&body, "the campaign")?;
    let def = CampaignDef::parse(None, &body).map_err(|r| {
        let e = ApiError::new(StatusCode::BAD_REQUEST, r.reason);
        match r.id {
            Some(id) => e.with("campaign_id", id),
            None => e,
        }
    })?;
    let (sandbox, filter, stateful) = (processor.sandbox.clone(), def.filter.clone(), def.controls.state.is_some());
    let checked = tokio::task::spawn_blocking(move || crate::campaigns::loader::compile_filter(&sandbox, &filter, stateful).map(drop))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the compiler failed: {e}")))?;
    match checked {
        Ok(()) => {}
        Err(FilterRejection::Js(err)) => {
            let detail = compile_error(&err);
            return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("filter: {}", crate::campaigns::loader::describe(&err)))
                .with("campaign_id", def.id)
                .with("line", detail["line"].clone())
                .with("column", detail["column"].clone()));
        }
        Err(wasm @ FilterRejection::Wasm(_)) => {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, wasm.to_string()).with("campaign_id", def.id));
        }
    }
    let topic = &processor.settings.campaign_topic;
    let text = String::from_utf8_lossy(&body);
    let (partition, offset) = produce(processor, topic, &def.id.to_string(), Some(text.trim().as_bytes())).await?;
    tracing::info!(campaign = def.id, "HTTP API: campaign published");
    Ok(json(
        StatusCode::ACCEPTED,
        &j!({ "ok": true, "campaign_id": def.id, "topic": topic, "partition": partition, "offset": offset }),
    ))
}

async fn delete_campaign(State(http): State<Http>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let processor = &http.processor;
    match processor.registry.info(id) {
        Some(info) if info.state != crate::campaigns::registry::State::Deleted => {}
        Some(_) => return Err(ApiError::new(StatusCode::NOT_FOUND, format!("campaign {id} is already deleted"))),
        None => return Err(ApiError::new(StatusCode::NOT_FOUND, format!("campaign {id} is unknown"))),
    }
    let topic = &processor.settings.campaign_topic;
    let (partition, offset) = produce(processor, topic, &id.to_string(), None).await?;
    tracing::info!(campaign = id, "HTTP API: campaign tombstone published");
    Ok(json(
        StatusCode::ACCEPTED,
        &j!({ "ok": true, "campaign_id": id, "topic": topic, "partition": partition, "offset": offset }),
    ))
}

// ---------------------------------------------------------------------------------------------
// Events

async fn send_event(State(http): State<Http>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let processor = &http.processor;
    let body = read_body(&headers, body).await?;
    json_object(&body, "the event")?;
    // Keyed like the triggers: the player id as text (spec §1 recommends it).
    let event = processor.sandbox.parse_event(body.to_vec())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("the event is not valid: {e}")))?;
    let key = crate::events::evaluate::player_key(&event);
    let topic = &processor.settings.event_topic;
    let text = String::from_utf8_lossy(&body);
    let (partition, offset) = produce(processor, topic, &key, Some(text.trim().as_bytes())).await?;
    Ok(json(StatusCode::ACCEPTED, &j!({ "ok": true, "topic": topic, "partition": partition, "offset": offset })))
}

// ---------------------------------------------------------------------------------------------
// Information

async fn info(State(http): State<Http>) -> Response {
    let s = &http.processor.settings;
    let ready_reason = http.processor.health.not_ready();
    json(
        StatusCode::OK,
        &j!({
            "version": env!("CARGO_PKG_VERSION"),
            "instance": s.instance_id,
            "bootstrap_servers": s.bootstrap_servers,
            // Secrets (passwords, keys, JAAS and OAuth settings) as `***`.
            "kafka_properties": s.kafka.redacted(),
            "topics": {
                "events": s.event_topic, "campaigns": s.campaign_topic, "triggers": s.trigger_topic,
                "status": s.status_topic, "dead_letters": s.dlq_topic, "filter_logs": s.filter_log_topic,
            },
            "ready": ready_reason.is_none(),
            "ready_reason": ready_reason,
            "auth_required": !s.http_addr.ip().is_loopback(),
            "body_limit_bytes": BODY_LIMIT,
        }),
    )
}

async fn examples() -> Response {
    // As written in examples/ (field order included).
    #[derive(Serialize)]
    struct Examples<'a> {
        campaign: &'a RawValue,
        event: &'a RawValue,
    }
    let raw = |text: &'static str| -> &'static RawValue { serde_json::from_str(text.trim()).expect("the examples are JSON") };
    json(StatusCode::OK, &Examples { campaign: raw(EXAMPLE_CAMPAIGN), event: raw(EXAMPLE_EVENT) })
}

// ---------------------------------------------------------------------------------------------
// Triggers: server-sent events

/// How many of the latest triggers a new stream gets first (as `event: recent`), so the console's
/// feed shows the last triggers on open.
pub const RECENT_TRIGGERS: usize = 20;

/// A trigger on its way to the streams: replayed (`recent`, from before the stream's start) or
/// live.
#[derive(Clone)]
struct Item {
    recent: bool,
    text: Arc<str>,
}

/// One consumer of the triggers topic shared by every open stream: started with the first
/// stream, positioned [`RECENT_TRIGGERS`] records before the end of each partition (those come
/// as `recent`, the rest live), stopped a few seconds after the last stream closes (so an idle
/// console costs the cluster nothing). The hub keeps the latest [`RECENT_TRIGGERS`] triggers, and
/// a stream that opens later gets those first.
#[derive(Default)]
pub struct TriggerHub {
    sender: Mutex<Option<broadcast::Sender<Item>>>,
    /// The latest triggers; pushed and broadcast under this lock, so a new subscriber's snapshot
    /// and its receiver neither miss nor repeat one.
    recent: std::sync::Mutex<std::collections::VecDeque<Arc<str>>>,
}

impl TriggerHub {
    /// The latest triggers (oldest first) and a receiver of every trigger after them.
    async fn subscribe(self: &Arc<Self>, processor: &Arc<Processor>, shutdown: watch::Receiver<bool>) -> Result<(Vec<Arc<str>>, broadcast::Receiver<Item>)> {
        let mut sender = self.sender.lock().await;
        if let Some(tx) = sender.as_ref() {
            let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            return Ok((recent.iter().cloned().collect(), tx.subscribe()));
        }
        let (consumer, backlog_ends) = tail_consumer(processor).await?;
        let (tx, rx) = broadcast::channel(1024);
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).clear();
        *sender = Some(tx.clone());
        tokio::spawn(self.clone().pump(consumer, backlog_ends, tx, shutdown));
        Ok((Vec::new(), rx))
    }

    async fn pump(self: Arc<Self>, consumer: StreamConsumer, backlog_ends: BTreeMap<i32, i64>, tx: broadcast::Sender<Item>, mut shutdown: watch::Receiver<bool>) {
        let mut idle = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                m = consumer.recv() => match m {
                    Ok(m) => {
                        let text: Arc<str> = String::from_utf8_lossy(m.payload().unwrap_or_default()).into();
                        let recent = backlog_ends.get(&m.partition()).is_some_and(|end| m.offset() < *end);
                        let mut latest = self.recent.lock().unwrap_or_else(|p| p.into_inner());
                        latest.push_back(text.clone());
                        while latest.len() > RECENT_TRIGGERS {
                            latest.pop_front();
                        }
                        let _ = tx.send(Item { recent, text });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "tailing the triggers topic");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
                _ = idle.tick() => {
                    let mut sender = self.sender.lock().await;
                    if tx.receiver_count() == 0 {
                        *sender = None;
                        tracing::debug!("no trigger stream open: stopped tailing the triggers topic");
                        return;
                    }
                }
            }
        }
        *self.sender.lock().await = None;
    }
}

/// A consumer of every partition of the triggers topic, [`RECENT_TRIGGERS`] records before its
/// end; and each partition's end (records before it are `recent`).
async fn tail_consumer(processor: &Processor) -> Result<(StreamConsumer, BTreeMap<i32, i64>)> {
    let settings = processor.settings.clone();
    tokio::task::spawn_blocking(move || -> Result<(StreamConsumer, BTreeMap<i32, i64>)> {
        let topic = settings.trigger_topic.as_str();
        let consumer: StreamConsumer = crate::kafka::client_config(&settings, "console")
            .set("group.id", format!("rtcrm-console-{}", settings.instance_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "latest")
            .create()
            .context("creating the triggers consumer")?;
        let mut tpl = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for (partition, high) in crate::kafka::end_offsets(&consumer, topic)? {
            let (low, _) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)).unwrap_or((0, high));
            let from = (high - RECENT_TRIGGERS as i64).max(low).max(0);
            tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
            ends.insert(partition, high);
        }
        anyhow::ensure!(tpl.count() > 0, "the triggers topic `{topic}` has no partitions");
        consumer.assign(&tpl).with_context(|| format!("reading `{topic}`"))?;
        drop(tpl);
        Ok((consumer, ends))
    })
    .await
    .context("the triggers consumer panicked")?
}

/// `GET /api/triggers/stream`: the latest triggers first (`event: recent`, oldest first), then
/// every new one (`data:` lines of the default event type).
async fn trigger_stream(State(http): State<Http>) -> Result<Response, ApiError> {
    let mut shutdown = http.shutdown.clone();
    if *shutdown.borrow_and_update() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down"));
    }
    let (recent, rx) = http.hub.subscribe(&http.processor, shutdown.clone()).await.map_err(|e| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("tailing the triggers topic: {e:#}"))
    })?;
    let topic = http.processor.settings.trigger_topic.clone();
    let hello = futures_util::stream::once(async move {
        Ok::<_, Infallible>(SseEvent::default().comment(format!("tailing {topic}: the latest triggers (event: recent), then new ones")))
    });
    let replay = futures_util::stream::iter(recent.into_iter().map(|text| Ok(SseEvent::default().event("recent").data(&*text))));
    let triggers = futures_util::stream::unfold((rx, shutdown), |(mut rx, mut shutdown)| async move {
        tokio::select! {
            _ = shutdown.changed() => None,
            r = rx.recv() => match r {
                Ok(Item { recent: true, text }) => Some((Ok(SseEvent::default().event("recent").data(&*text)), (rx, shutdown))),
                Ok(Item { recent: false, text }) => Some((Ok(SseEvent::default().data(&*text)), (rx, shutdown))),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    Some((Ok(SseEvent::default().event("lagged").data(n.to_string())), (rx, shutdown)))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            },
        }
    });
    let mut response = Sse::new(hello.chain(replay).chain(triggers)).keep_alive(KeepAlive::default()).into_response();
    // Proxies must not buffer the stream.
    response.headers_mut().insert("x-accel-buffering", header::HeaderValue::from_static("no"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bodies_are_checked_with_a_message() {
        let e = json_object(b"{\"a\":", "the event").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.body["error"].as_str().unwrap().starts_with("the event is not valid JSON: "), "{:?}", e.body);
        let e = json_object(b"[1]", "the event").unwrap_err();
        assert!(e.body["error"].as_str().unwrap().contains("not an array"), "{:?}", e.body);
        let e = json_object(b"  ", "the event").unwrap_err();
        assert!(e.body["error"].as_str().unwrap().contains("empty"), "{:?}", e.body);
        assert!(json_object(b"{}", "the event").is_ok());
        assert!(parse_id("x").is_err());
        assert_eq!(parse_id("4711").unwrap(), 4711);
    }

    #[test]
    fn the_examples_are_json() {
        assert!(serde_json::from_str::<Value>(EXAMPLE_CAMPAIGN).is_ok() && serde_json::from_str::<Value>(EXAMPLE_EVENT).is_ok());
    }
}
