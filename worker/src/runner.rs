//! What the agent runs for a task, behind a narrow trait so that the agent can be tested
//! with a scripted runner and the real one computes with libtorch.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use feral_common::spec::JobSpec;
use tch::Device;

use crate::collective::Collective;
use crate::tasks::{self, InferOutput, PrepareOutput, SelectionSummary};
use crate::train::{self, EpochReport, TrainError, TrainOutput, TrainTask};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    Prepare,
    Train,
    Infer,
    Select,
}

/// A task as the coordinator assigned it.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    pub task_id: String,
    pub job_id: String,
    pub kind: TaskKind,
    pub round: u32,
    pub attempt: u32,
    pub spec_toml: String,
    pub artifact_dir: PathBuf,
    pub device: String,
    /// Train: the model to start from; Infer: the model to predict with.
    pub init_model: Option<PathBuf>,
    pub class_weights: Vec<f64>,
    pub class_prior: Vec<f64>,
    /// Infer: the unlabelled shard; Select: the round's prediction files.
    pub shards: Vec<String>,
    pub selection_file: Option<PathBuf>,
    /// Train: this rank's place in its data-parallel gang (world size 1: alone).
    pub rank: u32,
    pub world_size: u32,
}

/// What a finished task produced.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskOutput {
    Prepared(PrepareOutput),
    Trained(TrainOutput),
    Inferred(InferOutput),
    Selected(SelectionSummary),
}

/// Why a task did not finish.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskFailure {
    /// Asked to stop (cancel, reassignment, shutdown): nothing to report.
    Stopped,
    Failed { reason: String, retryable: bool },
}

impl From<TrainError> for TaskFailure {
    fn from(error: TrainError) -> Self {
        match error {
            TrainError::Stopped => TaskFailure::Stopped,
            other => TaskFailure::Failed { retryable: other.is_retryable(), reason: other.to_string() },
        }
    }
}

pub trait TaskRunner: Send + Sync + 'static {
    /// Runs `task` on the calling thread; a training task exchanges gradients through
    /// `collective` (connected to the other ranks of its gang). `on_epoch` is called after
    /// each training epoch; `stop` is raised when the task must end early.
    fn run(
        &self,
        task: &Assignment,
        collective: &mut dyn Collective,
        on_epoch: &mut dyn FnMut(EpochReport),
        stop: &AtomicBool,
    ) -> Result<TaskOutput, TaskFailure>;
}

/// Computes with libtorch.
#[derive(Debug, Default)]
pub struct TchRunner;

impl TaskRunner for TchRunner {
    fn run(
        &self,
        task: &Assignment,
        collective: &mut dyn Collective,
        on_epoch: &mut dyn FnMut(EpochReport),
        stop: &AtomicBool,
    ) -> Result<TaskOutput, TaskFailure> {
        let not_retryable = |reason: String| TaskFailure::Failed { reason, retryable: false };
        let spec = JobSpec::from_toml(&task.spec_toml).map_err(|e| not_retryable(e.to_string()))?;
        let device = parse_device(&task.device).map_err(not_retryable)?;
        let context = tasks::TaskContext { spec, round: task.round, artifact_dir: task.artifact_dir.clone(), device };
        Ok(match task.kind {
            TaskKind::Prepare => TaskOutput::Prepared(tasks::prepare(&context)?),
            TaskKind::Infer => {
                let model = task.init_model.as_deref().ok_or_else(|| not_retryable("an infer task needs a model".into()))?;
                let shard = task.shards.first().ok_or_else(|| not_retryable("an infer task needs a shard".into()))?;
                TaskOutput::Inferred(tasks::infer(&context, model, shard, stop)?)
            }
            TaskKind::Select => TaskOutput::Selected(tasks::select(&context, &task.shards, &task.class_prior)?),
            TaskKind::Train => {
                let train_task = TrainTask {
                    context,
                    init_model: task.init_model.clone(),
                    class_weights: task.class_weights.clone(),
                    class_prior: task.class_prior.clone(),
                    selection_file: task.selection_file.clone(),
                };
                TaskOutput::Trained(train::train(&train_task, collective, on_epoch, stop)?)
            }
        })
    }
}

/// `cpu` or `cuda:N`.
pub fn parse_device(text: &str) -> Result<Device, String> {
    if text == "cpu" {
        return Ok(Device::Cpu);
    }
    text.strip_prefix("cuda:")
        .and_then(|n| n.parse::<usize>().ok())
        .map(Device::Cuda)
        .ok_or_else(|| format!("device must be `cpu` or `cuda:N`, got {text:?}"))
}
