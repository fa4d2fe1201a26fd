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

/// The value of a required string field (see [`feral_proto::required`]).
fn required<'a>(value: &'a str, field: &'static str) -> Result<&'a str, CoordinatorError> {
    Ok(feral_proto::required(value, field)?)
}
