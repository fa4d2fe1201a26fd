//! The coordinator's errors. Each says what was wrong in words a user can act on.

use feral_common::ids::{JobId, WorkerId};
use feral_common::spec::SpecError;
use feral_common::task::TaskKey;
use feral_proto::ContractError;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
    #[error(transparent)]
    InvalidMessage(#[from] ContractError),
    #[error("no job with id `{0}`")]
    JobNotFound(JobId),
    #[error("no worker with id `{0}`; register first")]
    WorkerNotFound(WorkerId),
    #[error("task {task} is not assigned to worker {worker}")]
    NotAssigned { task: TaskKey, worker: WorkerId },
    #[error(transparent)]
    NotResumable(#[from] crate::model::ResumeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored record `{key}` cannot be read: {problem}")]
    CorruptRecord { key: String, problem: String },
}

impl CoordinatorError {
    pub fn required(field: &str) -> Self {
        CoordinatorError::InvalidArgument(format!("field `{field}` is required"))
    }
}
