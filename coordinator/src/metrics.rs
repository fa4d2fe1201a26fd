//! The coordinator's Prometheus metrics (crate `prometheus-client`; served at `/metrics` by
//! [`crate::http`]). Nothing here is global: [`Metrics::register`] puts them in the registry
//! its caller passes in.
//!
//! Counters and histograms move as things happen: tasks by kind as the control plane
//! assigns, finishes and fails them, job phases as jobs leave them, every gRPC call
//! ([`RpcTimerLayer`]) and every store write ([`MeteredStore`]). Gauges of state (jobs and
//! workers by state, slots, each running job's round, epoch, macro-F1 and images/s) are
//! set from a [`Census`] of the control plane when they are scraped.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use feral_common::ids::JobId;
use feral_common::task::TaskKey;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tonic::codegen::http;

use crate::model::{JobRecord, JobState, TaskState};
use crate::store::{Store, StoreError, Write};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabel {
    pub job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabel {
    pub job: String,
    pub reason: String,
}

type Seconds = Family<KindLabel, Histogram, fn() -> Histogram>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Every job state, by the name its metrics carry.
pub const JOB_STATES: [&str; 8] = ["queued", "preparing", "training", "pseudo_labeling", "selecting", "succeeded", "failed", "cancelled"];

/// The gRPC methods Feral serves; a call to any other path counts as `unknown` (so a client
/// cannot grow the label set).
const RPC_METHODS: [&str; 13] = [
    "SubmitJob",
    "GetJob",
    "ListJobs",
    "CancelJob",
    "ResumeJob",
    "WatchJob",
    "ListWorkers",
    "Register",
    "Heartbeat",
    "ReportProgress",
    "FinishTask",
    "FailTask",
    "JoinGang",
];

pub fn state_name(state: &JobState) -> &'static str {
    state.name()
}

/// What the state gauges show, counted by the control plane under its lock.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Census {
    pub jobs_by_state: HashMap<&'static str, u64>,
    pub live_workers: u64,
    pub lost_workers: u64,
    /// Device slots of live workers, and how many of them hold a task.
    pub slots: u64,
    pub busy_slots: u64,
    pub running: Vec<RunningJob>,
}

/// A job that is not final, as the per-job gauges show it.
#[derive(Clone, Debug, PartialEq)]
pub struct RunningJob {
    pub id: JobId,
    pub round: u32,
    pub epoch: u32,
    /// Of the last epoch reported (none before the first).
    pub macro_f1: Option<f64>,
    pub images_per_second: Option<f64>,
    /// Why its last failed attempt failed, while it waits to retry or retries.
    pub last_failure: Option<String>,
}

fn seconds_buckets() -> Histogram {
    // 1 ms to about 9 hours.
    Histogram::new(exponential_buckets(0.001, 2.0, 25))
}

fn rpc_buckets() -> Histogram {
    // 50 µs to about 13 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 19))
}

pub struct Metrics {
    jobs: Family<StateLabel, Gauge>,
    workers: Family<StateLabel, Gauge>,
    slots: Family<StateLabel, Gauge>,
    tasks_started: Family<KindLabel, Counter>,
    tasks_finished: Family<KindLabel, Counter>,
    tasks_failed: Family<KindLabel, Counter>,
    task_seconds: Seconds,
    phase_seconds: Family<PhaseLabel, Histogram, fn() -> Histogram>,
    rpc_seconds: Family<MethodLabel, Histogram, fn() -> Histogram>,
    store_write_seconds: Histogram,
    job_round: Family<JobLabel, Gauge>,
    job_epoch: Family<JobLabel, Gauge>,
    job_macro_f1: Family<JobLabel, FloatGauge>,
    job_images_per_second: Family<JobLabel, FloatGauge>,
    job_last_failure: Family<FailureLabel, Gauge>,
    connections_refused: Family<ListenerLabel, Counter>,
    /// When each assigned task started, and when each job entered its phase (ms); only
    /// what this process saw happen (a restarted coordinator times what follows).
    clocks: Mutex<Clocks>,
}

#[derive(Default)]
struct Clocks {
    tasks: HashMap<TaskKey, u64>,
    phases: HashMap<JobId, (&'static str, u64)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            jobs: Family::default(),
            workers: Family::default(),
            slots: Family::default(),
            tasks_started: Family::default(),
            tasks_finished: Family::default(),
            tasks_failed: Family::default(),
            task_seconds: Family::new_with_constructor(seconds_buckets),
            phase_seconds: Family::new_with_constructor(seconds_buckets),
            rpc_seconds: Family::new_with_constructor(rpc_buckets),
            store_write_seconds: rpc_buckets(),
            job_round: Family::default(),
            job_epoch: Family::default(),
            job_macro_f1: Family::default(),
            job_images_per_second: Family::default(),
            job_last_failure: Family::default(),
            connections_refused: Family::default(),
            clocks: Mutex::default(),
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Adds every metric to `registry` (under the names in the README).
    pub fn register(&self, registry: &mut Registry) {
        let feral = registry.sub_registry_with_prefix("feral");
        feral.register("jobs", "Jobs by state", self.jobs.clone());
        feral.register("workers", "Registered workers by state (live or lost)", self.workers.clone());
        feral.register("slots", "Device slots of live workers, free or busy", self.slots.clone());
        feral.register("tasks_started", "Tasks assigned to a worker, by kind", self.tasks_started.clone());
        feral.register("tasks_finished", "Tasks that finished, by kind", self.tasks_finished.clone());
        feral.register("tasks_failed", "Tasks that failed, by kind", self.tasks_failed.clone());
        feral.register_with_unit("task_duration", "From assignment to finish, by task kind", Unit::Seconds, self.task_seconds.clone());
        feral.register_with_unit("job_phase_duration", "Time jobs spent in a phase before leaving it", Unit::Seconds, self.phase_seconds.clone());
        feral.register_with_unit("rpc_duration", "gRPC calls, from request to response headers, by method", Unit::Seconds, self.rpc_seconds.clone());
        feral.register_with_unit("store_write_duration", "Writes (batches) to the store", Unit::Seconds, self.store_write_seconds.clone());
        feral.register("job_round", "Round of each job that is not final", self.job_round.clone());
        feral.register("job_epoch", "Last reported epoch of each job that is not final", self.job_epoch.clone());
        feral.register("job_validation_macro_f1", "Validation macro-F1 of each running job's last epoch", self.job_macro_f1.clone());
        feral.register("job_images_per_second", "Training images per second of each running job's last epoch (all ranks)", self.job_images_per_second.clone());
        feral.register(
            "job_last_failure",
            "1 for each running job one of whose attempts failed, labelled with the last failure's reason",
            self.job_last_failure.clone(),
        );
        feral.register(
            "connections_refused",
            "Connections a listener closed at once because it held its limit of open connections, by listener (grpc, http)",
            self.connections_refused.clone(),
        );
    }

    /// The counter of connections `listener` refused.
    pub fn connections_refused(&self, listener: &'static str) -> Counter {
        self.connections_refused.get_or_create(&ListenerLabel { listener }).clone()
    }

    /// Counts what changed from `old` (absent for a new job) to `new`: tasks assigned,
    /// finished or failed, and a phase left.
    pub fn job_changed(&self, old: Option<&JobRecord>, new: &JobRecord, now_ms: u64) {
        let mut clocks = self.clocks.lock().unwrap_or_else(|p| p.into_inner());
        for task in &new.tasks {
            let key = task.key(&new.id);
            let before = old.and_then(|job| job.task(&key)).map(|t| &t.state);
            if before == Some(&task.state) {
                continue;
            }
            let kind = KindLabel { kind: task.kind.name() };
            match &task.state {
                TaskState::Assigned { .. } => {
                    self.tasks_started.get_or_create(&kind).inc();
                    clocks.tasks.insert(key, now_ms);
                }
                TaskState::Finished => {
                    self.tasks_finished.get_or_create(&kind).inc();
                    if let Some(started) = clocks.tasks.remove(&key) {
                        self.task_seconds.get_or_create(&kind).observe(now_ms.saturating_sub(started) as f64 / 1000.0);
                    }
                }
                TaskState::Failed { .. } => {
                    self.tasks_failed.get_or_create(&kind).inc();
                    clocks.tasks.remove(&key);
                }
                TaskState::Pending | TaskState::Abandoned => {
                    clocks.tasks.remove(&key);
                }
            }
        }
        let phase = state_name(&new.state);
        match clocks.phases.get(&new.id).copied() {
            Some((was, since)) if was != phase => {
                self.phase_seconds.get_or_create(&PhaseLabel { phase: was }).observe(now_ms.saturating_sub(since) as f64 / 1000.0);
            }
            Some(_) => return,
            None => {}
        }
        if new.state.is_final() {
            clocks.phases.remove(&new.id);
        } else {
            clocks.phases.insert(new.id.clone(), (phase, now_ms));
        }
    }

    /// Sets the state gauges to `census` (jobs that ended since the last scrape disappear).
    pub fn show(&self, census: &Census) {
        for state in JOB_STATES {
            self.jobs.get_or_create(&StateLabel { state }).set(census.jobs_by_state.get(state).copied().unwrap_or(0) as i64);
        }
        self.workers.get_or_create(&StateLabel { state: "live" }).set(census.live_workers as i64);
        self.workers.get_or_create(&StateLabel { state: "lost" }).set(census.lost_workers as i64);
        self.slots.get_or_create(&StateLabel { state: "busy" }).set(census.busy_slots as i64);
        self.slots.get_or_create(&StateLabel { state: "free" }).set(census.slots.saturating_sub(census.busy_slots) as i64);
        for family in [&self.job_round, &self.job_epoch] {
            family.clear();
        }
        self.job_last_failure.clear();
        for family in [&self.job_macro_f1, &self.job_images_per_second] {
            family.clear();
        }
        for job in &census.running {
            let label = JobLabel { job: job.id.to_string() };
            self.job_round.get_or_create(&label).set(i64::from(job.round));
            self.job_epoch.get_or_create(&label).set(i64::from(job.epoch));
            if let Some(f1) = job.macro_f1 {
                self.job_macro_f1.get_or_create(&label).set(f1);
            }
            if let Some(rate) = job.images_per_second {
                self.job_images_per_second.get_or_create(&label).set(rate);
            }
            if let Some(reason) = &job.last_failure {
                self.job_last_failure.get_or_create(&FailureLabel { job: job.id.to_string(), reason: reason.clone() }).set(1);
            }
        }
    }

    fn observe_rpc(&self, method: &'static str, started: Instant) {
        self.rpc_seconds.get_or_create(&MethodLabel { method }).observe(started.elapsed().as_secs_f64());
    }
}

/// The method a gRPC path names (`/feral.v1.JobService/SubmitJob` → `SubmitJob`).
fn rpc_method(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or_default();
    RPC_METHODS.iter().find(|m| **m == name).copied().unwrap_or("unknown")
}

/// A tower layer for the gRPC server that times every call into `feral_rpc_duration_seconds`.
#[derive(Clone, Debug)]
pub struct RpcTimerLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for RpcTimerLayer {
    type Service = RpcTimer<S>;

    fn layer(&self, inner: S) -> RpcTimer<S> {
        RpcTimer { inner, metrics: self.0.clone() }
    }
}

#[derive(Clone, Debug)]
pub struct RpcTimer<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B> tower::Service<http::Request<B>> for RpcTimer<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = rpc_method(request.uri().path());
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            metrics.observe_rpc(method, started);
            answer
        })
    }
}

/// A store whose writes are timed into `feral_store_write_duration_seconds`.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

#[async_trait::async_trait]
impl Store for MeteredStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.list(prefix).await
    }

    async fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let started = Instant::now();
        let applied = self.inner.apply(writes).await;
        self.metrics.store_write_seconds.observe(started.elapsed().as_secs_f64());
        applied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_feral_methods_name_a_label() {
        assert_eq!(rpc_method("/feral.v1.JobService/SubmitJob"), "SubmitJob");
        assert_eq!(rpc_method("/feral.v1.WorkerService/Heartbeat"), "Heartbeat");
        assert_eq!(rpc_method("/x.Y/Anything-a-client-makes-up"), "unknown");
        assert_eq!(rpc_method(""), "unknown");
    }
}
