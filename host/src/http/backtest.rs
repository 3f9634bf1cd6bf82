//! The dry-run API (spec §13, issue 9): backtests as jobs, and explain.
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /api/backtest`, body `{"campaign": {...}, "from": TIME, "to": TIME?, "max_events": N?, "max_seconds": S?, "samples": K?}` | 202 and the job (below); 400 with the reason (campaign, filter with line and column, times, bounds); 429 while [`MAX_RUNNING`] jobs run |
//! | `GET /api/backtest` | `{"backtests": [job without its report, ...]}` |
//! | `GET /api/backtest/{id}` | the job; 404 when unknown (finished jobs are kept [`KEEP_FOR`]) |
//! | `DELETE /api/backtest/{id}` | a running job is cancelled (the answer waits for it to stop: `state` `cancelled`, with the counts so far); a finished one is forgotten |
//! | `POST /api/explain`, body: an event (a JSON object) | every campaign of the event's game with the check that decided ([`crate::dryrun::explain::Explanation`]) |
//!
//! A job: `{"id", "campaign_id", "state": "running" | "done" | "cancelled" | "failed", "started_at",
//! "progress": {"events", "fraction", "seconds"}, "report": <the report of `rtcrm campaign
//! backtest --json`> | null, "error": null | "..."}`.
//!
//! A campaign with controls (spec §12) is backtested with them, from empty per-player state: the
//! report counts triggers after the controls, control-group matches, what the cooldown and the
//! cap held back, matches still counting, inactivity firings and the timers still armed at the
//! end, and triggers per variant (see [`crate::dryrun::backtest::players`]). Explain decides what
//! does not depend on the player's stored state and names the controls that do.
//!
//! A backtest reads the processor's events topic with its own consumer (no group, nothing
//! committed, nothing produced) on `max(1, workers / 2)` threads of its own, so the event path
//! keeps at least half the cores. It is bounded: `max_events` (default [`DEFAULT_MAX_EVENTS`], at
//! most [`MAX_EVENTS`]) and `max_seconds` (default [`DEFAULT_MAX_SECONDS`], at most
//! [`MAX_SECONDS`]); a job that reaches a bound is `done` with `report.stopped` saying which.

use crate::campaigns::definition::{kind_of, CampaignDef};
use crate::campaigns::loader::FilterRejection;
use crate::campaigns::registry::LiveCampaign;
use crate::dryrun::backtest::interval::{format_time, parse_time_at, Interval};
use crate::dryrun::backtest::report::{Report, Stopped};
use crate::dryrun::backtest::source::Source;
use crate::dryrun::backtest::{Progress, Spec, DEFAULT_SAMPLES};
use crate::http::api::{compile_error, json_object, read_body};
use crate::http::{json, ApiError, Http};
use crate::telemetry::metrics::CampaignTelemetry;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use chrono::Utc;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Backtests running at once (each reads the events topic and evaluates on its own threads).
pub const MAX_RUNNING: usize = 2;
/// Events a backtest reads unless the request says otherwise.
pub const DEFAULT_MAX_EVENTS: u64 = 1_000_000;
/// The most a request may ask for.
pub const MAX_EVENTS: u64 = 20_000_000;
/// Seconds a backtest runs unless the request says otherwise.
pub const DEFAULT_MAX_SECONDS: u64 = 30;
/// The most a request may ask for.
pub const MAX_SECONDS: u64 = 600;
/// How long a finished job stays readable.
pub const KEEP_FOR: Duration = Duration::from_secs(15 * 60);
/// Finished jobs kept at most (the oldest go first).
const KEEP_FINISHED: usize = 20;
/// Explanations computed at once (each may run up to 100 filters).
const EXPLAIN_SLOTS: usize = 2;
/// How long `DELETE` waits for a cancelled job to stop.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// The backtest jobs and the explain slots of one server.
pub struct DryRuns {
    jobs: Mutex<BTreeMap<u64, Arc<Job>>>,
    next_id: AtomicU64,
    explain: Semaphore,
}

impl Default for DryRuns {
    fn default() -> Self {
        DryRuns { jobs: Mutex::default(), next_id: AtomicU64::new(1), explain: Semaphore::new(EXPLAIN_SLOTS) }
    }
}

/// One backtest job.
struct Job {
    id: u64,
    campaign_id: i64,
    started: Instant,
    started_at: String,
    progress: Progress,
    outcome: Mutex<Option<(Instant, Result<Report, String>)>>,
}

#[derive(Serialize)]
struct ProgressView {
    /// Events decided so far.
    events: u64,
    /// How far the topic range is, 0 to 1 (null while unknown).
    fraction: Option<f64>,
    seconds: f64,
}

#[derive(Serialize)]
struct JobView<'a> {
    id: String,
    campaign_id: i64,
    state: &'static str,
    started_at: &'a str,
    progress: ProgressView,
    report: Option<&'a Report>,
    error: Option<&'a str>,
}

impl Job {
    fn finished(&self) -> Option<Instant> {
        self.outcome.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(at, _)| *at)
    }

    /// The JSON view (`with_report`: include the report).
    fn view(&self, with_report: bool) -> Value {
        let outcome = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        let (state, report, error) = match outcome.as_ref().map(|(_, r)| r) {
            None => ("running", None, None),
            Some(Ok(report)) if report.stopped == Some(Stopped::Cancelled) => ("cancelled", Some(report), None),
            Some(Ok(report)) => ("done", Some(report), None),
            Some(Err(e)) => ("failed", None, Some(e.as_str())),
        };
        let seconds = outcome.as_ref().map_or_else(|| self.started.elapsed(), |(at, _)| at.duration_since(self.started)).as_secs_f64();
        let view = JobView {
            id: self.id.to_string(),
            campaign_id: self.campaign_id,
            state,
            started_at: &self.started_at,
            progress: ProgressView { events: self.progress.events.load(Ordering::Relaxed), fraction: self.progress.fraction(), seconds },
            report: report.filter(|_| with_report),
            error,
        };
        serde_json::to_value(view).expect("a job view serializes")
    }
}

impl DryRuns {
    /// Forgets finished jobs past [`KEEP_FOR`] or beyond [`KEEP_FINISHED`]; returns how many run.
    fn tidy(&self) -> usize {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.retain(|_, j| j.finished().is_none_or(|at| at.elapsed() < KEEP_FOR));
        let finished: Vec<u64> = jobs.iter().filter(|(_, j)| j.finished().is_some()).map(|(id, _)| *id).collect();
        for id in finished.iter().take(finished.len().saturating_sub(KEEP_FINISHED)) {
            jobs.remove(id);
        }
        jobs.values().filter(|j| j.finished().is_none()).count()
    }

    fn get(&self, id: &str) -> Result<Arc<Job>, ApiError> {
        let unknown = || ApiError::new(StatusCode::NOT_FOUND, format!("backtest `{id}` is unknown (finished backtests are kept {} min)", KEEP_FOR.as_secs() / 60));
        let n: u64 = id.trim().parse().map_err(|_| unknown())?;
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).get(&n).cloned().ok_or_else(unknown)
    }
}

pub fn routes() -> Router<Http> {
    Router::new()
        .route("/api/backtest", post(start).get(list))
        .route("/api/backtest/{id}", get(read).delete(cancel))
        .route("/api/explain", post(explain))
}

/// A request field as an unsigned integer within `1..=max`, or `default`.
fn bound(request: &serde_json::Map<String, Value>, name: &str, default: u64, max: u64) -> Result<u64, ApiError> {
    match request.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::new(StatusCode::BAD_REQUEST, format!("`{name}` {v} must be an integer from 1 to {max}"))),
        },
    }
}

/// A request field as a time (see `TIME_FORMS`), or `default` when absent.
fn time(request: &serde_json::Map<String, Value>, name: &str, default: Option<&str>) -> Result<Option<chrono::DateTime<Utc>>, ApiError> {
    let text = match request.get(name) {
        None | Some(Value::Null) => match default {
            Some(d) => d.to_owned(),
            None => return Ok(None),
        },
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("`{name}` must be a time string, not {}", kind_of(other)))),
    };
    parse_time_at(&text, Utc::now()).map(Some).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("`{name}`: {e}")))
}

async fn start(State(http): State<Http>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let body = read_body(&headers, body).await?;
    let request = json_object(&body, "the backtest request")?;
    let campaign = match request.get("campaign") {
        // As sent (field order included): the sample triggers echo it.
        Some(Value::Object(_)) => serde_json::from_slice::<BTreeMap<String, Box<serde_json::value::RawValue>>>(&body)
            .ok()
            .and_then(|mut fields| fields.remove("campaign"))
            .map(|raw| raw.get().to_owned())
            .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "`campaign` could not be read"))?,
        Some(other) => return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("`campaign` must be the campaign JSON object, not {}", kind_of(other)))),
        None => return Err(ApiError::new(StatusCode::BAD_REQUEST, "`campaign` is missing: send {\"campaign\": {...}, \"from\": \"now-7d\"}")),
    };
    let from = time(&request, "from", Some("now-7d"))?.expect("defaulted");
    let interval = Interval::new(from, time(&request, "to", None)?).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let max_events = bound(&request, "max_events", DEFAULT_MAX_EVENTS, MAX_EVENTS)?;
    let max_seconds = bound(&request, "max_seconds", DEFAULT_MAX_SECONDS, MAX_SECONDS)?;
    let samples = bound(&request, "samples", DEFAULT_SAMPLES as u64, 20)? as usize;
    let def = CampaignDef::parse(None, campaign.as_bytes()).map_err(|r| {
        let e = ApiError::new(StatusCode::BAD_REQUEST, format!("campaign: {}", r.reason));
        match r.id {
            Some(id) => e.with("campaign_id", id),
            None => e,
        }
    })?;
    let processor = http.processor.clone();
    let (sandbox, filter, stateful) = (processor.sandbox.clone(), def.filter.clone(), def.controls.state.is_some());
    let compiled = tokio::task::spawn_blocking(move || crate::campaigns::loader::compile_filter(&sandbox, &filter, stateful))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the compiler failed: {e}")))?
        .map_err(|rejection| match rejection {
            FilterRejection::Js(err) => {
                let detail = compile_error(&err);
                ApiError::new(StatusCode::BAD_REQUEST, format!("filter: {}", crate::campaigns::loader::describe(&err)))
                    .with("campaign_id", def.id)
                    .with("line", detail["line"].clone())
                    .with("column", detail["column"].clone())
            }
            wasm @ FilterRejection::Wasm(_) => ApiError::new(StatusCode::BAD_REQUEST, wasm.to_string()).with("campaign_id", def.id),
        })?;
    let dry = http.dry.clone();
    let job = {
        let running = dry.tidy();
        if running >= MAX_RUNNING {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("{running} backtests are running already; wait for one to finish or cancel it (DELETE /api/backtest/{{id}})"),
            ));
        }
        let id = dry.next_id.fetch_add(1, Ordering::Relaxed);
        let job = Arc::new(Job {
            id,
            campaign_id: def.id,
            started: Instant::now(),
            started_at: format_time(Utc::now()),
            progress: Progress::default(),
            outcome: Mutex::new(None),
        });
        dry.jobs.lock().unwrap_or_else(|p| p.into_inner()).insert(id, job.clone());
        job
    };
    let limits = processor.sandbox.limits().lowered(def.fuel, def.memory_mb);
    let id = def.id;
    let spec = Spec {
        campaign: Arc::new(LiveCampaign::new(def, compiled, limits, CampaignTelemetry::detached(id))),
        clock: processor.settings.clock,
        threads: (processor.settings.workers / 2).max(1),
        max_events: Some(max_events),
        max_duration: Some(Duration::from_secs(max_seconds)),
        samples,
    };
    let source = Source::Topic { settings: Box::new(processor.settings.clone()), interval };
    let worker = job.clone();
    std::thread::Builder::new()
        .name(format!("rtcrm-backtest-{}", job.id))
        .spawn(move || {
            let result = crate::dryrun::backtest::run(&processor.sandbox, &spec, &source, &worker.progress).map_err(|e| e.to_string());
            match &result {
                Ok(r) => tracing::info!(backtest = worker.id, campaign = id, events = r.events_read, triggers = r.triggers, stopped = ?r.stopped, "HTTP API: backtest finished"),
                Err(e) => tracing::warn!(backtest = worker.id, campaign = id, error = %e, "HTTP API: backtest failed"),
            }
            *worker.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), result));
        })
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("starting the backtest thread: {e}")))?;
    tracing::info!(backtest = job.id, campaign = id, "HTTP API: backtest started");
    Ok(json(StatusCode::ACCEPTED, &job.view(false)))
}

async fn list(State(http): State<Http>) -> Response {
    http.dry.tidy();
    let jobs: Vec<Arc<Job>> = http.dry.jobs.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
    let views: Vec<Value> = jobs.iter().map(|j| j.view(false)).collect();
    json(StatusCode::OK, &serde_json::json!({ "backtests": views }))
}

async fn read(State(http): State<Http>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, &http.dry.get(&id)?.view(true)))
}

async fn cancel(State(http): State<Http>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job = http.dry.get(&id)?;
    if job.finished().is_some() {
        http.dry.jobs.lock().unwrap_or_else(|p| p.into_inner()).remove(&job.id);
        return Ok(json(StatusCode::OK, &job.view(true)));
    }
    job.progress.cancel();
    tracing::info!(backtest = job.id, "HTTP API: backtest cancelled");
    let asked = Instant::now();
    while job.finished().is_none() && asked.elapsed() < CANCEL_WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(json(StatusCode::OK, &job.view(true)))
}

async fn explain(State(http): State<Http>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let body = read_body(&headers, body).await?;
    json_object(&body, "the event")?;
    let event = http.processor.sandbox.parse_event(body.to_vec())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("the event is not valid: {e}")))?;
    if !http.processor.health.campaigns_loaded() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not ready: the campaigns topic is still being read (see /readyz); explain again in a moment"));
    }
    let _slot = http.dry.explain.acquire().await.map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
    let processor = http.processor.clone();
    let explanation = tokio::task::spawn_blocking(move || {
        crate::dryrun::explain::explain(&processor.sandbox, &processor.registry, &event, processor.settings.clock)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("explaining failed: {e}")))?;
    Ok(json(StatusCode::OK, &explanation))
}
