//! The web dashboard (docs/design.md §2, Dashboard): a page that ships in the binary
//! (`coordinator/web/`, no CDN) and a small JSON API it reads, served on the coordinator's
//! HTTP listener beside `/metrics`:
//!
//! - `GET /api/jobs`: every job, newest first, one line each;
//! - `GET /api/events`: server-sent events for the job list: a `list` event with the job
//!   lines and the workers at once, again whenever any job changes, and every 5 s (the
//!   workers' heartbeat ages); it ends when the coordinator stops or loses leadership;
//! - `GET /api/jobs/{id}`: one job with its curves, rounds, confusion matrix and selection;
//! - `GET /api/jobs/{id}/events`: server-sent events, one `job` event with the same JSON each
//!   time the job changes (the first at once), ending after the job's final state;
//! - `GET /api/workers`: the workers with their slots and heartbeat age.
//!
//! With tokens, every `/api/` call needs a bearer token that may use the job API (submitter
//! or admin), as `feral` does; the page asks for it and sends it in `authorization`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use feral_common::ids::JobId;
use feral_common::metrics::MetricsSummary;
use feral_common::spec::JobSpec;
use feral_common::time::now_ms;
use futures::{Stream, StreamExt};
use serde::Serialize;

use crate::auth::{self, Api, Tokens};
use crate::control::{ControlPlane, WorkerView};
use crate::error::CoordinatorError;
use crate::leader::Role;
use crate::model::{JobRecord, JobResult, JobState, TaskState, WorkerState};

const INDEX_HTML: &str = include_str!("../web/index.html");
const DASHBOARD_JS: &str = include_str!("../web/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../web/dashboard.css");

#[derive(Clone)]
pub struct Dashboard {
    pub role: Role,
    pub tokens: Option<Arc<Tokens>>,
    /// Becomes true when the server shuts down: open event streams end then (as the gRPC
    /// WatchJob's do), so that a draining server does not wait on them.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// The dashboard's routes, to merge into the HTTP router.
pub fn routes(dashboard: Dashboard) -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/dashboard.js", get(|| async { asset("text/javascript; charset=utf-8", DASHBOARD_JS) }))
        .route("/dashboard.css", get(|| async { asset("text/css; charset=utf-8", DASHBOARD_CSS) }))
        .route("/api/jobs", get(list_jobs))
        .route("/api/events", get(list_events))
        .route("/api/jobs/{id}", get(get_job))
        .route("/api/jobs/{id}/events", get(job_events))
        .route("/api/workers", get(list_workers))
        .with_state(dashboard)
        .layer(axum::middleware::map_response(guarded))
}

/// What every answer carries: the page runs only its own script and style (no inline
/// code, so a name that slipped past escaping still cannot run), cannot be framed by
/// another site (clickjacking), and its types are not sniffed.
async fn guarded(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")], body).into_response()
}

/// An API error: its status and a one-line reason, as JSON `{"error": "..."}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json(self.0, &serde_json::json!({ "error": self.1 }))
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let code = match status.code() {
            tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
            tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, status.message().to_owned())
    }
}

impl From<CoordinatorError> for ApiError {
    /// The HTTP status of a domain error (the gRPC adapters map the same errors to gRPC
    /// codes in `grpc::to_status`).
    fn from(error: CoordinatorError) -> Self {
        let code = match &error {
            CoordinatorError::InvalidArgument(_) | CoordinatorError::InvalidSpec(_) | CoordinatorError::InvalidMessage(_) => StatusCode::BAD_REQUEST,
            CoordinatorError::JobNotFound(_) | CoordinatorError::WorkerNotFound(_) => StatusCode::NOT_FOUND,
            CoordinatorError::NotAssigned { .. } | CoordinatorError::NotResumable(_) => StatusCode::CONFLICT,
            CoordinatorError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            CoordinatorError::CorruptRecord { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, error.to_string())
    }
}

fn json(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => (status, [(CONTENT_TYPE, "application/json"), (CACHE_CONTROL, "no-store")], body).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the answer: {error}")).into_response(),
    }
}

impl Dashboard {
    /// The control plane and the caller, for a caller whose token may use the job API
    /// (who then sees what the job API shows it: its own jobs, or every job for an admin).
    fn control(&self, headers: &HeaderMap) -> Result<(Arc<ControlPlane>, auth::Caller), ApiError> {
        let header = headers.get(AUTHORIZATION).map(|value| value.to_str().unwrap_or(""));
        let caller = auth::authorize(self.tokens.as_deref(), Api::Jobs, header)?;
        Ok((self.role.control()?, caller))
    }
}

impl Dashboard {
    /// `events` as a server-sent event stream that ends when the server shuts down (as the
    /// gRPC WatchJob's do), so that a draining server does not wait on it.
    fn until_stopped<S: Stream<Item = Result<Event, Infallible>> + Send + 'static>(&self, events: S) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
        let mut stopping = self.stopping.clone();
        let stopped = async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        };
        Sse::new(events.take_until(stopped)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
    }
}

fn job_id(text: &str) -> Result<JobId, ApiError> {
    if text.is_empty() || text.len() > 128 || !text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(ApiError(StatusCode::BAD_REQUEST, format!("{text:?} is not a job id")));
    }
    Ok(JobId::new(text))
}

/// The newest jobs the caller may see, at most a page of the job API's size.
async fn job_lines(control: &ControlPlane, caller: &auth::Caller) -> Vec<JobLine> {
    let (jobs, _) = control.jobs_page(caller.scope(), None, crate::grpc::MAX_PAGE_SIZE as usize).await;
    jobs.iter().map(JobLine::of).collect()
}

async fn worker_lines(control: &ControlPlane) -> Vec<WorkerLine> {
    let now = now_ms();
    control.workers().await.iter().map(|w| WorkerLine::of(w, now)).collect()
}

async fn list_jobs(State(dashboard): State<Dashboard>, headers: HeaderMap) -> Result<Response, ApiError> {
    let (control, caller) = dashboard.control(&headers)?;
    Ok(json(StatusCode::OK, &job_lines(&control, &caller).await))
}

/// What one `list` event carries.
#[derive(Serialize)]
struct ListView {
    jobs: Vec<JobLine>,
    workers: Vec<WorkerLine>,
}

async fn list_events(State(dashboard): State<Dashboard>, headers: HeaderMap) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let (control, caller) = dashboard.control(&headers)?;
    let changes = control.job_changes();
    // The list at once, then after each change (changes in between are folded into one),
    // or after 5 s without one; it ends when the control plane goes (leadership lost).
    let events = futures::stream::unfold((control, caller, changes, true), |(control, caller, mut changes, first)| async move {
        if !first {
            tokio::select! {
                changed = changes.changed() => changed.ok()?,
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
        let list = ListView { jobs: job_lines(&control, &caller).await, workers: worker_lines(&control).await };
        let event = match serde_json::to_string(&list) {
            Ok(data) => Event::default().event("list").data(data),
            Err(error) => Event::default().event("error").data(error.to_string()),
        };
        Some((Ok(event), (control, caller, changes, false)))
    });
    Ok(dashboard.until_stopped(events))
}

async fn get_job(State(dashboard): State<Dashboard>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, ApiError> {
    let (control, caller) = dashboard.control(&headers)?;
    let job = control.job(caller.scope(), &job_id(&id)?).await?;
    Ok(json(StatusCode::OK, &JobView::of(&job)))
}

async fn job_events(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let (control, caller) = dashboard.control(&headers)?;
    let receiver = control.watch(caller.scope(), &job_id(&id)?).await?;
    // The current state at once, then every change; the stream ends after a final state.
    let events = futures::stream::unfold((receiver, true, false), |(mut receiver, first, done)| async move {
        if done || (!first && receiver.changed().await.is_err()) {
            return None;
        }
        let job = receiver.borrow_and_update().clone();
        let event = match serde_json::to_string(&JobView::of(&job)) {
            Ok(data) => Event::default().event("job").data(data),
            Err(error) => Event::default().event("error").data(error.to_string()),
        };
        Some((Ok(event), (receiver, false, job.state.is_final())))
    });
    Ok(dashboard.until_stopped(events))
}

async fn list_workers(State(dashboard): State<Dashboard>, headers: HeaderMap) -> Result<Response, ApiError> {
    let (control, _) = dashboard.control(&headers)?;
    Ok(json(StatusCode::OK, &worker_lines(&control).await))
}

/// A job's state as one word (its one name, as `/metrics` spells it), and the reason of a
/// failed or cancelled one.
fn state_of(state: &JobState) -> (&'static str, Option<String>) {
    let reason = match state {
        JobState::Failed { reason } | JobState::Cancelled { reason } => Some(reason.clone()),
        _ => None,
    };
    (state.name(), reason)
}

/// One row of the job list.
#[derive(Debug, Serialize)]
struct JobLine {
    id: String,
    name: String,
    state: &'static str,
    round: u32,
    /// Pseudo-labelling rounds the spec plans after the teacher.
    rounds_planned: u32,
    epoch: Option<u32>,
    epochs_total: u32,
    macro_f1: Option<f64>,
    created_at_ms: u64,
    /// When it ended (its last change), once final: its duration is this less `created_at_ms`.
    ended_at_ms: Option<u64>,
    /// The last epoch's training throughput, every rank together.
    images_per_second: Option<f64>,
    /// Training time left ([`JobRecord::training_seconds_left`]).
    eta_seconds: Option<f64>,
}

impl JobLine {
    fn of(job: &JobRecord) -> Self {
        let last = job.epochs.last();
        let macro_f1 = job.result.as_ref().map(|r| r.validation.macro_f1).or(last.map(|e| e.validation.macro_f1));
        Self {
            id: job.id.to_string(),
            name: job.spec.name.clone(),
            state: state_of(&job.state).0,
            round: job.round.0,
            rounds_planned: job.rounds_planned(),
            epoch: last.filter(|e| e.round == job.round).map(|e| e.epoch),
            epochs_total: job.epochs_total,
            macro_f1,
            created_at_ms: job.created_at_ms,
            ended_at_ms: job.state.is_final().then_some(job.updated_at_ms),
            images_per_second: last.map(|e| e.images_per_second),
            eta_seconds: job.training_seconds_left(),
        }
    }
}

/// One epoch of the curves.
#[derive(Debug, Serialize)]
struct EpochPoint {
    round: u32,
    epoch: u32,
    train_loss: f64,
    train_accuracy: f64,
    val_accuracy: f64,
    val_macro_f1: f64,
    seconds: f64,
    images_per_second: f64,
}

/// Validation (and test) metrics of one model.
#[derive(Debug, Serialize)]
struct Evaluation {
    accuracy: f64,
    macro_f1: f64,
    per_class_f1: Vec<f64>,
    /// Row-major counts, true class by row.
    confusion: Vec<u64>,
}

impl Evaluation {
    fn of(metrics: &MetricsSummary) -> Self {
        Self { accuracy: metrics.accuracy, macro_f1: metrics.macro_f1, per_class_f1: metrics.per_class_f1.clone(), confusion: metrics.confusion.clone() }
    }
}

/// One round of the method: its model's metrics and the pseudo-labels it selected.
#[derive(Debug, Serialize)]
struct RoundView {
    round: u32,
    validation: Option<Evaluation>,
    test: Option<Evaluation>,
    /// Pseudo-labels the round's selection kept, by class; empty for the teacher.
    selected_per_class: Vec<u64>,
    selected: u64,
    pool: u64,
    /// Of the selected pseudo-labels with a hidden true label, the share that was right.
    selection_precision: Option<f64>,
    /// Student rounds trained online: share of pool labels that passed, and their precision.
    online_rate: Option<f64>,
    online_precision: Option<f64>,
    class_weights: Vec<f64>,
}

/// A job as the dashboard draws it.
#[derive(Debug, Serialize)]
struct JobView {
    #[serde(flatten)]
    line: JobLine,
    reason: Option<String>,
    /// Why the last failed attempt failed, while the job is not final (it retries).
    last_failure: Option<String>,
    /// When the next attempt may start, while one waits out its back-off.
    retry_at_ms: Option<u64>,
    updated_at_ms: u64,
    class_names: Vec<String>,
    epochs: Vec<EpochPoint>,
    rounds: Vec<RoundView>,
    /// The latest evaluation: the final model's once the job succeeded, else the last epoch's.
    latest: Option<Evaluation>,
    /// What `latest` is the evaluation of, for its panels' titles.
    latest_of: String,
    /// What looks wrong with the saved model (it predicts one class for almost everything).
    warnings: Vec<String>,
    best_round: Option<u32>,
    test: Option<Evaluation>,
    model_path: Option<String>,
    running_tasks: Vec<String>,
    /// The spec as the coordinator read it (every field, defaults filled in), for the
    /// compare view's differing fields, and as the user wrote it.
    spec: JobSpec,
    spec_toml: String,
    /// What the prepare step found: labelled, validation and unlabelled images.
    train_samples: Option<u64>,
    val_samples: Option<u64>,
    pool_samples: Option<u64>,
}

impl JobView {
    fn of(job: &JobRecord) -> Self {
        let class_names = job.dataset.as_ref().map(|d| d.class_names.clone()).unwrap_or_default();
        let epochs = job
            .epochs
            .iter()
            .map(|e| EpochPoint {
                round: e.round.0,
                epoch: e.epoch,
                train_loss: e.train_loss,
                train_accuracy: e.train_accuracy,
                val_accuracy: e.validation.accuracy,
                val_macro_f1: e.validation.macro_f1,
                seconds: e.seconds,
                images_per_second: e.images_per_second,
            })
            .collect();
        let rounds = job
            .rounds
            .iter()
            .map(|r| {
                let selection = r.selection.as_ref();
                let online = r.model.as_ref().and_then(|m| m.online);
                RoundView {
                    round: r.round,
                    validation: r.model.as_ref().map(|m| Evaluation::of(&m.validation)),
                    test: r.model.as_ref().and_then(|m| m.test.as_ref()).map(Evaluation::of),
                    selected_per_class: selection.map(|s| s.selected_per_class.clone()).unwrap_or_default(),
                    selected: selection.map_or(0, |s| s.selected),
                    pool: selection.map_or(0, |s| s.pool),
                    selection_precision: selection.and_then(|s| s.precision()),
                    online_rate: online.filter(|a| a.seen > 0).map(|a| a.masked_in as f64 / a.seen as f64),
                    online_precision: online.and_then(|a| a.precision()),
                    class_weights: r.class_weights.clone(),
                }
            })
            .collect();
        let (latest, latest_of) = match (&job.result, job.epochs.last()) {
            (Some(result), _) => (Some(Evaluation::of(&result.validation)), format!("the saved model, round {}", result.best_round)),
            (None, Some(e)) => (Some(Evaluation::of(&e.validation)), format!("round {} epoch {}", e.round.0, e.epoch)),
            (None, None) => (None, String::new()),
        };
        let warnings = job.result.as_ref().map(JobResult::warnings).unwrap_or_default();
        let running_tasks = job.tasks.iter().filter(|t| matches!(t.state, TaskState::Assigned { .. })).map(|t| t.key(&job.id).to_string()).collect();
        Self {
            line: JobLine::of(job),
            reason: state_of(&job.state).1,
            last_failure: job.last_failure.clone().filter(|_| !job.state.is_final()),
            retry_at_ms: job.retry_at_ms(),
            updated_at_ms: job.updated_at_ms,
            class_names: job.result.as_ref().map(|r| r.class_names.clone()).unwrap_or(class_names),
            epochs,
            rounds,
            latest,
            latest_of,
            warnings,
            best_round: job.result.as_ref().map(|r| r.best_round),
            test: job.result.as_ref().and_then(|r| r.test.as_ref()).map(Evaluation::of),
            model_path: job.result.as_ref().map(|r| r.model_path.clone()),
            running_tasks,
            spec: job.spec.clone(),
            spec_toml: job.spec_toml.clone(),
            train_samples: job.dataset.as_ref().map(|d| d.train_samples),
            val_samples: job.dataset.as_ref().map(|d| d.val_samples),
            pool_samples: job.dataset.as_ref().map(|d| d.unlabeled_shards.iter().map(|s| s.samples).sum()),
        }
    }
}

/// One worker with its slots and how long ago it was heard from.
#[derive(Debug, Serialize)]
struct WorkerLine {
    id: String,
    hostname: String,
    state: &'static str,
    slots: Vec<String>,
    running: Vec<String>,
    heartbeat_age_s: f64,
}

impl WorkerLine {
    fn of(worker: &WorkerView, now_ms: u64) -> Self {
        Self {
            id: worker.record.id.to_string(),
            hostname: worker.record.hostname.clone(),
            state: match worker.record.state {
                WorkerState::Live => "live",
                WorkerState::Lost => "lost",
            },
            slots: worker.record.slots.iter().map(|s| s.device.to_string()).collect(),
            running: worker.running.iter().map(|t| t.to_string()).collect(),
            heartbeat_age_s: now_ms.saturating_sub(worker.last_heartbeat_ms) as f64 / 1000.0,
        }
    }
}
