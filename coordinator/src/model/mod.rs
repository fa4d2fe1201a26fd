//! The coordinator's domain model: jobs with their tasks and the pure state machine that
//! moves them, workers with their leases, and the pure scheduler that pairs them. Nothing
//! here touches a clock, a socket or the store: time comes in as `now_ms`.

mod cluster;
mod deadlines;
mod job;
mod scheduler;
mod worker;

pub use cluster::{Cluster, GangPeers, LiveWorker, Orders};
pub use deadlines::{Stuck, TaskClocks, TaskDeadlines};
pub use job::{Bound, JobEvent, JobRecord, JobResult, JobState, ReportError, ResumeError, RoundRecord, TaskRecord, TaskState};
pub use scheduler::{free_slot_count, replan, schedule, waiting_reason, Placement};
pub use worker::{Slot, WorkerRecord, WorkerState};
