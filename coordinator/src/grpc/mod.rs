//! Thin gRPC adapters over the [`ControlPlane`](crate::control::ControlPlane): convert the
//! request, call the domain, convert the answer, map the error (one function, below).

mod convert;
mod jobs;
mod workers;

pub use jobs::{JobApi, MAX_PAGE_SIZE};
pub use workers::WorkerApi;

use crate::error::CoordinatorError;

/// The one place where domain errors become gRPC status codes.
pub fn to_status(error: CoordinatorError) -> tonic::Status {
    use tonic::Status;
    let message = error.to_string();
    match error {
        CoordinatorError::InvalidArgument(_) | CoordinatorError::InvalidSpec(_) | CoordinatorError::InvalidMessage(_) => Status::invalid_argument(message),
        CoordinatorError::JobNotFound(_) | CoordinatorError::WorkerNotFound(_) => Status::not_found(message),
        CoordinatorError::NotAssigned { .. } | CoordinatorError::NotResumable(_) => Status::failed_precondition(message),
        CoordinatorError::Store(_) => Status::unavailable(message),
        CoordinatorError::CorruptRecord { .. } => Status::internal(message),
    }
}

/// A required string field: present and not empty.
fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, CoordinatorError> {
    if value.trim().is_empty() {
        Err(CoordinatorError::required(field))
    } else {
        Ok(value)
    }
}
