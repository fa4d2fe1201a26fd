//! The context every task of the worker runs in: its job, round, attempt, where it writes
//! and where it computes. A leaf: the short tasks (`crate::tasks`) and training
//! (`crate::train`) build on it; their one error type is in [`crate::error`].

use std::path::PathBuf;

use feral_common::ids::Attempt;
use feral_common::spec::JobSpec;
use feral_common::task::Device;

/// What every task knows: the job, its round, where to write, where to compute.
#[derive(Clone, Debug)]
pub struct TaskContext {
    pub spec: JobSpec,
    pub round: u32,
    /// Which attempt of its task this is (1 for the first): a training task writes under
    /// its own `a<attempt>` directory of the round.
    pub attempt: Attempt,
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
