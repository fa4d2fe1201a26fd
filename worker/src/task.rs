//! What every task of the worker shares, below both the short tasks (`crate::tasks`) and
//! training (`crate::train`): the context a task runs in, its error type with the one rule
//! for which failures are worth another attempt, and atomic file writes.

use std::path::{Path, PathBuf};

use feral_common::dataset::DatasetError;
use feral_common::spec::{JobSpec, SpecError};
use feral_common::task::Device;
use serde::Serialize;

use crate::collective::CollectiveError;
use crate::gang::GangError;
use crate::train::LoaderError;

/// What every task knows: the job, its round, where to write, where to compute.
#[derive(Clone, Debug)]
pub struct TaskContext {
    pub spec: JobSpec,
    pub round: u32,
    /// Which attempt of its task this is (1 for the first): a training task writes under
    /// its own `a<attempt>` directory of the round.
    pub attempt: u32,
    pub artifact_dir: PathBuf,
    pub device: tch::Device,
}

impl TaskContext {
    /// `<artifacts>/r<round>`: everything a round writes.
    pub fn round_dir(&self) -> PathBuf {
        self.artifact_dir.join(format!("r{}", self.round))
    }
}

/// The libtorch device of a slot.
pub fn torch_device(device: Device) -> tch::Device {
    match device {
        Device::Cpu => tch::Device::Cpu,
        Device::Cuda(index) => tch::Device::Cuda(index as usize),
    }
}

/// Why a task did not finish.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("the job spec cannot be used: {0}")]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("dataset {dir} cannot be used: {problem}")]
    UnusableDataset { dir: PathBuf, problem: String },
    #[error("file {path} is corrupt: {problem}")]
    Corrupt { path: PathBuf, problem: String },
    #[error("the task lacks its input: {0}")]
    MissingInput(&'static str),
    #[error("libtorch failed: {0}")]
    Torch(#[from] tch::TchError),
    #[error("gradient exchange failed: {0}")]
    Collective(#[from] CollectiveError),
    #[error("cannot join the gang: {0}")]
    Gang(#[from] GangError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("batch loader failed: {0}")]
    Loader(#[from] LoaderError),
    #[error("the job is too large for this worker: {0}")]
    TooLarge(String),
    #[error("cannot start a task thread: {0}")]
    Thread(std::io::Error),
    #[error("the task panicked: {0}")]
    Panicked(String),
    #[error("training diverged: the loss became {loss} in round {round}, epoch {epoch} (lower train.learning_rate, or check train.loss)")]
    Diverged { round: u32, epoch: u32, loss: f64 },
    /// Asked to stop (cancel, reassignment, shutdown): nothing to report.
    #[error("stopped before the end")]
    Stopped,
}

impl TaskError {
    /// Whether another attempt could succeed where this one failed: the one place that
    /// decides. A lost peer, a full disk, a port or a thread the machine could not give,
    /// libtorch failing at run time: yes. A bad spec or dataset, a missing input, a job too
    /// large for the worker, a panic: the same input fails the same way, so no.
    pub fn is_retryable(&self) -> bool {
        match self {
            TaskError::Torch(_) | TaskError::Collective(_) | TaskError::Write { .. } | TaskError::Thread(_) => true,
            TaskError::Gang(error) => error.is_retryable(),
            TaskError::Spec(_)
            | TaskError::Dataset(_)
            | TaskError::UnusableDataset { .. }
            | TaskError::Corrupt { .. }
            | TaskError::MissingInput(_)
            | TaskError::Loader(_)
            | TaskError::TooLarge(_)
            | TaskError::Panicked(_)
            | TaskError::Diverged { .. }
            | TaskError::Stopped => false,
        }
    }
}

/// Creates `dir` with its parents, naming it on failure.
pub fn create_dir(dir: &Path) -> Result<(), TaskError> {
    std::fs::create_dir_all(dir).map_err(|source| TaskError::Write { path: dir.to_path_buf(), source })
}

/// Writes `value` as pretty JSON to `path`, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TaskError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| TaskError::Write { path: path.to_path_buf(), source: std::io::Error::new(std::io::ErrorKind::InvalidData, e) })?;
    write_atomically(path, |partial| std::fs::write(partial, text).map_err(|source| TaskError::Write { path: partial.to_path_buf(), source }))
}

/// Writes `path` by `write` under a temporary name beside it (`.partial-<name>`, which
/// keeps the extension that libtorch chooses its format by), then renames it into place:
/// a crash leaves the previous file or the new one whole, never a torn one, and a write that
/// fails removes what it wrote.
pub fn write_atomically<E: Into<TaskError>>(path: &Path, write: impl FnOnce(&Path) -> Result<(), E>) -> Result<(), TaskError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let partial = path.with_file_name(format!(".partial-{name}"));
    let written = write(&partial).map_err(Into::into).and_then(|()| std::fs::rename(&partial, path).map_err(|source| TaskError::Write { path: path.to_path_buf(), source }));
    if written.is_err() {
        // A failed write (a full disk) leaves nothing that holds the space.
        let _ = std::fs::remove_file(&partial);
    }
    written
}
