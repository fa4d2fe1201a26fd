//! The task contract between the coordinator and its workers, in domain terms: what a
//! worker is asked to run ([`Assignment`]), the one key that names a task from the
//! coordinator's record to the worker's last report ([`TaskKey`]), what a finished task produced ([`TaskOutcome`]) and what each training
//! epoch reports ([`EpochReport`]). Both sides use these types; `feral-proto` holds the
//! only conversions to and from the wire.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{Attempt, JobId, Rank, Round, ShardId};
pub use crate::method::{MaskAudit, SelectionSummary};
use crate::metrics::MetricsSummary;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaskKind {
    /// Open the dataset, verify its shards, describe it.
    Prepare,
    /// Train a round's model (the teacher in round 0, a student after).
    Train,
    /// Predict one unlabelled shard with the previous round's model.
    Infer,
    /// Choose the round's pseudo-labels from all predictions.
    Select,
}

impl TaskKind {
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Prepare => "prepare",
            TaskKind::Train => "train",
            TaskKind::Infer => "infer",
            TaskKind::Select => "select",
        }
    }
}

/// A device slot a task runs on: `cpu` or `cuda:N`. Stored and sent as that text, read
/// where it enters (a worker's registration, a stored record, an assignment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde_with::SerializeDisplay, serde_with::DeserializeFromStr)]
pub enum Device {
    Cpu,
    Cuda(u32),
}

impl Device {
    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

/// A text that names no device (read after "device … ").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("must be `cpu` or `cuda:N`, got {0:?}")]
pub struct DeviceError(pub String);

impl FromStr for Device {
    type Err = DeviceError;

    fn from_str(text: &str) -> Result<Self, DeviceError> {
        if text == "cpu" {
            return Ok(Device::Cpu);
        }
        text.strip_prefix("cuda:").and_then(|n| n.parse::<u32>().ok()).map(Device::Cuda).ok_or_else(|| DeviceError(text.to_owned()))
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

/// What a task needs beyond the job spec.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskInputs {
    /// Train: the model to start from; Infer: the model to predict with.
    pub init_model: Option<PathBuf>,
    /// Train: sampling weight per class of the labelled data; empty: uniform.
    pub class_weights: Vec<f64>,
    /// Select, and Train in rounds ≥ 1: the pool's class prior.
    pub class_prior: Vec<f64>,
    /// Infer: the one shard to predict. Select: the prediction files of the round.
    pub shards: Vec<String>,
    /// Train in rounds ≥ 1: the round's selected pseudo-labels.
    pub selection_file: Option<PathBuf>,
    /// Train: the round's checkpoints the coordinator recorded (an epoch reported by the
    /// attempt that wrote it), newest first. A new attempt resumes from the first whole one
    /// and from no other (docs/design.md §3, Checkpoints).
    pub resume_from: Vec<CheckpointRef>,
}

/// One recorded epoch-end checkpoint of a round: the epoch, and the attempt that wrote it
/// (under `<artifacts>/r<round>/a<attempt>/checkpoint-e<epoch>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CheckpointRef {
    pub attempt: Attempt,
    pub epoch: u32,
}

/// One task, named the same way from the coordinator's record to the worker's last report,
/// field by field on the wire and never parsed out of a text: its job, round and kind, the
/// shard an infer task predicts, the attempt, and the rank in a data-parallel gang.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskKey {
    pub job: JobId,
    pub round: Round,
    pub kind: TaskKind,
    /// The unlabelled shard an `Infer` task predicts; `None` for every other kind.
    pub shard: Option<ShardId>,
    pub attempt: Attempt,
    /// Its rank in its data-parallel gang; 0 when it runs alone.
    pub rank: Rank,
}

/// For logs and messages: `<job>/r<round>/<kind>[/<shard>]/a<attempt>[/rank<rank>]`, the
/// rank shown for training tasks.
impl fmt::Display for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/r{}/{}", self.job, self.round, self.kind.name())?;
        if let Some(shard) = &self.shard {
            write!(f, "/{}", shard.as_str().trim_end_matches(".safetensors"))?;
        }
        write!(f, "/a{}", self.attempt)?;
        if self.kind == TaskKind::Train {
            write!(f, "/rank{}", self.rank)?;
        }
        Ok(())
    }
}

/// A task as the coordinator hands it to the worker that runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    pub key: TaskKey,
    /// The size of the task's data-parallel gang (1: alone).
    pub world_size: u32,
    /// The job spec as the user wrote it (TOML).
    pub spec_toml: String,
    /// Where the task writes its files; a path the worker can see.
    pub artifact_dir: PathBuf,
    /// Who submitted the job (its token's name; empty for a job stored before owners).
    pub owner: String,
    pub device: Device,
    pub inputs: TaskInputs,
}

/// One finished epoch of a training task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    pub round: Round,
    pub epoch: u32,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub validation: MetricsSummary,
    pub seconds: f64,
    /// Images trained on per second in the epoch's steps, by every rank together
    /// (labelled, unlabelled and pseudo-labelled; validation not counted).
    #[serde(default)]
    pub images_per_second: f64,
}

/// What a `Prepare` task found in the dataset.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetSummary {
    pub class_names: Vec<String>,
    pub train_samples: u64,
    pub val_samples: u64,
    /// Unlabelled shard files with their sample counts, in manifest order.
    pub unlabeled_shards: Vec<ShardRef>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRef {
    pub file: String,
    pub samples: u64,
}

/// A trained round's model, its validation (and test) metrics, and for online student
/// rounds what the online pseudo-labeller passed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainedModel {
    /// The round's metrics: the temporal encoder's on video datasets.
    pub validation: MetricsSummary,
    pub model_path: String,
    pub class_names: Vec<String>,
    /// Video datasets: the backbone's own frame-by-frame metrics.
    #[serde(default)]
    pub frame_validation: Option<MetricsSummary>,
    /// The same model's metrics on the dataset's test split: only reported, never used to
    /// choose a round. `None` without a test split, and in records stored before it existed.
    #[serde(default)]
    pub test: Option<MetricsSummary>,
    /// Student rounds trained with online pseudo-labels: pool samples the EMA model labelled,
    /// how many passed the thresholds, and their precision where hidden labels are known.
    /// `None` for the teacher, offline rounds, and records stored before it existed.
    #[serde(default)]
    pub online: Option<MaskAudit>,
}

/// One shard's share of the class prior: Σ_i p_i,c over its samples, and how many.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferPartial {
    pub probability_sums: Vec<f64>,
    pub samples: u64,
    pub predictions_file: String,
}

/// What a finished task produced, of the task's kind.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskOutcome {
    Prepared(DatasetSummary),
    Trained(TrainedModel),
    Inferred(InferPartial),
    Selected(SelectionSummary),
}

impl TaskOutcome {
    pub fn kind(&self) -> TaskKind {
        match self {
            TaskOutcome::Prepared(_) => TaskKind::Prepare,
            TaskOutcome::Trained(_) => TaskKind::Train,
            TaskOutcome::Inferred(_) => TaskKind::Infer,
            TaskOutcome::Selected(_) => TaskKind::Select,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_read_and_print_as_slots_name_them() {
        for text in ["cpu", "cuda:0", "cuda:7"] {
            assert_eq!(text.parse::<Device>().expect(text).to_string(), text);
        }
        for bad in ["", "gpu", "cuda:", "cuda:-1", "cuda:x", "CPU"] {
            let error = bad.parse::<Device>().expect_err(bad).to_string();
            assert!(error.contains("`cpu` or `cuda:N`"), "{error}");
        }
    }
}
