//! The coordinator's control plane: jobs, workers and their tasks, kept in memory and
//! written through to the [`Store`] before the in-memory model changes. gRPC services call
//! into this; it asks the pure model (`Cluster`, `JobRecord::on_event`, `schedule`) what
//! to do, persists the result, then installs it and tells watchers.
//! (About 550 lines before its tests: one method per operation, each the same three steps,
//! ask the model, write the store, install; split, they would read as one thing in pieces.)

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use feral_common::ids::{JobId, WorkerId};
use feral_common::spec::JobSpec;
use feral_common::task::{Device, EpochReport, TaskKey, TaskOutcome};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{watch, Mutex};
use tracing::{info, warn};

use crate::error::CoordinatorError;
use crate::metrics::{Census, Metrics, RunningJob};
use crate::model::{
    free_slot_count, replan, schedule, waiting_reason, Cluster, GangPeers, JobEvent, JobRecord, LiveWorker, Orders, Slot, TaskClocks, TaskDeadlines,
    WorkerRecord, WorkerState,
};
use crate::store::{Store, Write};

/// Timing and placement settings of a coordinator.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Job artifacts go under `<artifact_root>/<job id>`, or `<spec artifacts>/<job id>`.
    pub artifact_root: PathBuf,
    pub heartbeat_interval_ms: u64,
    /// A worker without a heartbeat for this long is lost.
    pub lease_ttl_ms: u64,
    /// How long a task may show no life before it is failed as stuck.
    pub deadlines: TaskDeadlines,
}

/// Whose jobs a caller may see and change (docs/design.md §3, Security): every job (an
/// admin, or anyone when the coordinator has no tokens), or those one token submitted. A
/// job out of scope is answered as one that does not exist, so that nobody learns which
/// ids another user's jobs have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope<'a> {
    Every,
    OwnedBy(&'a str),
}

impl Scope<'_> {
    pub fn includes(self, job: &JobRecord) -> bool {
        match self {
            Scope::Every => true,
            Scope::OwnedBy(name) => job.owner.as_deref() == Some(name),
        }
    }
}

/// A worker with what only memory knows of it.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerView {
    pub record: WorkerRecord,
    pub last_heartbeat_ms: u64,
    pub running: Vec<TaskKey>,
}

#[derive(Default)]
struct Model {
    cluster: Cluster,
    watchers: HashMap<JobId, watch::Sender<JobRecord>>,
    clocks: TaskClocks,
}

pub struct ControlPlane {
    settings: Settings,
    store: Arc<dyn Store>,
    model: Mutex<Model>,
    metrics: Arc<Metrics>,
    /// Counts changes to any job: the dashboard's live job list waits on it.
    changes: watch::Sender<u64>,
}

fn job_key(id: &JobId) -> String {
    format!("jobs/{id}")
}

fn worker_key(id: &WorkerId) -> String {
    format!("workers/{id}")
}

/// `value` as the bytes stored under `key`, read back before they are written: a value
/// that would not read back as itself (a NaN, which JSON writes as `null`) is refused here,
/// so the store never holds a record that a restart could not load.
fn encode<T: Serialize + DeserializeOwned + PartialEq>(key: &str, value: &T) -> Result<Write, CoordinatorError> {
    let refused = |problem: String| CoordinatorError::CorruptRecord { key: key.to_owned(), problem };
    let bytes = serde_json::to_vec(value).map_err(|e| refused(e.to_string()))?;
    match serde_json::from_slice::<T>(&bytes) {
        Ok(read) if read == *value => Ok(Write::put(key, bytes)),
        Ok(_) => Err(refused("it would not read back as written (a value JSON cannot hold, such as NaN)".into())),
        Err(e) => Err(refused(format!("it would not read back: {e}"))),
    }
}

/// The record stored under `key`; the error names the field that does not read, e.g.
/// `spec.resources.workers: must be in 1..=256, got 4294967295`.
fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, CoordinatorError> {
    let refused = |problem: String| CoordinatorError::CorruptRecord { key: key.to_owned(), problem };
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut json).map_err(|e| refused(e.to_string()))?;
    json.end().map_err(|e| refused(e.to_string()))?;
    Ok(value)
}

impl ControlPlane {
    /// Loads every job and worker from the store. Known workers get a fresh lease from
    /// `now_ms`: they keep running their tasks while the coordinator was away.
    pub async fn load(settings: Settings, store: Arc<dyn Store>, now_ms: u64) -> Result<Self, CoordinatorError> {
        Self::read(settings, store, now_ms, true).await
    }

    /// What the store holds, read as [`load`](Self::load) reads it but repairing nothing:
    /// a standby's view, answered from while no leader is elected and never written through.
    pub async fn view(settings: Settings, store: Arc<dyn Store>, now_ms: u64) -> Result<Self, CoordinatorError> {
        Self::read(settings, store, now_ms, false).await
    }

    async fn read(settings: Settings, store: Arc<dyn Store>, now_ms: u64, repair: bool) -> Result<Self, CoordinatorError> {
        let mut model = Model::default();
        // What cannot be processed is failed or set aside here, so that no record can put
        // the coordinator into a crash loop.
        let mut repairs = Vec::new();
        for (key, bytes) in store.list("jobs/").await? {
            match decode::<JobRecord>(&key, &bytes) {
                Ok(job) => {
                    let job = match job.refused_on_load(now_ms) {
                        Some(failed) => {
                            warn!(job_id = %failed.id, reason = ?failed.state, "a stored job cannot run: failed");
                            repairs.push(encode(&key, &failed)?);
                            failed
                        }
                        None => job,
                    };
                    model.cluster.put_job(job);
                }
                Err(error) => {
                    // Kept, and shown: the raw bytes under quarantine/, and in its place a
                    // failed job that says so, so that `feral status` still lists it.
                    warn!(%key, %error, "a job record that cannot be read is kept under quarantine/ and shown as failed");
                    let unreadable = JobRecord::unreadable(&key, &bytes, &error.to_string(), now_ms);
                    repairs.extend([Write::put(format!("quarantine/{key}"), bytes), encode(&key, &unreadable)?]);
                    model.cluster.put_job(unreadable);
                }
            }
        }
        for (key, bytes) in store.list("workers/").await? {
            match decode::<WorkerRecord>(&key, &bytes) {
                Ok(record) => {
                    model.cluster.workers.insert(record.id.clone(), LiveWorker::new(record, now_ms));
                }
                Err(error) => {
                    // A worker registers again on its next heartbeat.
                    warn!(%key, %error, "a worker record that cannot be read is dropped");
                    repairs.push(Write::Delete { key });
                }
            }
        }
        if repair && !repairs.is_empty() {
            store.apply(repairs).await?;
        }
        if !repair {
            // A view writes nothing to the store it was read from, whatever is called on it.
            let detached: Arc<dyn Store> = Arc::new(crate::store::MemoryStore::default());
            return Ok(Self { settings, store: detached, model: Mutex::new(model), metrics: Arc::default(), changes: watch::channel(0).0 });
        }
        info!(jobs = model.cluster.jobs().len(), workers = model.cluster.workers.len(), "loaded state from the store");
        Ok(Self { settings, store, model: Mutex::new(model), metrics: Arc::default(), changes: watch::channel(0).0 })
    }

    /// Counts what happens from now on into `metrics`.
    pub fn observed_by(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Changes whenever any job changes (submitted, a transition, resumed); its sender goes
    /// with this control plane, so a receiver's `changed()` fails once leadership is lost.
    pub fn job_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Installs a job's new record and tells whoever waits on [`job_changes`](Self::job_changes).
    fn put_job(&self, model: &mut Model, job: JobRecord) {
        model.cluster.put_job(job);
        self.changes.send_modify(|count| *count += 1);
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// What the state gauges of `/metrics` show, counted under one lock.
    pub async fn census(&self) -> Census {
        let model = self.model.lock().await;
        let mut census = Census::default();
        for job in model.cluster.jobs().values() {
            *census.jobs_by_state.entry(crate::metrics::state_name(&job.state)).or_default() += 1;
            if !job.state.is_final() {
                let last = job.epochs.last();
                census.running.push(RunningJob {
                    id: job.id.clone(),
                    round: job.round.0,
                    epoch: last.map_or(0, |e| e.epoch),
                    macro_f1: last.map(|e| e.validation.macro_f1),
                    images_per_second: last.map(|e| e.images_per_second),
                    last_failure: job.last_failure.clone(),
                });
            }
        }
        for worker in model.cluster.workers.values() {
            if worker.record.state == WorkerState::Live {
                census.live_workers += 1;
                census.slots += worker.record.slots.len() as u64;
                census.busy_slots += model.cluster.assigned_count(&worker.record.id) as u64;
            } else {
                census.lost_workers += 1;
            }
        }
        census
    }

    // ----- jobs ---------------------------------------------------------------------

    /// Queues the job `spec_toml` describes, owned by `owner`.
    pub async fn submit(&self, spec_toml: &str, owner: &str, now_ms: u64) -> Result<JobRecord, CoordinatorError> {
        let spec = JobSpec::from_toml(spec_toml)?;
        let id = JobId::generate();
        // Always a directory of the job's own, named by its id: two specs that name one
        // `artifacts` directory write beside each other, never over each other.
        let artifact_dir = spec.artifacts.as_deref().unwrap_or(&self.settings.artifact_root).join(id.as_str());
        let mut job = JobRecord::submitted(id.clone(), spec, spec_toml.to_owned(), artifact_dir, now_ms);
        job.owner = Some(owner.to_owned());
        let mut model = self.model.lock().await;
        self.store.apply(vec![encode(&job_key(&id), &job)?]).await?;
        self.metrics.job_changed(None, &job, now_ms);
        self.put_job(&mut model, job);
        info!(job_id = %id, "job submitted");
        self.run_scheduler(&mut model, now_ms).await?;
        model.cluster.job(&id).cloned().ok_or(CoordinatorError::JobNotFound(id))
    }

    pub async fn job(&self, scope: Scope<'_>, id: &JobId) -> Result<JobRecord, CoordinatorError> {
        let model = self.model.lock().await;
        model.cluster.job(id).filter(|job| scope.includes(job)).cloned().ok_or_else(|| CoordinatorError::JobNotFound(id.clone()))
    }

    /// Up to `size` jobs of `scope`, newest first, starting after the job `after` names (its
    /// creation time and id); with the key of the last one when more follow.
    pub async fn jobs_page(&self, scope: Scope<'_>, after: Option<(u64, JobId)>, size: usize) -> (Vec<JobRecord>, Option<(u64, JobId)>) {
        let model = self.model.lock().await;
        let mut keys: Vec<(u64, &JobId)> = model.cluster.jobs().values().filter(|j| scope.includes(j)).map(|j| (j.created_at_ms, &j.id)).collect();
        keys.sort_by(|a, b| b.cmp(a));
        let start = after.map_or(0, |(at, id)| keys.partition_point(|&(t, i)| (t, i) >= (at, &id)));
        let page: Vec<JobRecord> = keys[start..].iter().take(size).filter_map(|(_, id)| model.cluster.job(id).cloned()).collect();
        let more = start + page.len() < keys.len();
        let next = more.then(|| page.last().map(|j| (j.created_at_ms, j.id.clone()))).flatten();
        (page, next)
    }

    /// For each of `jobs`, why it waits beyond its turn (see [`waiting_reason`]).
    pub async fn waiting_reasons(&self, jobs: &[JobRecord]) -> Vec<Option<String>> {
        let model = self.model.lock().await;
        let workers: Vec<&WorkerRecord> = model.cluster.workers.values().map(|w| &w.record).collect();
        jobs.iter().map(|job| waiting_reason(job, &workers)).collect()
    }

    pub async fn cancel(&self, scope: Scope<'_>, id: &JobId, now_ms: u64) -> Result<JobRecord, CoordinatorError> {
        let mut model = self.model.lock().await;
        if !model.cluster.job(id).is_some_and(|job| scope.includes(job)) {
            return Err(CoordinatorError::JobNotFound(id.clone()));
        }
        let event = JobEvent::CancelRequested { reason: "cancelled by user".to_owned() };
        self.apply_job_event(&mut model, id, &event, now_ms).await?;
        info!(job_id = %id, "job cancel requested");
        model.cluster.job(id).cloned().ok_or_else(|| CoordinatorError::JobNotFound(id.clone()))
    }

    /// Continues a failed or cancelled job from where it stopped, with a fresh budget of
    /// attempts ([`JobRecord::resumed`]).
    pub async fn resume(&self, scope: Scope<'_>, id: &JobId, now_ms: u64) -> Result<JobRecord, CoordinatorError> {
        let mut model = self.model.lock().await;
        let job = model.cluster.job(id).filter(|job| scope.includes(job)).ok_or_else(|| CoordinatorError::JobNotFound(id.clone()))?;
        let next = job.resumed(now_ms)?;
        self.store.apply(vec![encode(&job_key(id), &next)?]).await?;
        info!(job_id = %id, state = ?next.state, "job resumed");
        self.metrics.job_changed(Some(job), &next, now_ms);
        self.put_job(&mut model, next);
        self.run_scheduler(&mut model, now_ms).await?;
        model.cluster.job(id).cloned().ok_or_else(|| CoordinatorError::JobNotFound(id.clone()))
    }

    /// The job now, and every later version of it until it is final.
    pub async fn watch(&self, scope: Scope<'_>, id: &JobId) -> Result<watch::Receiver<JobRecord>, CoordinatorError> {
        let mut model = self.model.lock().await;
        let job = model.cluster.job(id).filter(|job| scope.includes(job)).cloned().ok_or_else(|| CoordinatorError::JobNotFound(id.clone()))?;
        if job.state.is_final() {
            // Nothing will change: no sender is kept (senders are dropped when a job ends).
            return Ok(watch::channel(job).1);
        }
        let sender = model.watchers.entry(id.clone()).or_insert_with(|| watch::channel(job).0);
        Ok(sender.subscribe())
    }

    // ----- workers ------------------------------------------------------------------

    pub async fn register(&self, id: WorkerId, hostname: String, slots: Vec<Slot>, now_ms: u64) -> Result<(), CoordinatorError> {
        if slots.is_empty() {
            return Err(CoordinatorError::required("slots"));
        }
        let mut model = self.model.lock().await;
        let registered_at_ms = model.cluster.workers.get(&id).map_or(now_ms, |w| w.record.registered_at_ms);
        let record = WorkerRecord { id: id.clone(), hostname, slots, state: WorkerState::Live, registered_at_ms };
        self.store.apply(vec![encode(&worker_key(&id), &record)?]).await?;
        let running = model.cluster.workers.remove(&id).map(|w| w.running).unwrap_or_default();
        model.cluster.workers.insert(id.clone(), LiveWorker { running, ..LiveWorker::new(record, now_ms) });
        info!(worker_id = %id, "worker registered");
        self.run_scheduler(&mut model, now_ms).await
    }

    /// Renews a worker's lease. Answers with the tasks it should start and those it
    /// should stop: anything it runs that is no longer assigned to it.
    /// `withheld`: the devices it offers no task on (a task there would not stop).
    pub async fn heartbeat(&self, id: &WorkerId, running: Vec<TaskKey>, withheld: Vec<Device>, now_ms: u64) -> Result<Orders, CoordinatorError> {
        let mut model = self.model.lock().await;
        let worker = model.cluster.workers.get_mut(id).ok_or_else(|| CoordinatorError::WorkerNotFound(id.clone()))?;
        if let Some(unknown) = withheld.iter().find(|d| !worker.record.slots.iter().any(|s| &s.device == *d)) {
            return Err(CoordinatorError::InvalidArgument(format!("field `withheld_devices` names {:?}, not a slot of worker {id}", unknown.to_string())));
        }
        worker.last_heartbeat_ms = now_ms;
        worker.running = running.clone();
        let slots_changed = worker.withheld != withheld;
        if slots_changed {
            if !withheld.is_empty() {
                info!(worker_id = %id, devices = ?withheld, "a worker withholds slots until the tasks it was told to stop have stopped");
            }
            worker.withheld = withheld;
        }
        let proven = worker.unproven_since_ms.take_if(|since| now_ms > *since).is_some();
        if worker.record.state == WorkerState::Lost {
            let mut revived = worker.record.clone();
            revived.state = WorkerState::Live;
            self.store.apply(vec![encode(&worker_key(id), &revived)?]).await?;
            info!(worker_id = %id, "lost worker is back");
            if let Some(worker) = model.cluster.workers.get_mut(id) {
                worker.record = revived;
            }
            self.run_scheduler(&mut model, now_ms).await?;
        } else if proven || slots_changed {
            self.run_scheduler(&mut model, now_ms).await?;
        }
        Ok(model.cluster.orders(id, &running))
    }

    pub async fn workers(&self) -> Vec<WorkerView> {
        self.workers_page(None, usize::MAX).await
    }

    /// Up to `size` workers by id, after the worker `after`.
    pub async fn workers_page(&self, after: Option<&WorkerId>, size: usize) -> Vec<WorkerView> {
        use std::ops::Bound::{Excluded, Unbounded};
        let model = self.model.lock().await;
        let range = model.cluster.workers.range::<WorkerId, _>((after.map_or(Unbounded, Excluded), Unbounded));
        range.take(size).map(|(_, w)| WorkerView { record: w.record.clone(), last_heartbeat_ms: w.last_heartbeat_ms, running: w.running.clone() }).collect()
    }

    /// Marks workers whose lease ran out as lost and requeues their tasks.
    pub async fn expire_leases(&self, now_ms: u64) -> Result<(), CoordinatorError> {
        let mut model = self.model.lock().await;
        for id in model.cluster.expired(now_ms, self.settings.lease_ttl_ms) {
            let Some(worker) = model.cluster.workers.get_mut(&id) else { continue };
            let mut lost = worker.record.clone();
            lost.state = WorkerState::Lost;
            self.store.apply(vec![encode(&worker_key(&id), &lost)?]).await?;
            worker.record = lost;
            worker.running.clear();
            warn!(worker_id = %id, ttl_ms = self.settings.lease_ttl_ms, "worker lost: no heartbeat within its lease");
            for job in model.cluster.jobs_on(&id) {
                self.apply_job_event(&mut model, &job, &JobEvent::WorkerLost { worker: id.clone() }, now_ms).await?;
            }
        }
        self.run_scheduler(&mut model, now_ms).await
    }

    /// Fails, as stuck, each task past its deadline (`model::deadlines`): one its worker
    /// has not started, or one that has shown no progress for longer than its kind allows.
    /// Like any failure it is retried within the job's attempts, on the next free slot.
    pub async fn expire_stuck_tasks(&self, now_ms: u64) -> Result<(), CoordinatorError> {
        let mut model = self.model.lock().await;
        let Model { cluster, clocks, .. } = &mut *model;
        let stuck = clocks.check(cluster, &self.settings.deadlines, now_ms);
        if stuck.is_empty() {
            return Ok(());
        }
        for s in stuck {
            warn!(worker_id = %s.worker, task_id = %s.task, reason = %s.reason, "task stuck");
            model.cluster.distrust_gang_of(&s.worker, &s.task, now_ms);
            let event = JobEvent::TaskFailed { task: s.task.clone(), worker: s.worker.clone(), reason: s.reason, retryable: true };
            self.apply_job_event(&mut model, &s.task.job, &event, now_ms).await?;
        }
        self.run_scheduler(&mut model, now_ms).await
    }

    // ----- task reports -------------------------------------------------------------

    /// Records an epoch; answers whether the task should stop: when it is no longer
    /// assigned, or when its elastic gang runs short and a slot is free to grow it back
    /// (the checkpoint of this epoch is written: the whole gang starts again from it).
    pub async fn report_progress(
        &self,
        worker: &WorkerId,
        task: &TaskKey,
        epoch: EpochReport,
        epochs_total: u32,
        now_ms: u64,
    ) -> Result<bool, CoordinatorError> {
        let mut model = self.model.lock().await;
        if model.cluster.task(task).is_none() || !model.cluster.is_assigned_to(task, worker) {
            return Ok(true);
        }
        self.refuse_unlike_the_job(&mut model, worker, task, |job| job.check_progress(&epoch, epochs_total), now_ms).await?;
        let last_epoch = epoch.epoch >= epochs_total;
        if let Some(round) = model.cluster.task(task).map(|t| t.round) {
            let Model { cluster, clocks, .. } = &mut *model;
            clocks.progressed(cluster, &task.job, round, now_ms);
        }
        let event = JobEvent::TaskProgress { task: task.clone(), worker: worker.clone(), epoch, epochs_total };
        self.apply_job_event(&mut model, &task.job, &event, now_ms).await?;
        let short = model.cluster.job(&task.job).zip(model.cluster.task(task)).is_some_and(|(job, record)| job.is_short_gang(record));
        if !short || last_epoch {
            return Ok(false);
        }
        let free = {
            let jobs: Vec<&JobRecord> = model.cluster.jobs().values().collect();
            let workers = model.cluster.schedulable_workers();
            free_slot_count(&jobs, &workers.iter().collect::<Vec<_>>())
        };
        if free == 0 {
            return Ok(false);
        }
        info!(job_id = %task.job, task_id = %task, free_slots = free, "an elastic gang grows back from its checkpoint");
        self.apply_job_event(&mut model, &task.job, &JobEvent::GangGrows { task: task.clone() }, now_ms).await?;
        self.run_scheduler(&mut model, now_ms).await?;
        Ok(true)
    }

    pub async fn finish_task(&self, worker: &WorkerId, task: &TaskKey, outcome: TaskOutcome, now_ms: u64) -> Result<(), CoordinatorError> {
        let mut model = self.model.lock().await;
        if model.cluster.job(&task.job).is_none() {
            return Err(CoordinatorError::JobNotFound(task.job.clone()));
        }
        // A report for a task its job no longer runs (from an attempt that has been
        // replaced) is stale and changes nothing.
        let Some(kind) = model.cluster.task(task).map(|t| t.kind) else { return Ok(()) };
        refuse_if_another_workers(&model, worker, task)?;
        if kind != outcome.kind() {
            return Err(CoordinatorError::InvalidArgument(format!(
                "task {task} is a {} task, but the report carries a {} outcome",
                kind.name(),
                outcome.kind().name()
            )));
        }
        if model.cluster.is_assigned_to(task, worker) {
            self.refuse_unlike_the_job(&mut model, worker, task, |job| job.check_outcome(&outcome), now_ms).await?;
        }
        let event = JobEvent::TaskFinished { task: task.clone(), worker: worker.clone(), outcome };
        self.apply_job_event(&mut model, &task.job, &event, now_ms).await?;
        self.run_scheduler(&mut model, now_ms).await
    }

    pub async fn fail_task(&self, worker: &WorkerId, task: &TaskKey, reason: String, retryable: bool, now_ms: u64) -> Result<(), CoordinatorError> {
        let mut model = self.model.lock().await;
        if model.cluster.job(&task.job).is_none() {
            return Err(CoordinatorError::JobNotFound(task.job.clone()));
        }
        refuse_if_another_workers(&model, worker, task)?;
        warn!(worker_id = %worker, task_id = %task, %reason, retryable, "task failed");
        if model.cluster.task(task).is_none() {
            return Ok(());
        }
        model.cluster.distrust_gang_of(worker, task, now_ms);
        let event = JobEvent::TaskFailed { task: task.clone(), worker: worker.clone(), reason, retryable };
        self.apply_job_event(&mut model, &task.job, &event, now_ms).await?;
        self.run_scheduler(&mut model, now_ms).await
    }

    /// Records where rank `task` listens; answers every rank's address once all have joined.
    pub async fn join_gang(&self, worker: &WorkerId, task: &TaskKey, address: String, nccl_unique_id: Vec<u8>) -> Result<Option<GangPeers>, CoordinatorError> {
        self.model.lock().await.cluster.join_gang(worker, task, address, nccl_unique_id)
    }

    // ----- internals ----------------------------------------------------------------

    /// A report that `check` finds unlike anything the job can produce (a non-finite loss,
    /// a rate outside [0, 1], a file outside the job's directory) is refused, and its task
    /// fails with the reason (not retried: a diverged run diverges again).
    async fn refuse_unlike_the_job<E: std::fmt::Display>(
        &self,
        model: &mut Model,
        worker: &WorkerId,
        task: &TaskKey,
        check: impl FnOnce(&JobRecord) -> Result<(), E>,
        now_ms: u64,
    ) -> Result<(), CoordinatorError> {
        let Some(problem) = model.cluster.job(&task.job).and_then(|job| check(job).err()) else { return Ok(()) };
        let reason = format!("worker {worker} reported {problem}");
        warn!(job_id = %task.job, task_id = %task, %reason, "report refused");
        let event = JobEvent::TaskFailed { task: task.clone(), worker: worker.clone(), reason: reason.clone(), retryable: false };
        self.apply_job_event(model, &task.job, &event, now_ms).await?;
        Err(CoordinatorError::InvalidArgument(reason))
    }

    /// Runs the pure transition, persists its result, then installs it and tells watchers.
    async fn apply_job_event(&self, model: &mut Model, id: &JobId, event: &JobEvent, now_ms: u64) -> Result<(), CoordinatorError> {
        let job = model.cluster.job(id).ok_or_else(|| CoordinatorError::JobNotFound(id.clone()))?;
        let Some(next) = job.on_event(event, now_ms) else { return Ok(()) };
        self.store.apply(vec![encode(&job_key(id), &next)?]).await?;
        if next.state != job.state {
            info!(job_id = %id, state = ?next.state, "job state changed");
        }
        self.metrics.job_changed(Some(job), &next, now_ms);
        if let Some(watcher) = model.watchers.get(id) {
            watcher.send_replace(next.clone());
        }
        if next.state.is_final() {
            model.watchers.remove(id);
        }
        self.put_job(model, next);
        Ok(())
    }

    async fn run_scheduler(&self, model: &mut Model, now_ms: u64) -> Result<(), CoordinatorError> {
        let plans: Vec<(JobId, _)> = {
            let workers = model.cluster.schedulable_workers();
            let workers: Vec<&WorkerRecord> = workers.iter().collect();
            model.cluster.jobs().values().filter(|j| !j.state.is_final()).filter_map(|j| Some((j.id.clone(), replan(j, &workers)?))).collect()
        };
        for (job, plan) in plans {
            self.apply_job_event(model, &job, &JobEvent::ShardsPlanned { plan }, now_ms).await?;
        }
        let assignments = {
            let jobs: Vec<&JobRecord> = model.cluster.jobs().values().collect();
            let workers = model.cluster.schedulable_workers();
            schedule(&jobs, &workers.iter().collect::<Vec<_>>(), now_ms)
        };
        for assignment in assignments {
            let short = model.cluster.job(&assignment.task.job).and_then(|j| j.task(&assignment.task)).is_some_and(|t| assignment.world_size < t.world_size);
            if short {
                info!(job_id = %assignment.task.job, task_id = %assignment.task, ranks = assignment.world_size, "an elastic gang is placed short");
                let event = JobEvent::GangShrunk { task: assignment.task.clone(), world_size: assignment.world_size };
                self.apply_job_event(model, &assignment.task.job, &event, now_ms).await?;
            }
            info!(job_id = %assignment.task.job, task_id = %assignment.task, worker_id = %assignment.worker, "task assigned");
            let job = assignment.task.job.clone();
            let event = JobEvent::TaskAssigned { task: assignment.task, worker: assignment.worker, device: assignment.device };
            self.apply_job_event(model, &job, &event, now_ms).await?;
        }
        Ok(())
    }
}

/// A report about the current attempt of a task another worker holds is refused (it can
/// only be forged or misaddressed); reports about tasks nobody holds are stale and ignored.
fn refuse_if_another_workers(model: &Model, worker: &WorkerId, task: &TaskKey) -> Result<(), CoordinatorError> {
    match model.cluster.task(task).and_then(|t| t.worker()) {
        Some(holder) if holder != worker => Err(CoordinatorError::NotAssigned { task: task.clone(), worker: worker.clone() }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JobState;
    use crate::store::MemoryStore;
    use feral_common::ids::{Attempt, Round};
    use feral_common::task::{Assignment, DatasetSummary, TaskKind, TrainedModel};

    fn settings() -> Settings {
        Settings { artifact_root: "/tmp/unused".into(), heartbeat_interval_ms: 1000, lease_ttl_ms: 60_000, deadlines: TaskDeadlines::default() }
    }

    /// A round-0 model as a worker reports it.
    fn teacher_model() -> TrainedModel {
        TrainedModel {
            validation: Default::default(),
            model_path: "/a/r0/model.safetensors".into(),
            class_names: vec!["a".into(), "b".into()],
            frame_validation: None,
            test: None,
            online: None,
        }
    }

    async fn heartbeat(control: &ControlPlane, id: &WorkerId, now_ms: u64) -> Vec<Assignment> {
        control.heartbeat(id, Vec::new(), Vec::new(), now_ms).await.expect("heartbeat").assignments
    }

    #[tokio::test]
    async fn a_slot_its_worker_withholds_is_given_no_task_until_it_is_offered_again() {
        let control = ControlPlane::load(settings(), Arc::new(MemoryStore::default()), 0).await.expect("load");
        let w1 = WorkerId::new("w1");
        control.register(w1.clone(), "h".into(), vec![Slot { device: Device::Cpu, name: "cpu".into() }], 0).await.expect("register");
        let withholding = |now| control.heartbeat(&w1, Vec::new(), vec![Device::Cpu], now);
        assert!(withholding(1).await.expect("heartbeat").assignments.is_empty());
        let job = control.submit("version = 1\ndataset = \"/d\"\n", "alice", 2).await.expect("submit").id;
        assert!(withholding(3).await.expect("heartbeat").assignments.is_empty(), "its only slot is withheld: nothing placed");
        let offered = heartbeat(&control, &w1, 4).await;
        assert_eq!(offered.len(), 1, "offered again, the slot takes the job's first task");
        assert_eq!(offered[0].key.job, job);
        let refused = control.heartbeat(&w1, Vec::new(), vec![Device::Cuda(7)], 5).await.expect_err("not its slot");
        assert!(refused.to_string().contains("cuda:7"), "{refused}");
    }

    /// A coordinator whose job (at most `max_attempts` attempts) has its gang of two ranks
    /// placed on `w1` and `w2`, and `w3` registered: the assignments of `w1` and `w2`.
    async fn gang_on_w1_and_w2(max_attempts: u32) -> (ControlPlane, JobId, [Assignment; 2]) {
        let control = ControlPlane::load(settings(), Arc::new(MemoryStore::default()), 0).await.expect("load");
        let cpu = || vec![Slot { device: Device::Cpu, name: "cpu".into() }];
        let [w1, w2, w3] = ["w1", "w2", "w3"].map(WorkerId::new);
        for id in [&w1, &w2] {
            control.register(id.clone(), "h".into(), cpu(), 0).await.expect("register");
        }
        let spec = format!("version = 1\ndataset = \"/d\"\n[resources]\nworkers = 2\nmax_attempts = {max_attempts}\n");
        let job = control.submit(&spec, "alice", 1).await.expect("submit");
        let (p1, p2) = (heartbeat(&control, &w1, 2).await, heartbeat(&control, &w2, 2).await);
        let (preparer, prepare) = if p1.is_empty() { (&w2, &p2[0]) } else { (&w1, &p1[0]) };
        let summary = DatasetSummary { class_names: vec!["a".into(), "b".into()], train_samples: 4, val_samples: 4, unlabeled_shards: vec![] };
        control.finish_task(preparer, &prepare.key, TaskOutcome::Prepared(summary), 3).await.expect("finish");
        let (mut g1, mut g2) = (heartbeat(&control, &w1, 4).await, heartbeat(&control, &w2, 4).await);
        assert_eq!((g1.len(), g2.len()), (1, 1), "the gang of two ranks is placed on w1 and w2");
        control.register(w3, "h".into(), cpu(), 5).await.expect("register");
        (control, job.id, [g1.remove(0), g2.remove(0)])
    }

    /// The train tasks of `job` that are still live (queued or placed), and its state.
    async fn live_training(control: &ControlPlane, job: &JobId) -> (Vec<(u32, Option<WorkerId>)>, JobState) {
        let record = control.job(Scope::Every, job).await.expect("job");
        let mut live: Vec<_> = record.tasks.iter().filter(|t| t.kind == TaskKind::Train && t.is_live()).map(|t| (t.attempt.0, t.worker().cloned())).collect();
        live.sort();
        (live, record.state)
    }

    #[tokio::test]
    async fn a_retried_gang_is_not_placed_on_a_rank_that_has_not_heartbeated_since_it_failed() {
        let (control, job, [g1, _]) = gang_on_w1_and_w2(3).await;
        let [w1, w2, w3] = ["w1", "w2", "w3"].map(WorkerId::new);
        // w2 dies silently (still live within its lease); w1's rank reports the broken ring.
        control.fail_task(&w1, &g1.key, "gradient exchange failed".into(), true, 10).await.expect("fail");
        // Until they heartbeat again, neither rank of the failed gang gets a task.
        assert!(heartbeat(&control, &w3, 11).await.is_empty(), "w3 alone cannot hold a gang of two");
        // w1 heartbeats after the retry's back-off (at most retry_backoff_s = 2 s): it is
        // alive, and the retried gang goes to w1 and w3, not to w2.
        assert!(heartbeat(&control, &w1, 12).await.is_empty(), "the retry waits out its back-off");
        control.expire_leases(2_012).await.expect("the periodic pass places what is due");
        let on_w1 = heartbeat(&control, &w1, 2_012).await;
        let on_w3 = heartbeat(&control, &w3, 2_012).await;
        assert_eq!((on_w1.len(), on_w3.len()), (1, 1), "the retry runs on the two workers that proved alive");
        assert!(on_w1[0].key.attempt > g1.key.attempt, "a new attempt");
        let record = control.job(Scope::Every, &job).await.expect("job");
        assert!(!record.workers().contains(&w2), "nothing is placed on the silent w2: {:?}", record.workers());
    }

    #[tokio::test]
    async fn a_lost_rank_costs_its_gang_one_attempt_when_the_survivor_reports_first() {
        let (control, job, [g1, _]) = gang_on_w1_and_w2(2).await;
        let [w1, w2, w3] = ["w1", "w2", "w3"].map(WorkerId::new);
        control.fail_task(&w1, &g1.key, "gradient exchange failed: peer closed the connection".into(), true, 10).await.expect("fail");
        heartbeat(&control, &w1, 12).await;
        heartbeat(&control, &w3, 12).await;
        // Later, the dead w2's lease runs out: that is the same failure, not a second one.
        heartbeat(&control, &w1, 60_000).await;
        heartbeat(&control, &w3, 60_000).await;
        control.expire_leases(61_000).await.expect("expire");
        assert_eq!(control.workers().await.iter().find(|w| w.record.id == w2).map(|w| w.record.state), Some(WorkerState::Lost));
        let (live, state) = live_training(&control, &job).await;
        assert!(!state.is_final(), "two attempts allowed, one used: {state:?}");
        assert_eq!(live, [(2, Some(w1)), (2, Some(w3))], "attempt 2 runs on, and no third is queued");
    }

    #[tokio::test]
    async fn a_lost_rank_costs_its_gang_one_attempt_when_its_lease_runs_out_first() {
        let (control, job, [g1, _]) = gang_on_w1_and_w2(2).await;
        let [w1, w2, w3] = ["w1", "w2", "w3"].map(WorkerId::new);
        heartbeat(&control, &w1, 60_000).await;
        heartbeat(&control, &w3, 60_000).await;
        control.expire_leases(61_000).await.expect("expire");
        // The survivor's rank, blocked on its dead peer, reports the broken ring late: its
        // attempt is already over, and the report changes nothing.
        control.fail_task(&w1, &g1.key, "gradient exchange failed: peer timed out".into(), true, 61_500).await.expect("fail");
        // After the retry's back-off (at most 2 s), the periodic pass places it.
        control.expire_leases(63_000).await.expect("expire");
        heartbeat(&control, &w1, 63_000).await;
        heartbeat(&control, &w3, 63_000).await;
        let (live, state) = live_training(&control, &job).await;
        assert!(!state.is_final(), "two attempts allowed, one used: {state:?}");
        assert_eq!(live, [(2, Some(w1)), (2, Some(w3))], "attempt 2 runs on w1 and w3, not on the lost w2 ({w2})");
    }

    #[tokio::test]
    async fn watching_a_finished_job_shows_its_end_and_keeps_nothing() {
        let (control, job, _) = gang_on_w1_and_w2(3).await;
        let live = control.watch(Scope::Every, &job).await.expect("watch");
        control.cancel(Scope::Every, &job, 7).await.expect("cancel");
        assert!(live.borrow().state.is_final(), "the watcher saw the end");
        assert!(live.has_changed().is_err(), "and its channel closed with it");
        assert!(control.model.lock().await.watchers.is_empty(), "the job's sender went with its end");
        // Every later watch (a dashboard page opened on the finished job, say) sees the end
        // at once, and no sender is kept for it.
        for _ in 0..3 {
            let ended = control.watch(Scope::Every, &job).await.expect("watch");
            assert!(ended.borrow().state.is_final());
        }
        assert!(control.model.lock().await.watchers.is_empty(), "a watch of a finished job kept a sender");
    }

    #[tokio::test]
    async fn a_heartbeat_answers_what_to_start_and_what_to_stop() {
        let (control, job, [g1, _]) = gang_on_w1_and_w2(3).await;
        let w1 = WorkerId::new("w1");
        // Running its rank, w1 is told nothing new; an unknown task it runs is stopped.
        let stray = TaskKey { job: JobId::new("job-gone"), ..g1.key.clone() };
        let reply = control.heartbeat(&w1, vec![g1.key.clone(), stray.clone()], Vec::new(), 6).await.expect("heartbeat");
        assert!(reply.assignments.is_empty(), "{:?}", reply.assignments);
        assert_eq!(reply.cancel, [stray]);
        // Once the job is cancelled, its rank is stopped too.
        control.cancel(Scope::Every, &job, 7).await.expect("cancel");
        let reply = control.heartbeat(&w1, vec![g1.key.clone()], Vec::new(), 8).await.expect("heartbeat");
        assert_eq!(reply.cancel, std::slice::from_ref(&g1.key));
    }

    #[tokio::test]
    async fn reports_are_found_by_their_job_and_a_replaced_attempts_change_nothing() {
        let (control, job, [g1, g2]) = gang_on_w1_and_w2(3).await;
        let (w1, w2) = (WorkerId::new("w1"), WorkerId::new("w2"));
        control.fail_task(&w1, &g1.key, "gradient exchange failed".into(), true, 10).await.expect("fail");
        let before = control.job(Scope::Every, &job).await.expect("job");
        // w2's rank of the abandoned attempt 1 reports an epoch and then a failure: stale.
        let epoch = EpochReport {
            round: Round(0),
            epoch: 1,
            train_loss: 1.0,
            train_accuracy: 0.5,
            validation: Default::default(),
            seconds: 1.0,
            images_per_second: 0.0,
        };
        let stop = control.report_progress(&w2, &g2.key, epoch, 2, 11).await.expect("progress");
        assert!(stop, "the rank of a replaced attempt is told to stop");
        control.fail_task(&w2, &g2.key, "peer lost".into(), true, 12).await.expect("fail");
        let after = control.job(Scope::Every, &job).await.expect("job");
        assert_eq!((after.epochs.len(), after.tasks.len()), (before.epochs.len(), before.tasks.len()), "nothing changed");
        // A report whose attempt is not its task's names no live task either.
        let wrong = TaskKey { attempt: Attempt(2), ..g1.key.clone() };
        control.fail_task(&w1, &wrong, "x".into(), false, 13).await.expect("a stale report is accepted and ignored");
        assert!(!control.job(Scope::Every, &job).await.expect("job").state.is_final());
    }

    #[tokio::test]
    async fn a_gang_meets_once_every_rank_has_joined() {
        let (control, _job, [g1, g2]) = gang_on_w1_and_w2(3).await;
        let (w1, w2) = (WorkerId::new("w1"), WorkerId::new("w2"));
        let first = control.join_gang(&w1, &g1.key, "h1:1".into(), b"nccl".to_vec()).await.expect("join");
        assert_eq!(first, None, "rank 0 waits for rank 1");
        let error = control.join_gang(&w1, &g2.key, "h1:2".into(), Vec::new()).await.expect_err("not w1's rank");
        assert!(matches!(error, CoordinatorError::NotAssigned { .. }), "{error}");
        let peers = control.join_gang(&w2, &g2.key, "h2:1".into(), Vec::new()).await.expect("join").expect("complete");
        assert_eq!(peers, GangPeers { addresses: vec!["h1:1".into(), "h2:1".into()], nccl_unique_id: b"nccl".to_vec() });
        // Rank 0 polls again and gets the same answer.
        let again = control.join_gang(&w1, &g1.key, "h1:1".into(), b"nccl".to_vec()).await.expect("join");
        assert_eq!(again, Some(peers));
    }

    #[tokio::test]
    async fn a_worker_back_from_a_partition_is_told_to_stop_and_its_late_result_is_not_counted() {
        let control = ControlPlane::load(settings(), Arc::new(MemoryStore::default()), 0).await.expect("load");
        let cpu = || vec![Slot { device: Device::Cpu, name: "cpu".into() }];
        let (w1, w2) = (WorkerId::new("w1"), WorkerId::new("w2"));
        control.register(w1.clone(), "h".into(), cpu(), 0).await.expect("register");
        let job = control.submit("version = 1\ndataset = \"/d\"\n[semi_supervised]\nrounds = 0\n", "alice", 1).await.expect("submit").id;
        let prepare = heartbeat(&control, &w1, 2).await.remove(0);
        let summary = DatasetSummary { class_names: vec!["a".into(), "b".into()], train_samples: 4, val_samples: 4, unlabeled_shards: vec![] };
        control.finish_task(&w1, &prepare.key, TaskOutcome::Prepared(summary), 3).await.expect("finish");
        let first = heartbeat(&control, &w1, 4).await.remove(0);
        assert_eq!((first.key.kind, first.key.attempt), (TaskKind::Train, Attempt(1)));

        // w1 is paused past its lease; its task goes to w2 as attempt 2.
        control.register(w2.clone(), "h".into(), cpu(), 5).await.expect("register");
        heartbeat(&control, &w2, 60_000).await;
        control.expire_leases(61_000).await.expect("expire");
        control.expire_leases(63_000).await.expect("the periodic pass places the retry after its back-off");
        let second = heartbeat(&control, &w2, 63_000).await;
        assert_eq!(second.iter().map(|a| (a.key.kind, a.key.attempt)).collect::<Vec<_>>(), [(TaskKind::Train, Attempt(2))]);

        // w1 wakes: it is told to stop what it runs, and its finished attempt 1 counts for nothing.
        let reply = control.heartbeat(&w1, vec![first.key.clone()], Vec::new(), 63_500).await.expect("heartbeat");
        assert_eq!(reply.cancel, std::slice::from_ref(&first.key), "the reassigned task is stopped");
        let model = teacher_model();
        control.finish_task(&w1, &first.key, TaskOutcome::Trained(model), 63_600).await.expect("a late report is accepted and ignored");
        let record = control.job(Scope::Every, &job).await.expect("job");
        assert!(!record.state.is_final(), "the job waits for attempt 2: {:?}", record.state);
        assert!(record.rounds.iter().all(|r| r.model.is_none()), "no model from the stale attempt");
        assert_eq!(record.workers(), [w2], "attempt 2 runs on w2 alone");
    }

    /// A worker (a bug, an old version, a forged client) reports numbers no training
    /// produces: the report is refused with the field named, the task fails with that
    /// reason, and nothing of it reaches the store, which a restarted coordinator reads back.
    #[tokio::test]
    async fn reports_unlike_the_job_are_refused_and_fail_their_task() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let control = ControlPlane::load(settings(), store.clone(), 0).await.expect("load");
        let w1 = WorkerId::new("w1");
        control.register(w1.clone(), "h".into(), vec![Slot { device: Device::Cpu, name: "cpu".into() }], 0).await.expect("register");
        let submit = |name: &str| format!("version = 1\nname = \"{name}\"\ndataset = \"/d\"\n[train]\nepochs = 3\n");
        let summary = DatasetSummary { class_names: vec!["a".into(), "b".into()], train_samples: 4, val_samples: 4, unlabeled_shards: vec![] };
        let epoch = |loss: f64, accuracy: f64, number: u32| EpochReport {
            round: Round(0),
            epoch: number,
            train_loss: loss,
            train_accuracy: accuracy,
            validation: feral_common::metrics::MetricsSummary {
                accuracy: 0.5,
                macro_f1: 0.5,
                per_class_f1: vec![0.5, 0.5],
                confusion: vec![1, 1, 1, 1],
                samples: 4,
            },
            seconds: 1.0,
            images_per_second: 10.0,
        };
        type Report = Box<dyn Fn(&Assignment) -> (Option<EpochReport>, Option<TaskOutcome>)>;
        let cases: [(&str, Report, &str); 5] = [
            ("nan", Box::new(move |_| (Some(epoch(f64::NAN, 0.5, 1)), None)), "non-finite training loss"),
            ("accuracy", Box::new(move |_| (Some(epoch(0.5, 2.5, 1)), None)), "train_accuracy 2.5"),
            ("epoch", Box::new(move |_| (Some(epoch(0.5, 0.5, 4_294_967_295)), None)), "epoch 4294967295 outside 1..=3"),
            (
                "path",
                Box::new(|_| (None, Some(TaskOutcome::Trained(TrainedModel { model_path: "/tmp/unused/../../etc/shadow".into(), ..teacher_model() })))),
                "outside the job's directory",
            ),
            (
                "f1",
                Box::new(|a: &Assignment| {
                    let validation = feral_common::metrics::MetricsSummary { macro_f1: -3.0, per_class_f1: vec![0.5, 0.5], ..Default::default() };
                    (
                        None,
                        Some(TaskOutcome::Trained(TrainedModel {
                            validation,
                            model_path: a.artifact_dir.join("r0/a1/model.safetensors").display().to_string(),
                            ..teacher_model()
                        })),
                    )
                }),
                "macro_f1 -3",
            ),
        ];
        let mut now = 10;
        for (name, report, expected) in cases {
            let job = control.submit(&submit(name), "alice", now).await.expect("submit").id;
            let prepare = heartbeat(&control, &w1, now + 1).await.remove(0);
            control.finish_task(&w1, &prepare.key, TaskOutcome::Prepared(summary.clone()), now + 2).await.expect("prepared");
            let train = heartbeat(&control, &w1, now + 3).await.remove(0);
            let refused = match report(&train) {
                (Some(epoch), _) => control.report_progress(&w1, &train.key, epoch, 3, now + 4).await.map(|_| ()),
                (_, Some(outcome)) => control.finish_task(&w1, &train.key, outcome, now + 4).await,
                _ => unreachable!(),
            };
            let error = refused.expect_err(name).to_string();
            assert!(error.contains(expected), "{name}: {error}");
            let record = control.job(Scope::Every, &job).await.expect("job");
            assert!(matches!(&record.state, JobState::Failed { reason } if reason.contains(expected)), "{name}: {:?}", record.state);
            assert!(record.epochs.is_empty() && record.rounds.iter().all(|r| r.model.is_none()), "{name}: nothing of the report is kept");
            now += 10;
        }
        let reloaded = ControlPlane::load(settings(), store, now).await.expect("reload");
        assert_eq!(reloaded.jobs_page(Scope::Every, None, 100).await.0.len(), 5, "every record reads back");
    }

    #[test]
    fn a_stored_record_reads_back_every_float_exactly() {
        // A coordinator that takes over reads the job from the store: the class prior and
        // weights it hands the next task must be the ones computed, to the last bit.
        let mut job = JobRecord::submitted(JobId::new("j"), JobSpec::for_dataset("/d"), String::new(), PathBuf::from("/a"), 0);
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        let prior: Vec<f64> = (0..1000).map(|_| next()).collect();
        job.rounds.push(crate::model::RoundRecord { round: 1, class_prior: prior, class_weights: vec![next(), next()], ..Default::default() });
        let Write::Put { value, .. } = encode("k", &job).expect("encode") else { panic!("encode writes a put") };
        let read: JobRecord = decode("k", &value).expect("decode");
        assert_eq!(read, job);
    }

    #[tokio::test]
    async fn the_shard_plan_is_kept_in_the_job_record_and_a_reloaded_coordinator_carries_it_on() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let control = ControlPlane::load(settings(), store.clone(), 0).await.expect("load");
        let cpu = || vec![Slot { device: Device::Cpu, name: "cpu".into() }];
        let [w1, w2, w3] = ["w1", "w2", "w3"].map(WorkerId::new);
        for id in [&w1, &w2] {
            control.register(id.clone(), "h".into(), cpu(), 0).await.expect("register");
        }
        let job = control.submit("version = 1\ndataset = \"/d\"\n[semi_supervised]\nrounds = 1\n", "alice", 1).await.expect("submit").id;
        // The one task of each phase goes to whichever worker asks first: (worker, task).
        let next_task = |now_ms: u64| {
            let control = &control;
            let (w1, w2) = (w1.clone(), w2.clone());
            async move {
                let on_w1 = heartbeat(control, &w1, now_ms).await;
                let on_w2 = heartbeat(control, &w2, now_ms).await;
                if on_w1.is_empty() {
                    (w2, on_w2[0].clone())
                } else {
                    (w1, on_w1[0].clone())
                }
            }
        };
        let (preparer, prepare) = next_task(2).await;
        let shards = (0..6).map(|i| feral_common::task::ShardRef { file: format!("u{i}.safetensors"), samples: 10 }).collect();
        let summary = DatasetSummary { class_names: vec!["a".into(), "b".into()], train_samples: 4, val_samples: 4, unlabeled_shards: shards };
        control.finish_task(&preparer, &prepare.key, TaskOutcome::Prepared(summary), 3).await.expect("prepared");
        let (trainer, teacher) = next_task(4).await;
        let model = TrainedModel { model_path: teacher.artifact_dir.join("r0/a1/model.safetensors").display().to_string(), ..teacher_model() };
        control.finish_task(&trainer, &teacher.key, TaskOutcome::Trained(model), 5).await.expect("trained");
        let plan = control.job(Scope::Every, &job).await.expect("job").shard_plan;
        assert_eq!(plan.len(), 6, "every pool shard is planned: {plan:?}");
        assert_eq!(plan.values().filter(|w| **w == w1.to_string()).count(), 3, "{plan:?}");

        // A new coordinator on the same store (a restart, a standby taking over) has the plan,
        // and a worker joining moves only the shards it takes.
        drop(control);
        let control = ControlPlane::load(settings(), store, 10).await.expect("reload");
        assert_eq!(control.job(Scope::Every, &job).await.expect("job").shard_plan, plan);
        control.register(w3.clone(), "h".into(), cpu(), 11).await.expect("register");
        heartbeat(&control, &w3, 12).await;
        let replanned = control.job(Scope::Every, &job).await.expect("job").shard_plan;
        let moved: Vec<&String> = plan.keys().filter(|s| plan[*s] != replanned[*s]).collect();
        assert_eq!(moved.len(), 2, "w3 takes its third: {replanned:?}");
        assert!(moved.iter().all(|s| replanned[*s] == w3.to_string()), "{replanned:?}");
    }
}

#[cfg(test)]
mod records {
    //! The store never holds a value it cannot read back: for every record type, arbitrary
    //! values either round-trip exactly or are refused before they are written.
    use super::*;
    use crate::model::{Slot, TaskState};
    use feral_common::ids::{Attempt, Rank, Round};
    use feral_common::metrics::MetricsSummary;
    use feral_common::task::{EpochReport, TaskKind};
    use proptest::prelude::*;

    fn round_trips<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) -> Result<bool, TestCaseError> {
        match encode("jobs/job-1", value) {
            Ok(Write::Put { value: bytes, .. }) => {
                let read: T = decode("jobs/job-1", &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&read, value);
                Ok(true)
            }
            Ok(Write::Delete { .. }) => Err(TestCaseError::fail("encode answered a delete")),
            Err(_) => Ok(false),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn a_job_record_reads_back_exactly_or_is_refused(
            (loss, f1, seconds) in (any::<f64>(), any::<f64>(), any::<f64>()),
            per_class in prop::collection::vec(any::<f64>(), 0..4),
            (epoch, samples, created) in (any::<u32>(), any::<u64>(), any::<u64>()),
            (text, owner) in ("\\PC*|.*", proptest::option::of(".*")),
        ) {
            let spec = JobSpec::from_toml("version = 1\ndataset = \"/d\"\n").expect("spec");
            let mut job = JobRecord::submitted(JobId::new("job-1"), spec, text.clone(), PathBuf::from(&text), created);
            let validation = MetricsSummary { accuracy: f1, macro_f1: f1, per_class_f1: per_class.clone(), confusion: vec![samples], samples };
            job.epochs.push(EpochReport { round: Round(epoch), epoch, train_loss: loss, train_accuracy: f1, validation, seconds, images_per_second: seconds });
            job.tasks[0].state = TaskState::Failed { reason: text.clone() };
            job.last_failure = Some(text.clone());
            job.owner = owner;
            let finite = [loss, f1, seconds].iter().chain(&per_class).all(|v| v.is_finite());
            // Refused only for what JSON cannot hold; everything else reads back as written.
            prop_assert_eq!(round_trips(&job)?, finite);
        }

        #[test]
        fn a_worker_record_reads_back_exactly(id in ".*", hostname in ".*", cuda in proptest::option::of(any::<u32>()), name in ".*", at in any::<u64>()) {
            let device = cuda.map_or(Device::Cpu, Device::Cuda);
            let record = WorkerRecord { id: WorkerId::new(id), hostname, slots: vec![Slot { device, name }], state: WorkerState::Lost, registered_at_ms: at };
            prop_assert!(round_trips(&record)?);
        }
    }

    /// A job stored before task keys (each task with an `id` text, some without `rank` or
    /// `world_size`) reads back with the same tasks, now found by their keys; its devices,
    /// stored as text, read as devices, and a device no slot can name is refused.
    #[test]
    fn a_job_stored_before_task_keys_reads_back_with_its_tasks() {
        let spec = JobSpec::from_toml("version = 1\ndataset = \"/d\"\n").expect("spec");
        let mut job = JobRecord::submitted(JobId::new("job-1"), spec, String::new(), PathBuf::from("/a/job-1"), 0);
        job.tasks[0].state = TaskState::Assigned { worker: WorkerId::new("w1"), device: Device::Cuda(1) };
        let Ok(Write::Put { value, .. }) = encode("jobs/job-1", &job) else { panic!("encodes") };
        let mut old: serde_json::Value = serde_json::from_slice(&value).expect("json");
        let task = &mut old["tasks"][0];
        assert_eq!(task["state"]["Assigned"]["device"], "cuda:1", "a device is stored as its text");
        task["id"] = "job-1/r0/prepare/a1".into();
        task.as_object_mut().expect("object").retain(|field, _| field != "rank" && field != "world_size");
        let read: JobRecord = decode("jobs/job-1", &serde_json::to_vec(&old).expect("bytes")).expect("an old record reads");
        assert_eq!(read, job);
        let key = TaskKey { job: JobId::new("job-1"), round: Round(0), kind: TaskKind::Prepare, shard: None, attempt: Attempt(1), rank: Rank(0) };
        assert_eq!(read.task(&key), Some(&job.tasks[0]));
        old["tasks"][0]["state"]["Assigned"]["device"] = "tpu:0".into();
        let error = decode::<JobRecord>("jobs/job-1", &serde_json::to_vec(&old).expect("bytes")).expect_err("no such device");
        assert!(error.to_string().contains("`cpu` or `cuda:N`"), "{error}");
    }
}
