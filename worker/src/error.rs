//! Why a task did not finish, and the one rule for which failures are worth another
//! attempt. Above the leaves whose errors it gathers (files, the gang, the collective, the
//! batch loader); the leaves return their own errors and never this one.

use std::path::PathBuf;

use feral_common::dataset::DatasetError;
use feral_common::spec::SpecError;

use crate::artifacts::ArtifactError;
use crate::collective::CollectiveError;
use crate::gang::GangError;
use crate::train::loader::LoaderError;
use crate::train::{InitError, StepTooLarge};

/// Why a task did not finish.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("the job spec cannot be used: {0}")]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("dataset {dir} cannot be used: {problem}")]
    UnusableDataset { dir: PathBuf, problem: String },
    /// Reading or writing the task's files (a corrupt input, a full disk).
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(transparent)]
    Init(#[from] InitError),
    #[error("the task lacks its input: {0}")]
    MissingInput(&'static str),
    #[error("libtorch failed: {0}")]
    Torch(#[from] tch::TchError),
    #[error("gradient exchange failed: {0}")]
    Collective(#[from] CollectiveError),
    #[error("cannot join the gang: {0}")]
    Gang(GangError),
    #[error("batch loader failed: {0}")]
    Loader(#[from] LoaderError),
    #[error("the job is too large for this worker: {0}")]
    TooLarge(#[from] StepTooLarge),
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
            TaskError::Torch(_) | TaskError::Collective(_) | TaskError::Thread(_) => true,
            TaskError::Gang(error) => error.is_retryable(),
            TaskError::Artifact(error) | TaskError::Init(InitError::Unreadable(error)) => error.is_retryable(),
            TaskError::Spec(_)
            | TaskError::Dataset(_)
            | TaskError::UnusableDataset { .. }
            | TaskError::Init(_)
            | TaskError::MissingInput(_)
            | TaskError::Loader(_)
            | TaskError::TooLarge(_)
            | TaskError::Panicked(_)
            | TaskError::Diverged { .. }
            | TaskError::Stopped => false,
        }
    }
}

impl From<GangError> for TaskError {
    /// A rank told to stop while it joined its gang has nothing to report, like any task.
    fn from(error: GangError) -> Self {
        match error {
            GangError::Stopped => TaskError::Stopped,
            error => TaskError::Gang(error),
        }
    }
}
