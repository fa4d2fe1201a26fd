//! Workers as the coordinator remembers them.

use feral_common::ids::WorkerId;
use feral_common::task::Device;
use serde::{Deserialize, Serialize};

/// One device a worker trains on: `cpu` or `cuda:N`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub device: Device,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerState {
    Live,
    /// No heartbeat within the lease; its tasks were given to others.
    Lost,
}

/// What is persisted of a worker. Heartbeat times live in memory only: a restarted
/// coordinator gives every known worker a fresh lease instead of trusting stale clocks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub id: WorkerId,
    pub hostname: String,
    pub slots: Vec<Slot>,
    pub state: WorkerState,
    pub registered_at_ms: u64,
}
