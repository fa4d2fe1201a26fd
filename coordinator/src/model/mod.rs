//! The coordinator's domain model: jobs with their tasks and the pure state machine that
//! moves them, workers with their leases, and the pure scheduler that pairs them. Nothing
//! here touches a clock, a socket or the store: time comes in as `now_ms`.

mod job;
mod outcome;
mod scheduler;
mod worker;

pub use job::{EpochRecord, JobEvent, JobRecord, JobResult, JobState, RoundRecord, TaskInputs, TaskKind, TaskRecord, TaskState};
pub use outcome::{DatasetSummary, InferPartial, SelectionSummary, ShardRef, TaskOutcome, TrainedModel};
pub use scheduler::{schedule, waiting_reason, Assignment};
pub use worker::{Slot, WorkerRecord, WorkerState};
