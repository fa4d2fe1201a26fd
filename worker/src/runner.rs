//! What the agent runs for a task, behind a narrow trait so that the agent can be tested
//! with a scripted runner and the real one computes with libtorch.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use feral_common::spec::JobSpec;
use feral_common::task::{Assignment, EpochReport, TaskKind, TaskOutcome};

use crate::collective::Collective;
use crate::error::TaskError;
use crate::metrics::WorkerMetrics;
use crate::task::{torch_device, TaskContext};
use crate::tasks;
use crate::train::{self, TrainTask};

pub trait TaskRunner: Send + Sync + 'static {
    /// Runs `task` on the calling thread; a training task exchanges gradients through
    /// `collective` (connected to the other ranks of its gang). `on_epoch` is called after
    /// each training epoch with the round's epoch count; `stop` is raised when the task
    /// must end early.
    fn run(
        &self,
        task: &Assignment,
        collective: &mut dyn Collective,
        on_epoch: &mut dyn FnMut(EpochReport, u32),
        stop: &AtomicBool,
    ) -> Result<TaskOutcome, TaskError>;
}

/// Computes with libtorch; training records into `metrics`.
#[derive(Debug, Default)]
pub struct TchRunner {
    pub metrics: Arc<WorkerMetrics>,
}

impl TchRunner {
    pub fn observed(metrics: Arc<WorkerMetrics>) -> Self {
        Self { metrics }
    }
}

impl TaskRunner for TchRunner {
    fn run(
        &self,
        task: &Assignment,
        collective: &mut dyn Collective,
        on_epoch: &mut dyn FnMut(EpochReport, u32),
        stop: &AtomicBool,
    ) -> Result<TaskOutcome, TaskError> {
        let spec = JobSpec::from_toml(&task.spec_toml)?;
        let context = TaskContext {
            spec,
            round: task.key.round.0,
            attempt: task.key.attempt,
            artifact_dir: task.artifact_dir.clone(),
            device: torch_device(task.device),
        };
        let inputs = &task.inputs;
        Ok(match task.key.kind {
            TaskKind::Prepare => TaskOutcome::Prepared(tasks::prepare(&context)?),
            TaskKind::Infer => {
                let model = inputs.init_model.as_deref().ok_or(TaskError::MissingInput("an infer task needs a model"))?;
                let shard = inputs.shards.first().ok_or(TaskError::MissingInput("an infer task needs a shard"))?;
                TaskOutcome::Inferred(tasks::infer(&context, model, shard, stop)?)
            }
            TaskKind::Select => TaskOutcome::Selected(tasks::select(&context, &inputs.shards, &inputs.class_prior)?),
            TaskKind::Train => {
                let train_task = TrainTask { context, inputs: inputs.clone() };
                TaskOutcome::Trained(train::train(&train_task, collective, on_epoch, stop, &self.metrics)?)
            }
        })
    }
}
