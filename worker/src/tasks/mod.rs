//! The short tasks of a round: preparing (checking) the dataset, predicting one unlabelled
//! shard, and selecting the round's pseudo-labels. Training lives in `crate::train`.

mod infer;
mod prepare;
mod select;

use std::path::{Path, PathBuf};

use feral_common::spec::JobSpec;
use tch::Device;

pub use infer::{infer, InferOutput};
pub use prepare::{prepare, PrepareOutput};
pub use feral_common::method::SelectionSummary;
pub use select::{read_selection, select, PseudoLabels};

/// What every task knows: the job, its round, where to write, where to compute.
#[derive(Clone, Debug)]
pub struct TaskContext {
    pub spec: JobSpec,
    pub round: u32,
    pub artifact_dir: PathBuf,
    pub device: Device,
}

impl TaskContext {
    /// `<artifacts>/r<round>`: everything a round writes.
    pub fn round_dir(&self) -> PathBuf {
        self.artifact_dir.join(format!("r{}", self.round))
    }
}

/// Creates `dir` with its parents, naming it on failure.
pub fn create_dir(dir: &Path) -> Result<(), crate::train::TrainError> {
    std::fs::create_dir_all(dir).map_err(|source| crate::train::TrainError::Write { path: dir.to_path_buf(), source })
}
