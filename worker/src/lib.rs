//! Feral's worker: it registers its devices with the coordinator, heartbeats, and runs each
//! assigned task on its own OS thread with libtorch (`tch`), never on the async runtime.
//! Progress and results go back over gRPC; the data is read from a path the worker sees.
// Unsafe code is denied everywhere but where it is the job: the NCCL bindings
// (`collective::nccl`), the autocast FFI (`train::precision`) and the TCP ring's one view of
// a tensor's memory as bytes (`FlatTensor::bytes_mut` in `collective::elements`); each block
// says why it is sound.
#![deny(unsafe_code)]

pub mod agent;
pub mod artifacts;
pub mod collective;
pub mod config;
pub mod confine;
pub mod error;
pub mod gang;
pub mod metrics;
pub mod runner;
pub mod saved;
pub mod selection;
pub mod task;
pub mod tasks;
pub mod train;

use feral_common::task::{Device, DeviceError};
use feral_proto::v1 as pb;

/// Why `--devices` names no usable list of slots.
#[derive(Debug, thiserror::Error)]
pub enum SlotsError {
    #[error("device {0}")]
    NotADevice(#[from] DeviceError),
    #[error("device {device} is listed twice")]
    ListedTwice { device: String },
}

/// The worker's slots from `--devices`: `auto` (every CUDA device, else the CPU), or a
/// comma-separated list such as `cpu` or `cuda:0,cuda:1`.
pub fn slots(devices: &str) -> Result<Vec<pb::Slot>, SlotsError> {
    let cpu = || pb::Slot { device: "cpu".into(), name: format!("cpu ({} threads)", tch::get_num_threads()) };
    let cuda = |index: usize| pb::Slot { device: format!("cuda:{index}"), name: format!("CUDA device {index}") };
    if devices == "auto" {
        let count = tch::Cuda::device_count().max(0) as usize;
        return Ok(if count == 0 { vec![cpu()] } else { (0..count).map(cuda).collect() });
    }
    let mut slots = Vec::new();
    for item in devices.split(',').map(str::trim) {
        let slot = match item.parse::<Device>()? {
            Device::Cpu => cpu(),
            Device::Cuda(index) => cuda(index as usize),
        };
        if slots.iter().any(|s: &pb::Slot| s.device == slot.device) {
            return Err(SlotsError::ListedTwice { device: item.to_owned() });
        }
        slots.push(slot);
    }
    Ok(slots)
}
