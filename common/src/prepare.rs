//! Turning sources into dataset directories. For now: the synthetic expression dataset
//! that the demo and the tests train on (`feral prepare synthetic`).

use std::path::Path;

use crate::dataset::{DatasetError, DatasetWriter, ImageShape, Manifest, Sample, Split};
use crate::synthetic::{self, SyntheticConfig, CLASS_NAMES};

/// How a synthetic dataset is split.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticSplits {
    /// Fraction of all samples held out for validation (with clean labels, as a curated
    /// test set would have).
    pub val_fraction: f64,
    /// Fraction of the validation samples (clips, for videos) moved to the test split, which
    /// is only reported; 0 writes no test split and leaves every other sample where it was.
    pub test_fraction: f64,
    /// Fraction of the rest that keeps its (noisy) label; the others form the unlabelled
    /// pool with their true labels hidden.
    pub labeled_fraction: f64,
    pub shard_size: usize,
}

impl Default for SyntheticSplits {
    fn default() -> Self {
        Self { val_fraction: 0.2, test_fraction: 0.0, labeled_fraction: 1.0, shard_size: 4096 }
    }
}

/// Generates and writes a synthetic dataset into `out`.
pub fn prepare_synthetic(out: &Path, config: &SyntheticConfig, splits: &SyntheticSplits) -> Result<Manifest, DatasetError> {
    let size = config.image_size;
    let shape = ImageShape { height: size, width: size, channels: 1 };
    let classes = CLASS_NAMES.iter().map(|c| (*c).to_owned()).collect();
    let mut writer = DatasetWriter::create(out, "synthetic", classes, shape, splits.shard_size)?;
    const CHUNK: usize = 2048;
    for start in (0..config.samples).step_by(CHUNK) {
        let end = (start + CHUNK).min(config.samples);
        for (offset, sample) in synthetic::generate(config, start..end).into_iter().enumerate() {
            let index = (start + offset) as u64;
            let (split, label, hidden) = assign(config.seed, index, sample.label, sample.true_label, splits);
            writer.push(split, Sample { pixels: &sample.pixels, label, sample_id: index as i64, hidden_label: hidden, video_id: None, frame_index: None })?;
        }
    }
    let source = format!("synthetic:{config:?}");
    writer.finish("synthetic", &format!("{:016x}", splitmix(source.len() as u64 ^ config.seed)))
}

/// Generates and writes a synthetic video dataset into `out`: `config.samples` frames in
/// clips of `frames_per_video` ([`synthetic::generate_video`]), every frame with its video
/// id and frame index. Whole clips are split, never frames.
pub fn prepare_synthetic_video(out: &Path, config: &SyntheticConfig, splits: &SyntheticSplits, frames_per_video: usize) -> Result<Manifest, DatasetError> {
    let size = config.image_size;
    let shape = ImageShape { height: size, width: size, channels: 1 };
    let classes = CLASS_NAMES.iter().map(|c| (*c).to_owned()).collect();
    let mut writer = DatasetWriter::create(out, "synthetic-video", classes, shape, splits.shard_size)?;
    let frames_per_video = frames_per_video.max(1);
    for video in 0..config.samples.div_ceil(frames_per_video) {
        let frames = frames_per_video.min(config.samples - video * frames_per_video);
        let clip = synthetic::generate_video(config, video, frames);
        let (split, _, _) = assign(config.seed, video as u64, 0, 0, splits);
        for (frame, sample) in clip.into_iter().enumerate() {
            let (label, hidden) = match split {
                Split::Val | Split::Test => (sample.true_label, None),
                Split::Train => (sample.label, None),
                Split::Unlabeled => (-1, Some(sample.true_label)),
            };
            let sample_id = (video * frames_per_video + frame) as i64;
            writer.push(
                split,
                Sample { pixels: &sample.pixels, label, sample_id, hidden_label: hidden, video_id: Some(video as i64), frame_index: Some(frame as i64) },
            )?;
        }
    }
    let source = format!("synthetic-video:{frames_per_video}:{config:?}");
    writer.finish("synthetic", &format!("{:016x}", splitmix(source.len() as u64 ^ config.seed)))
}

/// Which split sample `index` goes to, by a per-index hash: approximately stratified,
/// and the same sample lands in the same split for every run with the same seed. Test
/// samples are drawn from the validation ones by a hash of their own, so the test fraction
/// moves no sample between train, val and unlabeled other than from val to test.
fn assign(seed: u64, index: u64, label: i64, true_label: i64, splits: &SyntheticSplits) -> (Split, i64, Option<i64>) {
    let unit = |salt: u64| (splitmix(seed ^ index.wrapping_mul(0x9e37_79b9) ^ salt) >> 11) as f64 / (1u64 << 53) as f64;
    if unit(1) < splits.val_fraction {
        let split = if unit(3) < splits.test_fraction { Split::Test } else { Split::Val };
        (split, true_label, None)
    } else if unit(2) < splits.labeled_fraction {
        (Split::Train, label, None)
    } else {
        (Split::Unlabeled, -1, Some(true_label))
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Dataset;

    #[test]
    fn synthetic_videos_are_split_whole_and_carry_frame_indices() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = SyntheticConfig { samples: 600, image_size: 16, ..SyntheticConfig::default() };
        let splits = SyntheticSplits { val_fraction: 0.3, labeled_fraction: 0.5, shard_size: 128, ..SyntheticSplits::default() };
        let manifest = prepare_synthetic_video(dir.path(), &config, &splits, 20).expect("prepare");
        let dataset = Dataset::open(dir.path()).expect("open");
        let mut owner = std::collections::HashMap::new();
        let mut total = 0;
        for split in [Split::Train, Split::Val, Split::Unlabeled] {
            let data = dataset.read_split(split).expect("read");
            total += data.len();
            let (videos, frames) = (data.video_ids.expect("video ids"), data.frame_indices.expect("frame indices"));
            for (video, frame) in videos.iter().zip(&frames) {
                assert!((0..20).contains(frame));
                assert_eq!(*owner.entry(*video).or_insert(split), split, "video {video} sits in one split");
            }
            if split == Split::Unlabeled {
                assert!(data.labels.iter().all(|&l| l == -1) && data.hidden_labels.is_some());
            }
        }
        assert_eq!((total, owner.len()), (600, 30));
        assert_eq!(manifest.splits.values().map(|s| s.samples).sum::<u64>(), 600);
    }

    #[test]
    fn synthetic_dataset_has_the_requested_splits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = SyntheticConfig { samples: 2000, ..SyntheticConfig::default() };
        let splits = SyntheticSplits { val_fraction: 0.2, labeled_fraction: 0.25, shard_size: 500, ..SyntheticSplits::default() };
        let manifest = prepare_synthetic(dir.path(), &config, &splits).expect("prepare");
        let count = |split| manifest.splits[&split].samples as f64;
        assert_eq!(count(Split::Train) + count(Split::Val) + count(Split::Unlabeled), 2000.0);
        assert!((count(Split::Val) / 2000.0 - 0.2).abs() < 0.04);
        assert!((count(Split::Train) / 1600.0 - 0.25).abs() < 0.05);

        let dataset = Dataset::open(dir.path()).expect("open");
        let pool = dataset.read_split(Split::Unlabeled).expect("pool");
        assert!(pool.labels.iter().all(|&l| l == -1));
        assert!(pool.hidden_labels.as_ref().is_some_and(|h| h.iter().all(|&l| (0..7).contains(&l))));
        let val = dataset.read_split(Split::Val).expect("val");
        let train = dataset.read_split(Split::Train).expect("train");
        let mut ids: Vec<i64> = val.sample_ids.iter().chain(&train.sample_ids).chain(&pool.sample_ids).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 2000, "every sample lands in exactly one split");
        assert!(!manifest.splits.contains_key(&Split::Test), "no test split by default");
    }

    #[test]
    fn a_test_fraction_moves_that_share_of_validation_to_test() {
        let config = SyntheticConfig { samples: 2000, image_size: 16, ..SyntheticConfig::default() };
        let without = SyntheticSplits { val_fraction: 0.3, labeled_fraction: 0.5, shard_size: 500, ..SyntheticSplits::default() };
        let with = SyntheticSplits { test_fraction: 0.5, ..without.clone() };
        let (plain, split) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        prepare_synthetic(plain.path(), &config, &without).expect("prepare");
        let manifest = prepare_synthetic(split.path(), &config, &with).expect("prepare");
        let (plain, split) = (Dataset::open(plain.path()).expect("open"), Dataset::open(split.path()).expect("open"));
        let ids = |dataset: &Dataset, which| dataset.read_split(which).expect("read").sample_ids;
        let (val, test) = (ids(&split, Split::Val), ids(&split, Split::Test));
        let share = test.len() as f64 / (val.len() + test.len()) as f64;
        assert!((share - 0.5).abs() < 0.08, "test holds {share:.3} of the held-out samples");
        let mut held_out: Vec<i64> = val.iter().chain(&test).copied().collect();
        held_out.sort_unstable();
        assert_eq!(held_out, ids(&plain, Split::Val), "test comes out of val and nothing else moves");
        assert_eq!(ids(&split, Split::Train), ids(&plain, Split::Train));
        let test_data = split.read_split(Split::Test).expect("read");
        assert!(test_data.labels.iter().all(|l| (0..7).contains(l)) && test_data.hidden_labels.is_none(), "test labels are visible");
        assert_eq!(manifest.splits[&Split::Test].samples, test.len() as u64);

        let dir = tempfile::tempdir().expect("tempdir");
        let video = SyntheticConfig { samples: 600, image_size: 16, ..SyntheticConfig::default() };
        prepare_synthetic_video(dir.path(), &video, &with, 20).expect("prepare");
        let dataset = Dataset::open(dir.path()).expect("open");
        let clips = |which| dataset.read_split(which).expect("read").video_ids.expect("video ids").into_iter().collect::<std::collections::BTreeSet<_>>();
        let (val, test) = (clips(Split::Val), clips(Split::Test));
        assert!(!test.is_empty() && val.is_disjoint(&test), "whole clips move to test: val {val:?}, test {test:?}");
    }
}
