//! The check a training task makes before it allocates: does one step's activations fit
//! in the memory this worker has free? On a CPU, Linux lets an oversized allocation
//! succeed and then kills the whole worker process when the pages are touched, so a spec
//! within every range (`width = 512`, `batch_size = 4096`) could take the worker down.
//! The check refuses it first, with the sizes, as a failed attempt that is not retried.
//!
//! The estimate is a lower bound (saved activations only, no gradients, weights or
//! loader queues), so a job that fits is never refused. On CUDA the check is skipped:
//! libtorch's caching allocator refuses an oversized request with an error, which fails
//! the attempt the same way.

use feral_common::spec::{Arch, JobSpec};
use sysinfo::System;
use tch::Device;

use super::model;

/// Bytes a step of `spec` needs at least, per rank, for `[C, H, W]` images in `round`:
/// the labelled batch and, in student rounds (and a teacher's with `online_teacher`), the
/// μ·B unlabelled images that go through the student with gradients. Also returns the images per step.
pub fn step_bytes(spec: &JobSpec, image: [i64; 3], round: u32) -> (u64, u64) {
    let batch = spec.train.batch_size as u64;
    let unlabelled = if spec.semi_supervised.online_in_round(round) || round > 0 { (spec.semi_supervised.mu * batch as f64).round() as u64 } else { 0 };
    let images = batch + unlabelled;
    let bytes = model::activation_floats(&spec.model, image).saturating_mul(images).saturating_mul(4);
    (bytes, images)
}

/// Memory this process may still use, in bytes: the smaller of the machine's available
/// memory and what its cgroup (a container's limit) leaves free. `None` where unknown.
pub fn available_bytes() -> Option<u64> {
    let mut system = System::new();
    system.refresh_memory();
    let machine = Some(system.available_memory()).filter(|&b| b > 0);
    let cgroup = system.cgroup_limits().map(|limits| limits.free_memory).filter(|&b| b > 0);
    match (machine, cgroup) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (m, c) => m.or(c),
    }
}

/// A training step that needs more memory than the worker has free: the sizes, and what to lower.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a training step of {images} images of {}×{}×{} through {} (model.width = {width}) needs at least {} of memory, \
     and this worker has {} free: lower train.batch_size, semi_supervised.mu or model.width",
    image[0], image[1], image[2], arch.name(), gib(*needed), gib(*available)
)]
pub struct StepTooLarge {
    /// Images per step and rank (labelled and unlabelled).
    pub images: u64,
    /// `[C, H, W]`.
    pub image: [i64; 3],
    pub arch: Arch,
    pub width: u16,
    /// Bytes the step needs at least.
    pub needed: u64,
    /// Bytes this worker has free.
    pub available: u64,
}

/// Refuses a step that cannot fit on `device`, naming the sizes and what to lower.
pub fn check_step_fits(spec: &JobSpec, image: [i64; 3], round: u32, device: Device) -> Result<(), StepTooLarge> {
    if device.is_cuda() {
        return Ok(());
    }
    let Some(available) = available_bytes() else { return Ok(()) };
    let (needed, images) = step_bytes(spec, image, round);
    if needed <= available {
        return Ok(());
    }
    Err(StepTooLarge { images, image, arch: spec.model.arch, width: spec.model.width, needed, available })
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(arch: Arch, width: u16, batch_size: usize) -> JobSpec {
        let mut spec: JobSpec = toml::from_str("version = 1\ndataset = \"/d\"\n").expect("spec");
        spec.model.arch = arch;
        spec.model.width = width;
        spec.train.batch_size = batch_size;
        spec
    }

    #[test]
    fn the_estimate_counts_every_saved_map_of_the_compact_cnn() {
        // 48×48, width 32: stages of 32, 64 and 128 maps at 48², 24² and 12², six saved
        // maps each and the pooled output.
        let per_sample = model::activation_floats(&spec(Arch::CompactCnn, 32, 1).model, [1, 48, 48]);
        let expected = 6 * 32 * 48 * 48 + 32 * 24 * 24 + 6 * 64 * 24 * 24 + 64 * 12 * 12 + 6 * 128 * 12 * 12 + 128 * 6 * 6;
        assert_eq!(per_sample, expected);
        let (bytes, images) = step_bytes(&spec(Arch::CompactCnn, 32, 64), [1, 48, 48], 0);
        assert_eq!((bytes, images), (expected * 64 * 4, 64));
    }

    #[test]
    fn student_rounds_count_their_unlabelled_images() {
        let mut job = spec(Arch::Resnet18, 32, 64);
        job.semi_supervised.mu = 2.0;
        assert_eq!(step_bytes(&job, [1, 48, 48], 0).1, 64);
        assert_eq!(step_bytes(&job, [1, 48, 48], 1).1, 64 * 3);
    }

    #[test]
    fn a_default_job_fits_and_an_absurd_one_is_refused_with_its_sizes() {
        assert!(check_step_fits(&spec(Arch::CompactCnn, 32, 64), [1, 48, 48], 0, Device::Cpu).is_ok());
        // Hundreds of GiB for one step: more than any machine this runs on has free.
        let error = check_step_fits(&spec(Arch::CompactCnn, 512, 4096), [1, 48, 48], 0, Device::Cpu).expect_err("refused").to_string();
        assert!(error.contains("4096 images of 1×48×48") && error.contains("train.batch_size"), "{error}");
    }
}
