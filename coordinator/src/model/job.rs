//! A job, its tasks, and the pure state machine `JobRecord::on_event`. (Long on purpose:
//! the machine is one match over every state and event, which reads best whole; the
//! checks of workers' reports are in `job/reports.rs`.)
//!
//! `Queued → Preparing → Training(0) → [PseudoLabeling(r) → Selecting(r) → Training(r)]*
//! → Succeeded`, with `Failed(reason)` and `Cancelled` reachable from every live state.
//! Round 0 trains the teacher; each later round predicts the unlabelled shards with the
//! previous model (one task per shard, in parallel), estimates the pool's class prior
//! exactly from the shards' partial sums, selects debiased pseudo-labels, and trains a
//! student. The final model is the best round by validation macro-F1. A task lost with its
//! worker is queued again as a new attempt until `resources.max_attempts` is spent.
//!
//! An elastic gang (`resources.min_workers` below its full size) is placed with as many
//! ranks as there are free slots, down to `min_workers` ([`JobEvent::GangShrunk`]): after a
//! lost rank it goes on from its checkpoint with the ranks that remain. When slots are free
//! again at an epoch boundary, the short gang stops and starts again whole from the
//! checkpoint just written ([`JobEvent::GangGrows`]); that restart is a new attempt that
//! costs nothing of `max_attempts`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use feral_common::ids::{Attempt, JobId, Rank, Round, ShardId, WorkerId};
use feral_common::method;
use feral_common::metrics::MetricsSummary;
use feral_common::spec::JobSpec;
use serde::{Deserialize, Serialize};

use feral_common::task::{
    CheckpointRef, DatasetSummary, Device, EpochReport, InferPartial, SelectionSummary, TaskInputs, TaskKey, TaskKind, TaskOutcome, TrainedModel,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobState {
    /// Waiting for a worker with a free slot.
    Queued,
    Preparing,
    Training,
    PseudoLabeling,
    Selecting,
    Succeeded,
    Failed {
        reason: String,
    },
    Cancelled {
        reason: String,
    },
}

impl JobState {
    /// The state's one name, as `/metrics` labels and messages spell it.
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Preparing => "preparing",
            JobState::Training => "training",
            JobState::PseudoLabeling => "pseudo_labeling",
            JobState::Selecting => "selecting",
            JobState::Succeeded => "succeeded",
            JobState::Failed { .. } => "failed",
            JobState::Cancelled { .. } => "cancelled",
        }
    }

    pub fn is_final(&self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed { .. } | JobState::Cancelled { .. })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TaskState {
    Pending,
    Assigned {
        worker: WorkerId,
        device: Device,
    },
    Finished,
    Failed {
        reason: String,
    },
    /// Stopped by a cancel, or abandoned with a lost worker.
    Abandoned,
}

/// One attempt of one task of a job. Its key is the job's id and these fields
/// ([`TaskRecord::key`]); records stored before keys also hold an `id` text, which is
/// ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub kind: TaskKind,
    pub round: Round,
    /// The unlabelled shard an `Infer` task predicts.
    pub shard: Option<ShardId>,
    pub attempt: Attempt,
    /// This task's rank in its data-parallel gang, and the gang's size (1: no gang).
    #[serde(default)]
    pub rank: Rank,
    #[serde(default = "one")]
    pub world_size: u32,
    pub state: TaskState,
    /// How many of the attempts up to this one were an elastic gang growing back rather
    /// than a failure: they do not count against `resources.max_attempts`.
    #[serde(default)]
    pub regrowths: u32,
    /// Attempts before a `ResumeJob` that do not count against `resources.max_attempts`
    /// (a resumed job gets a fresh budget).
    #[serde(default)]
    pub forgiven: u32,
    /// A retry waits out its back-off: not placed before this time (ms since the epoch).
    #[serde(default)]
    pub not_before_ms: u64,
}

fn one() -> u32 {
    1
}

impl TaskRecord {
    fn new(kind: TaskKind, round: Round, shard: Option<ShardId>, attempt: Attempt) -> Self {
        Self { kind, round, shard, attempt, rank: Rank(0), world_size: 1, state: TaskState::Pending, regrowths: 0, forgiven: 0, not_before_ms: 0 }
    }

    /// The `world_size` rank tasks of one data-parallel gang.
    fn gang(kind: TaskKind, round: Round, attempt: Attempt, world_size: u32) -> Vec<Self> {
        let world_size = world_size.max(1);
        (0..world_size).map(|rank| Self { rank: Rank(rank), world_size, ..Self::new(kind, round, None, attempt) }).collect()
    }

    #[cfg(test)]
    pub fn gang_for_test(world_size: u32) -> Vec<Self> {
        Self::gang(TaskKind::Train, Round(0), Attempt::FIRST, world_size)
    }

    #[cfg(test)]
    pub fn infer_for_test(shard: &str) -> Self {
        Self::new(TaskKind::Infer, Round(1), Some(ShardId::new(shard)), Attempt::FIRST)
    }

    /// The task's key, as a worker names it in its reports.
    pub fn key(&self, job: &JobId) -> TaskKey {
        TaskKey { job: job.clone(), round: self.round, kind: self.kind, shard: self.shard.clone(), attempt: self.attempt, rank: self.rank }
    }

    /// Whether this is the task `key` names within its job (the job is the caller's to
    /// match).
    fn is(&self, key: &TaskKey) -> bool {
        self.kind == key.kind && self.round == key.round && self.shard == key.shard && self.attempt == key.attempt && self.rank == key.rank
    }

    /// Tasks of one gang (or one lone task) share this key.
    pub fn gang_key(&self) -> (TaskKind, Round, Option<&ShardId>, Attempt) {
        (self.kind, self.round, self.shard.as_ref(), self.attempt)
    }

    pub fn is_live(&self) -> bool {
        matches!(self.state, TaskState::Pending | TaskState::Assigned { .. })
    }

    pub fn worker(&self) -> Option<&WorkerId> {
        match &self.state {
            TaskState::Assigned { worker, .. } => Some(worker),
            _ => None,
        }
    }

    /// Attempts of this task that failed or were lost before this one.
    fn failures_before(&self) -> u32 {
        self.attempt.0.saturating_sub(1).saturating_sub(self.regrowths).saturating_sub(self.forgiven)
    }

    /// `reason` as the job's last failure names it: which task and attempt failed.
    fn failure(&self, reason: &str) -> String {
        format!("{} task of round {}, attempt {}: {reason}", self.kind.name(), self.round, self.attempt)
    }

    /// Whether the scheduler may place it at `now_ms`: pending, its back-off over.
    pub fn is_placeable(&self, now_ms: u64) -> bool {
        self.state == TaskState::Pending && self.not_before_ms <= now_ms
    }

    /// A number in [0, 1) that is the same for the same task of the same job: the jitter of
    /// its back-off, so that the pure model stays a function of its inputs.
    fn jitter(&self, job: &JobId) -> f64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        self.key(job).hash(&mut hasher);
        (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What one round produced, phase by phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: u32,
    /// Labelled-data sampling weights per class; empty for uniform.
    pub class_weights: Vec<f64>,
    /// Partial sums of predicted probabilities, by unlabelled shard (rounds >= 1).
    pub partials: BTreeMap<String, InferPartial>,
    /// The pool's class prior, once every shard is predicted.
    pub class_prior: Vec<f64>,
    pub selection: Option<SelectionSummary>,
    pub model: Option<TrainedModel>,
    /// The epoch-end checkpoints of this round's training that the coordinator recorded
    /// (each reported by the attempt that wrote it), oldest first, each epoch once: what a
    /// new attempt may resume from (docs/design.md §3, Checkpoints).
    #[serde(default)]
    pub checkpoints: Vec<CheckpointRef>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub validation: MetricsSummary,
    pub model_path: String,
    pub class_names: Vec<String>,
    #[serde(default)]
    pub best_round: u32,
    /// The best round's metrics on the dataset's test split (only reported; the round was
    /// chosen on `validation`). `None` without a test split, and in older records.
    #[serde(default)]
    pub test: Option<MetricsSummary>,
}

impl JobResult {
    /// What looks wrong with the saved model, for the user to see: that it has collapsed
    /// to one class ([`MetricsSummary::collapse`]); empty when nothing does.
    pub fn warnings(&self) -> Vec<String> {
        self.validation.collapse().map(|c| c.describe(&self.class_names)).into_iter().collect()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub spec: JobSpec,
    /// The spec as the user wrote it.
    pub spec_toml: String,
    pub state: JobState,
    pub round: Round,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub artifact_dir: PathBuf,
    pub tasks: Vec<TaskRecord>,
    pub epochs: Vec<EpochReport>,
    pub epochs_total: u32,
    // Fields added after the first release default when an older record is read.
    #[serde(default)]
    pub dataset: Option<DatasetSummary>,
    #[serde(default)]
    pub rounds: Vec<RoundRecord>,
    pub result: Option<JobResult>,
    /// Which worker predicts each unlabelled shard (shard file -> worker id): the shard
    /// planner's last plan, kept so that the next one, after a worker joined or left,
    /// moves only that worker's share (and survives a coordinator restart or fail-over).
    #[serde(default)]
    pub shard_plan: BTreeMap<String, String>,
    /// Why the last failed attempt of one of its tasks failed (shown while it retries).
    #[serde(default)]
    pub last_failure: Option<String>,
    /// Who submitted it (the name of the caller's token): a submitter sees and changes only
    /// its own jobs. None for a job stored before owners were recorded (admins only).
    #[serde(default)]
    pub owner: Option<String>,
}

/// What can happen to a job. Events about a task that is no longer live (a late report
/// from an old attempt, a repeated report) change nothing.
#[derive(Clone, Debug, PartialEq)]
pub enum JobEvent {
    TaskAssigned {
        task: TaskKey,
        worker: WorkerId,
        device: Device,
    },
    TaskProgress {
        task: TaskKey,
        worker: WorkerId,
        epoch: EpochReport,
        epochs_total: u32,
    },
    TaskFinished {
        task: TaskKey,
        worker: WorkerId,
        outcome: TaskOutcome,
    },
    TaskFailed {
        task: TaskKey,
        worker: WorkerId,
        reason: String,
        retryable: bool,
    },
    WorkerLost {
        worker: WorkerId,
    },
    CancelRequested {
        reason: String,
    },
    ShardsPlanned {
        plan: BTreeMap<String, String>,
    },
    /// The pending gang of `task` is placed with `world_size` ranks, fewer than it has
    /// (an elastic gang, never below `resources.min_workers`): its higher ranks go.
    GangShrunk {
        task: TaskKey,
        world_size: u32,
    },
    /// The short elastic gang of `task`, whose rank 0 has just written an epoch's
    /// checkpoint, stops so that it can start again whole from that checkpoint.
    GangGrows {
        task: TaskKey,
    },
}

impl JobRecord {
    /// A new job, queued with its first task: preparing (checking) the dataset.
    pub fn submitted(id: JobId, spec: JobSpec, spec_toml: String, artifact_dir: PathBuf, now_ms: u64) -> Self {
        let first = TaskRecord::new(TaskKind::Prepare, Round(0), None, Attempt::FIRST);
        let epochs_total = spec.train.epochs;
        Self {
            id,
            spec,
            spec_toml,
            state: JobState::Queued,
            round: Round(0),
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            artifact_dir,
            tasks: vec![first],
            epochs: Vec::new(),
            epochs_total,
            dataset: None,
            rounds: Vec::new(),
            result: None,
            shard_plan: BTreeMap::new(),
            last_failure: None,
            owner: None,
        }
    }

    /// What stands for the record stored under `key` (`jobs/<id>`) that does not decode:
    /// a failed job of that id, with what could be read of its owner, creation time and
    /// spec, whose reason says what happened and where the bytes are kept.
    pub fn unreadable(key: &str, bytes: &[u8], problem: &str, now_ms: u64) -> Self {
        let id = JobId::new(key.strip_prefix("jobs/").unwrap_or(key));
        let partial: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
        let text = |field: &str| partial.get(field).and_then(serde_json::Value::as_str).map(str::to_owned);
        let spec_toml = text("spec_toml").unwrap_or_default();
        let spec = JobSpec::from_toml(&spec_toml).unwrap_or_else(|_| JobSpec::for_dataset(""));
        let created = partial.get("created_at_ms").and_then(serde_json::Value::as_u64).unwrap_or(now_ms);
        let artifact_dir = text("artifact_dir").map(PathBuf::from).unwrap_or_default();
        let mut job = Self::submitted(id, spec, spec_toml, artifact_dir, created);
        job.tasks.clear();
        job.owner = text("owner");
        job.updated_at_ms = now_ms;
        job.state = JobState::Failed { reason: format!("its stored record cannot be read ({problem}); the bytes are kept under quarantine/{key}") };
        job
    }

    /// The task `key` names, when it is one of this job's.
    pub fn task(&self, key: &TaskKey) -> Option<&TaskRecord> {
        (key.job == self.id).then(|| self.tasks.iter().find(|t| t.is(key)))?
    }

    pub fn live_tasks(&self) -> impl Iterator<Item = &TaskRecord> {
        self.tasks.iter().filter(|t| t.is_live())
    }

    /// The workers running this job's tasks now.
    pub fn workers(&self) -> Vec<WorkerId> {
        let mut workers: Vec<WorkerId> = self.tasks.iter().filter_map(|t| t.worker().cloned()).collect();
        workers.sort();
        workers.dedup();
        workers
    }

    pub fn round_record(&self, round: Round) -> Option<&RoundRecord> {
        self.rounds.iter().find(|r| r.round == round.0)
    }

    /// What `task` needs beyond the spec, from the rounds before it. Debiasing off means
    /// no prior is passed: the worker then neither debiases labels nor adds margins.
    pub fn task_inputs(&self, task: &TaskRecord) -> TaskInputs {
        let semi = &self.spec.semi_supervised;
        let previous_model = task
            .round
            .0
            .checked_sub(1)
            .and_then(|previous| self.round_record(Round(previous)))
            .and_then(|r| r.model.as_ref())
            .map(|m| PathBuf::from(&m.model_path));
        let current = self.round_record(task.round).cloned().unwrap_or_default();
        let prior = if semi.debias { current.class_prior.clone() } else { Vec::new() };
        match task.kind {
            TaskKind::Prepare => TaskInputs::default(),
            TaskKind::Train => TaskInputs {
                init_model: previous_model.filter(|_| semi.init_from_teacher),
                class_weights: current.class_weights,
                class_prior: prior,
                shards: Vec::new(),
                selection_file: current.selection.map(|s| PathBuf::from(s.selection_file)),
                resume_from: current.checkpoints.iter().rev().copied().collect(),
            },
            TaskKind::Infer => TaskInputs { init_model: previous_model, shards: task.shard.iter().map(ToString::to_string).collect(), ..TaskInputs::default() },
            TaskKind::Select => {
                TaskInputs { class_prior: prior, shards: current.partials.values().map(|p| p.predictions_file.clone()).collect(), ..TaskInputs::default() }
            }
        }
    }

    /// When the job's next attempt may start, while a retry waits out its back-off.
    pub fn retry_at_ms(&self) -> Option<u64> {
        if self.state.is_final() {
            return None;
        }
        self.tasks.iter().filter(|t| t.state == TaskState::Pending && t.not_before_ms > 0).map(|t| t.not_before_ms).max()
    }

    /// Pseudo-labelling rounds planned after the teacher.
    pub fn rounds_planned(&self) -> u32 {
        u32::from(self.spec.semi_supervised.rounds)
    }

    /// Seconds of training left, at the mean epoch time so far: the epochs left in this
    /// round and in every round still planned. None once final or before the first epoch.
    /// Pseudo-labelling between rounds and the temporal phase are not counted, and
    /// `patience` may end the job sooner, so it is an estimate, not a promise.
    pub fn training_seconds_left(&self) -> Option<f64> {
        if self.state.is_final() {
            return None;
        }
        let last = self.epochs.last()?;
        let mean = self.epochs.iter().map(|e| e.seconds).sum::<f64>() / self.epochs.len() as f64;
        let this_round = if last.round == self.round { self.epochs_total.saturating_sub(last.epoch) } else { self.epochs_total };
        let later_rounds = self.rounds_planned().saturating_sub(self.round.0);
        Some(mean * (f64::from(this_round) + f64::from(later_rounds) * f64::from(self.spec.train.epochs)))
    }

    /// The job after `event`, or `None` when the event changes nothing. Pure: the caller
    /// persists the new record before it replaces the old one.
    pub fn on_event(&self, event: &JobEvent, now_ms: u64) -> Option<JobRecord> {
        if self.state.is_final() {
            return None;
        }
        let mut next = self.clone();
        let changed = match event {
            JobEvent::TaskAssigned { task, worker, device } => next.assign(task, worker, *device),
            JobEvent::TaskProgress { task, worker, epoch, epochs_total } => next.progress(task, worker, epoch, *epochs_total),
            JobEvent::TaskFinished { task, worker, outcome } => next.finish(task, worker, outcome),
            JobEvent::TaskFailed { task, worker, reason, retryable } => next.fail_task(task, worker, reason, *retryable, now_ms),
            JobEvent::WorkerLost { worker } => next.lose_worker(worker, now_ms),
            JobEvent::CancelRequested { reason } => {
                next.end_live_tasks();
                next.state = JobState::Cancelled { reason: reason.clone() };
                true
            }
            JobEvent::ShardsPlanned { plan } => {
                let changed = &next.shard_plan != plan;
                next.shard_plan = plan.clone();
                changed
            }
            JobEvent::GangShrunk { task, world_size } => next.shrink_gang(task, *world_size),
            JobEvent::GangGrows { task } => next.grow_gang(task),
        };
        changed.then(|| {
            next.updated_at_ms = now_ms;
            next
        })
    }

    /// The job failed, when its stored spec no longer passes validation (a record written
    /// before a bound existed, or edited in the store): loading it fails the job, not the
    /// service. `None` when the job is fine or already over.
    pub fn refused_on_load(&self, now_ms: u64) -> Option<JobRecord> {
        if self.state.is_final() {
            return None;
        }
        let problem = self.spec.validate().err()?;
        let mut next = self.clone();
        next.end_live_tasks();
        next.state = JobState::Failed { reason: format!("its stored spec is not valid: {problem}") };
        next.updated_at_ms = now_ms;
        Some(next)
    }

    fn task_mut(&mut self, key: &TaskKey) -> Option<&mut TaskRecord> {
        if key.job != self.id {
            return None;
        }
        self.tasks.iter_mut().find(|t| t.is(key))
    }

    /// The live task `key` if `worker` is the one running it.
    fn running_on(&mut self, key: &TaskKey, worker: &WorkerId) -> Option<&mut TaskRecord> {
        self.task_mut(key).filter(|t| t.worker() == Some(worker))
    }

    fn assign(&mut self, key: &TaskKey, worker: &WorkerId, device: Device) -> bool {
        let Some(task) = self.task_mut(key).filter(|t| t.state == TaskState::Pending) else { return false };
        task.state = TaskState::Assigned { worker: worker.clone(), device };
        if self.state == JobState::Queued {
            self.state = JobState::Preparing;
        }
        true
    }

    fn progress(&mut self, id: &TaskKey, worker: &WorkerId, epoch: &EpochReport, epochs_total: u32) -> bool {
        let Some(task) = self.running_on(id, worker) else { return false };
        let (round, attempt) = (task.round, task.attempt);
        // A resumed attempt reports epochs again from its checkpoint: keep the latest, so
        // the table holds each epoch of the model that is kept, once.
        self.epochs.retain(|e| !(e.round == round && e.epoch >= epoch.epoch));
        self.epochs.push(EpochReport { round, ..epoch.clone() });
        self.epochs_total = epochs_total;
        // The epoch's checkpoint is written before it is reported: from now on it is what
        // a new attempt of this round resumes from (and later ones of a replaced attempt
        // never are, since its reports change nothing).
        if let Some(record) = self.round_mut(round) {
            record.checkpoints.retain(|c| c.epoch < epoch.epoch);
            record.checkpoints.push(CheckpointRef { attempt, epoch: epoch.epoch });
        }
        true
    }

    fn finish(&mut self, id: &TaskKey, worker: &WorkerId, outcome: &TaskOutcome) -> bool {
        let Some(task) = self.running_on(id, worker) else { return false };
        if task.kind != outcome.kind() {
            return false;
        }
        task.state = TaskState::Finished;
        let (round, shard, rank) = (task.round, task.shard.clone(), task.rank);
        let finished = task.clone();
        match outcome {
            TaskOutcome::Prepared(summary) => self.prepared(summary),
            TaskOutcome::Trained(model) => {
                // Rank 0 holds the model; the round is trained when every rank is done.
                if rank == Rank(0) {
                    if let Some(record) = self.round_mut(round) {
                        record.model = Some(model.clone());
                    }
                }
                let gang_done = self.tasks.iter().filter(|t| t.gang_key() == finished.gang_key()).all(|t| t.state == TaskState::Finished);
                if gang_done {
                    self.trained(round);
                }
            }
            TaskOutcome::Inferred(partial) => self.inferred(round, shard.map(|s| s.to_string()).unwrap_or_default(), partial),
            TaskOutcome::Selected(selection) => {
                if let Some(record) = self.round_mut(round) {
                    record.selection = Some(selection.clone());
                }
                self.start_training(round);
            }
        }
        true
    }

    fn prepared(&mut self, summary: &DatasetSummary) {
        self.dataset = Some(summary.clone());
        if self.rounds_planned() > 0 && summary.unlabeled_shards.is_empty() {
            self.state = JobState::Failed {
                reason: format!(
                    "semi_supervised.rounds = {} needs an `unlabeled` split, and dataset {} has none",
                    self.rounds_planned(),
                    self.spec.dataset.display()
                ),
            };
            return;
        }
        self.rounds.push(RoundRecord { round: 0, ..RoundRecord::default() });
        self.start_training(Round(0));
    }

    fn trained(&mut self, round: Round) {
        let scores = self.macro_f1_by_round();
        let patience = self.spec.semi_supervised.patience;
        if round.0 < self.rounds_planned() && !method::should_stop(&scores, patience) {
            self.start_pseudo_labeling(Round(round.0 + 1));
        } else {
            self.finalize();
        }
    }

    fn inferred(&mut self, round: Round, shard: String, partial: &InferPartial) {
        let shards = self.dataset.as_ref().map_or(0, |d| d.unlabeled_shards.len());
        let Some(record) = self.round_mut(round) else { return };
        record.partials.insert(shard, partial.clone());
        if record.partials.len() < shards {
            return;
        }
        let sums: Vec<Vec<f64>> = record.partials.values().map(|p| p.probability_sums.clone()).collect();
        let counts: Vec<u64> = record.partials.values().map(|p| p.samples).collect();
        match method::class_prior(&sums, &counts) {
            Ok(prior) => {
                record.class_prior = prior;
                self.state = JobState::Selecting;
                self.tasks.push(TaskRecord::new(TaskKind::Select, round, None, Attempt::FIRST));
            }
            Err(error) => {
                self.end_live_tasks();
                self.state = JobState::Failed { reason: format!("round {round}: cannot estimate the class prior: {error}") };
            }
        }
    }

    fn start_training(&mut self, round: Round) {
        let semi = &self.spec.semi_supervised;
        let weights = match round.0.checked_sub(1).and_then(|previous| self.round_record(Round(previous))) {
            Some(previous) if semi.feedback => previous
                .model
                .as_ref()
                .map(|m| method::feedback_weights(&m.validation.per_class_f1, semi.feedback_lambda, semi.feedback_gamma, 1e-3))
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        if let Some(record) = self.round_mut(round) {
            record.class_weights = weights;
        }
        self.round = round;
        self.state = JobState::Training;
        let world_size = self.gang_size();
        self.tasks.extend(TaskRecord::gang(TaskKind::Train, round, Attempt::FIRST, world_size));
    }

    /// Ranks of a whole training gang.
    fn gang_size(&self) -> u32 {
        u32::from(self.spec.resources.full_gang())
    }

    /// Ranks of the training gang placed now (0: none).
    pub fn gang_ranks(&self) -> u32 {
        self.tasks.iter().filter(|t| t.kind == TaskKind::Train && t.worker().is_some()).map(|t| t.world_size).max().unwrap_or(0)
    }

    /// Whether `task` is a rank of a training gang running short of its full size, which
    /// could grow back at its next epoch boundary.
    pub fn is_short_gang(&self, task: &TaskRecord) -> bool {
        task.kind == TaskKind::Train && task.world_size < self.gang_size() && task.worker().is_some()
    }

    fn shrink_gang(&mut self, id: &TaskKey, world_size: u32) -> bool {
        let Some(task) = self.task(id).filter(|t| t.state == TaskState::Pending && t.kind == TaskKind::Train) else { return false };
        let key_task = task.clone();
        if world_size >= task.world_size || world_size < u32::from(self.spec.resources.min_gang()) {
            return false;
        }
        // Ranks beyond the new size never ran: they go, and the rest learn the new size.
        let in_gang = |t: &TaskRecord| t.gang_key() == key_task.gang_key();
        self.tasks.retain(|t| !(in_gang(t) && t.rank.0 >= world_size));
        for member in self.tasks.iter_mut().filter(|t| in_gang(t)) {
            member.world_size = world_size;
        }
        true
    }

    fn grow_gang(&mut self, id: &TaskKey) -> bool {
        let Some(task) = self.task(id).filter(|t| self.is_short_gang(t)).cloned() else { return false };
        self.abandon_gang(&task);
        let mut gang = TaskRecord::gang(TaskKind::Train, task.round, task.attempt.next(), self.gang_size());
        for member in &mut gang {
            member.regrowths = task.regrowths + 1;
        }
        self.tasks.extend(gang);
        true
    }

    fn start_pseudo_labeling(&mut self, round: Round) {
        self.round = round;
        self.state = JobState::PseudoLabeling;
        self.rounds.push(RoundRecord { round: round.0, ..RoundRecord::default() });
        let shards: Vec<ShardId> = self.dataset.iter().flat_map(|d| d.unlabeled_shards.iter().map(|s| ShardId::new(&s.file))).collect();
        for shard in shards {
            self.tasks.push(TaskRecord::new(TaskKind::Infer, round, Some(shard), Attempt::FIRST));
        }
    }

    fn finalize(&mut self) {
        let scores = self.macro_f1_by_round();
        let best = method::best_round(&scores).and_then(|i| self.rounds.get(i));
        match best.and_then(|r| r.model.as_ref().map(|m| (r.round, m))) {
            Some((round, model)) => {
                self.result = Some(JobResult {
                    validation: model.validation.clone(),
                    model_path: model.model_path.clone(),
                    class_names: model.class_names.clone(),
                    best_round: round,
                    test: model.test.clone(),
                });
                self.state = JobState::Succeeded;
            }
            None => self.state = JobState::Failed { reason: "no round produced a model".to_owned() },
        }
    }

    /// Validation macro-F1 of each trained round, in round order.
    fn macro_f1_by_round(&self) -> Vec<f64> {
        self.rounds.iter().filter_map(|r| r.model.as_ref().map(|m| m.validation.macro_f1)).collect()
    }

    fn round_mut(&mut self, round: Round) -> Option<&mut RoundRecord> {
        self.rounds.iter_mut().find(|r| r.round == round.0)
    }

    fn fail_task(&mut self, id: &TaskKey, worker: &WorkerId, reason: &str, retryable: bool, now_ms: u64) -> bool {
        let Some(task) = self.running_on(id, worker) else { return false };
        task.state = TaskState::Failed { reason: reason.to_owned() };
        let failed = task.clone();
        self.last_failure = Some(failed.failure(reason));
        if retryable {
            self.abandon_gang(&failed);
            self.retry(&failed, reason, now_ms);
        } else {
            self.end_live_tasks();
            self.state = JobState::Failed { reason: reason.to_owned() };
        }
        true
    }

    fn lose_worker(&mut self, worker: &WorkerId, now_ms: u64) -> bool {
        let lost: Vec<TaskRecord> = self.tasks.iter().filter(|t| t.worker() == Some(worker)).cloned().collect();
        let mut retried: Vec<(TaskKind, Round, Option<&ShardId>, Attempt)> = Vec::new();
        for task in &lost {
            let key = task.gang_key();
            if retried.contains(&key) {
                continue;
            }
            // A gang cannot go on without one of its ranks: the whole gang starts again.
            self.abandon_gang(task);
            let reason = format!("worker {worker} was lost");
            self.last_failure = Some(task.failure(&reason));
            self.retry(task, &reason, now_ms);
            retried.push(key);
        }
        !lost.is_empty()
    }

    /// Abandons every live task of `task`'s gang (just `task` when it has none).
    fn abandon_gang(&mut self, task: &TaskRecord) {
        for member in self.tasks.iter_mut().filter(|t| t.is_live() && t.gang_key() == task.gang_key()) {
            member.state = TaskState::Abandoned;
        }
    }

    /// Queues the next attempt of a task after its back-off, or fails the job when
    /// attempts are spent.
    fn retry(&mut self, task: &TaskRecord, reason: &str, now_ms: u64) {
        if self.state.is_final() {
            return;
        }
        let max_attempts = u32::from(self.spec.resources.max_attempts);
        let tried = task.failures_before() + 1;
        if tried >= max_attempts {
            self.end_live_tasks();
            let what = format!("{} task of round {}", task.kind.name(), task.round);
            self.state = JobState::Failed { reason: format!("{what}: {reason}; gave up after {tried} attempts") };
            return;
        }
        let delay = self.spec.resources.retry_delay(tried, task.jitter(&self.id));
        let not_before_ms = now_ms.saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        self.queue_attempt(task, task.attempt.next(), task.forgiven, not_before_ms);
    }

    /// Queues attempt `attempt` of `task` (the whole gang of a training task: placing it
    /// decides how many ranks it gets), not placed before `not_before_ms`.
    fn queue_attempt(&mut self, task: &TaskRecord, attempt: Attempt, forgiven: u32, not_before_ms: u64) {
        let mut next = if task.kind == TaskKind::Train {
            TaskRecord::gang(task.kind, task.round, attempt, self.gang_size())
        } else {
            vec![TaskRecord::new(task.kind, task.round, task.shard.clone(), attempt)]
        };
        for member in &mut next {
            member.regrowths = task.regrowths;
            member.forgiven = forgiven;
            member.not_before_ms = not_before_ms;
        }
        self.tasks.extend(next);
    }

    /// The job, failed or cancelled, going on from where it stopped: the tasks of the phase
    /// it stopped in are queued again as new attempts with a fresh budget (a training
    /// task resumes from the round's last recorded checkpoint). An error says why it
    /// cannot be resumed.
    pub fn resumed(&self, now_ms: u64) -> Result<JobRecord, reports::ResumeError> {
        if !matches!(self.state, JobState::Failed { .. } | JobState::Cancelled { .. }) {
            return Err(reports::ResumeError::NotStopped { job: self.id.clone(), state: self.state.name() });
        }
        // The phase it stopped in: its newest task that did not finish, and that task's
        // siblings of the same kind and round (a gang, or a round's inference shards).
        let Some(stopped) = self.tasks.iter().rev().find(|t| t.state != TaskState::Finished).cloned() else {
            let reason = match &self.state {
                JobState::Failed { reason } | JobState::Cancelled { reason } => reason.clone(),
                _ => String::new(),
            };
            return Err(reports::ResumeError::NothingToResume { job: self.id.clone(), reason });
        };
        let mut next = self.clone();
        next.state = match stopped.kind {
            TaskKind::Prepare => JobState::Queued,
            TaskKind::Train => JobState::Training,
            TaskKind::Infer => JobState::PseudoLabeling,
            TaskKind::Select => JobState::Selecting,
        };
        next.round = stopped.round;
        let newest_attempt = |shard: Option<&ShardId>| {
            self.tasks
                .iter()
                .filter(|t| t.kind == stopped.kind && t.round == stopped.round && t.shard.as_ref() == shard)
                .map(|t| t.attempt.0)
                .max()
                .unwrap_or(0)
        };
        if stopped.kind == TaskKind::Infer {
            // Every shard of the round not yet predicted.
            let done = next.round_record(stopped.round).map(|r| r.partials.clone()).unwrap_or_default();
            let mut shards: Vec<ShardId> =
                self.tasks.iter().filter(|t| t.kind == TaskKind::Infer && t.round == stopped.round).filter_map(|t| t.shard.clone()).collect();
            shards.sort();
            shards.dedup();
            for shard in shards.into_iter().filter(|s| !done.contains_key(s.as_str())) {
                let forgiven = newest_attempt(Some(&shard));
                let template = TaskRecord::new(TaskKind::Infer, stopped.round, Some(shard), Attempt::FIRST);
                next.queue_attempt(&template, Attempt(forgiven + 1), forgiven, now_ms);
            }
        } else {
            let forgiven = newest_attempt(stopped.shard.as_ref());
            let template = TaskRecord { regrowths: 0, ..stopped };
            next.queue_attempt(&template, Attempt(forgiven + 1), forgiven, now_ms);
        }
        next.updated_at_ms = now_ms;
        Ok(next)
    }

    fn end_live_tasks(&mut self) {
        for task in self.tasks.iter_mut().filter(|t| t.is_live()) {
            task.state = TaskState::Abandoned;
        }
    }
}

mod reports;
pub use reports::{Bound, ReportError, ResumeError};

#[cfg(test)]
mod tests;
