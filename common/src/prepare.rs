//! Turning sources into dataset directories: the synthetic expression dataset that the
//! demo and the tests train on (`feral prepare synthetic`), and [`write_dataset_dir`], which
//! every `feral prepare` writes through so that a dataset never lands beside another.

use std::path::{Path, PathBuf};

use crate::dataset::{DatasetError, DatasetWriter, ImageShape, Manifest, Sample, Split, MANIFEST_FILE};
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

/// Why a dataset was not written into a directory.
#[derive(Debug, thiserror::Error)]
pub enum OutDirError {
    #[error("{dir} is not empty and holds no Feral dataset manifest; choose an empty directory")]
    NotADataset { dir: PathBuf },
    #[error("{dir} is not empty and its {MANIFEST_FILE} is not a Feral dataset manifest ({problem}); choose an empty directory")]
    ForeignManifest { dir: PathBuf, problem: String },
    #[error("{dir} holds a Feral dataset and also {file}, which is not part of it; move that away or choose another directory")]
    NotOnlyADataset { dir: PathBuf, file: String },
    #[error("{path} exists and is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
}

/// Writes a dataset into the directory `out` by calling `write` with the directory to write
/// into, so that no shard of another dataset is ever left beside the new ones:
///
/// - `out` missing: the dataset is written into a temporary directory beside it, which is
///   then renamed to `out`;
/// - `out` empty: the dataset is written into it (its parent need not be writable);
/// - `out` holding a Feral dataset (a `manifest.json` that loads) and nothing else: the new
///   dataset is written beside it and swapped in (the old one renamed away, the new one
///   renamed in, the old one removed), so a crash leaves the old dataset or the new one,
///   never a mix;
/// - anything else (other files: the source CSV, someone's notes) is refused and left
///   untouched.
///
/// When `write` fails, what it wrote is removed and `out` is as it was.
pub fn write_dataset_dir<T, E>(out: &Path, write: impl FnOnce(&Path) -> Result<T, E>) -> Result<T, E>
where
    E: From<OutDirError>,
{
    let replacing = match std::fs::metadata(out) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
        Err(error) => return Err(io_error("read", out)(error).into()),
        Ok(metadata) if !metadata.is_dir() => return Err(OutDirError::NotADirectory { path: out.to_path_buf() }.into()),
        Ok(_) if is_empty_dir(out).map_err(io_error("list", out))? => {
            let written = write(out);
            if written.is_err() {
                empty_dir(out);
            }
            return written;
        }
        Ok(_) if !out.join(MANIFEST_FILE).exists() => return Err(OutDirError::NotADataset { dir: out.to_path_buf() }.into()),
        Ok(_) => match Manifest::load(out) {
            Ok(manifest) => match not_part_of(out, &manifest).map_err(io_error("list", out))? {
                None => true,
                Some(file) => return Err(OutDirError::NotOnlyADataset { dir: out.to_path_buf(), file }.into()),
            },
            Err(problem) => return Err(OutDirError::ForeignManifest { dir: out.to_path_buf(), problem: problem.to_string() }.into()),
        },
    };
    // A symbolic link keeps pointing at the dataset: the directory it names is replaced.
    let target = if replacing { std::fs::canonicalize(out).map_err(io_error("resolve", out))? } else { out.to_path_buf() };
    let fresh = beside(&target, "new").map_err(io_error("write a dataset beside", &target))?;
    if let Some(parent) = fresh.parent() {
        std::fs::create_dir_all(parent).map_err(io_error("create", parent))?;
    }
    // A leftover of an earlier run with the same process id.
    let _ = std::fs::remove_dir_all(&fresh);
    std::fs::create_dir(&fresh).map_err(io_error("create", &fresh))?;
    let value = write(&fresh).and_then(|value| swap_in(&fresh, &target, replacing).map(|()| value).map_err(E::from));
    if value.is_err() {
        let _ = std::fs::remove_dir_all(&fresh);
    }
    value
}

/// Renames `fresh` to `target`; when `replacing`, the dataset at `target` is first renamed
/// away (and back, should the second rename fail) and removed afterwards.
fn swap_in(fresh: &Path, target: &Path, replacing: bool) -> Result<(), OutDirError> {
    if !replacing {
        return std::fs::rename(fresh, target).map_err(io_error("move the new dataset to", target));
    }
    let old = beside(target, "old").map_err(io_error("replace the dataset at", target))?;
    let _ = std::fs::remove_dir_all(&old);
    std::fs::rename(target, &old).map_err(io_error("move the old dataset away from", target))?;
    if let Err(error) = std::fs::rename(fresh, target) {
        let _ = std::fs::rename(&old, target);
        return Err(io_error("move the new dataset to", target)(error));
    }
    std::fs::remove_dir_all(&old).map_err(io_error("remove the replaced dataset (the new one is in place)", &old))
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> OutDirError + 'a {
    move |source| OutDirError::Io { action, path: path.to_path_buf(), source }
}

/// `.NAME.feral-WHAT-PID` in the directory that holds `dir`.
fn beside(dir: &Path, what: &str) -> std::io::Result<PathBuf> {
    let name = dir.file_name().ok_or_else(|| std::io::Error::other("it has no parent directory"))?;
    let mut hidden = std::ffi::OsString::from(".");
    hidden.push(name);
    hidden.push(format!(".feral-{what}-{}", std::process::id()));
    Ok(dir.with_file_name(hidden))
}

/// The first entry of the dataset directory `dir` that is neither the manifest, a shard it
/// names, nor a file a dataset writer or importer leaves (`train-00007.safetensors`, a
/// shard of an earlier dataset written over without replacing; `*.tmp`; a staging file).
fn not_part_of(dir: &Path, manifest: &Manifest) -> std::io::Result<Option<String>> {
    let shards: std::collections::HashSet<&str> = manifest.splits.values().flat_map(|s| &s.shards).map(|s| s.file.as_str()).collect();
    let splits = [Split::Train, Split::Val, Split::Test, Split::Unlabeled].map(|s| s.to_string());
    let written = |name: &str| {
        let name = name.strip_suffix(".tmp").unwrap_or(name);
        let numbered_shard = name
            .strip_suffix(".safetensors")
            .and_then(|stem| stem.rsplit_once('-'))
            .is_some_and(|(split, number)| splits.iter().any(|s| s == split) && !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()));
        name == MANIFEST_FILE || shards.contains(name) || numbered_shard || name.starts_with(".import-staging-")
    };
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() || !written(&name) {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

fn is_empty_dir(dir: &Path) -> std::io::Result<bool> {
    Ok(std::fs::read_dir(dir)?.next().is_none())
}

/// Removes everything in `dir` (best effort): what a failed write left in a directory that
/// was empty.
fn empty_dir(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let _ = if entry.file_type().is_ok_and(|t| t.is_dir()) { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
    }
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
    use std::collections::BTreeSet;

    use super::*;
    use crate::dataset::Dataset;

    type Failure = Box<dyn std::error::Error + Send + Sync>;

    /// A small synthetic dataset written into `out` through [`write_dataset_dir`].
    fn synthetic_into(out: &Path, samples: usize, shard_size: usize) -> Result<Manifest, Failure> {
        let config = SyntheticConfig { samples, image_size: 16, ..SyntheticConfig::default() };
        let splits = SyntheticSplits { shard_size, ..SyntheticSplits::default() };
        write_dataset_dir(out, |dir| prepare_synthetic(dir, &config, &splits).map_err(Failure::from))
    }

    fn files(dir: &Path) -> BTreeSet<String> {
        std::fs::read_dir(dir).expect("list").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect()
    }

    fn manifest_and_shards(manifest: &Manifest) -> BTreeSet<String> {
        let shards = manifest.splits.values().flat_map(|s| &s.shards).map(|s| s.file.clone());
        shards.chain([MANIFEST_FILE.to_owned()]).collect()
    }

    #[test]
    fn a_dataset_written_over_another_replaces_it_whole() {
        let root = tempfile::tempdir().expect("tempdir");
        let out = root.path().join("data");
        let old = synthetic_into(&out, 400, 10).expect("first dataset");
        let new = synthetic_into(&out, 100, 50).expect("second dataset");
        assert!(manifest_and_shards(&old).len() > manifest_and_shards(&new).len() + 10, "the first has many more shards");
        assert_eq!(files(&out), manifest_and_shards(&new), "no shard of the first dataset is left");
        assert_eq!(Dataset::open(&out).expect("open").verify().expect("verify"), 100);
        assert_eq!(files(root.path()), BTreeSet::from(["data".to_owned()]), "no temporary directory is left");

        // Through a symbolic link, the directory it names is replaced and the link kept.
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&out, &link).expect("symlink");
        let again = synthetic_into(&link, 60, 30).expect("through the link");
        assert!(std::fs::symlink_metadata(&link).expect("link").file_type().is_symlink());
        assert_eq!(files(&out), manifest_and_shards(&again));
    }

    #[test]
    fn a_directory_that_holds_no_dataset_is_refused_and_left_alone() {
        let root = tempfile::tempdir().expect("tempdir");
        let notes = root.path().join("notes");
        std::fs::create_dir(&notes).expect("mkdir");
        std::fs::write(notes.join("thesis.tex"), "years of work").expect("write");
        let error = synthetic_into(&notes, 100, 50).expect_err("not a dataset").to_string();
        assert!(error.ends_with("notes is not empty and holds no Feral dataset manifest; choose an empty directory"), "{error}");
        assert_eq!(files(&notes), BTreeSet::from(["thesis.tex".to_owned()]));

        std::fs::write(notes.join(MANIFEST_FILE), "{\"name\": \"something else\"}").expect("write");
        let error = synthetic_into(&notes, 100, 50).expect_err("another manifest").to_string();
        assert!(error.contains("manifest.json is not a Feral dataset manifest") && error.ends_with("choose an empty directory"), "{error}");
        assert_eq!(files(&notes).len(), 2);

        let file = root.path().join("file");
        std::fs::write(&file, "x").expect("write");
        assert!(synthetic_into(&file, 100, 50).expect_err("a file").to_string().contains("is not a directory"));

        // A dataset with something else beside it (here its source) is not removed.
        let data = root.path().join("data");
        synthetic_into(&data, 100, 50).expect("dataset");
        std::fs::write(data.join("fer2013.csv"), "emotion,pixels,Usage").expect("write");
        let error = synthetic_into(&data, 100, 20).expect_err("a dataset and more").to_string();
        assert!(
            error.ends_with("data holds a Feral dataset and also fer2013.csv, which is not part of it; move that away or choose another directory"),
            "{error}"
        );
        assert!(data.join("fer2013.csv").exists());
        std::fs::remove_file(data.join("fer2013.csv")).expect("remove");
        // A shard an earlier import left beside its dataset does not stop a replacement, and goes.
        std::fs::write(data.join("train-00099.safetensors"), "stale").expect("write");
        let manifest = synthetic_into(&data, 100, 20).expect("replaced");
        assert_eq!(files(&data), manifest_and_shards(&manifest));

        let empty = root.path().join("empty");
        std::fs::create_dir(&empty).expect("mkdir");
        let manifest = synthetic_into(&empty, 100, 50).expect("an empty directory is written into");
        assert_eq!(files(&empty), manifest_and_shards(&manifest));
        let nested = root.path().join("a").join("b");
        let manifest = synthetic_into(&nested, 100, 50).expect("a missing directory is created");
        assert_eq!(files(&nested), manifest_and_shards(&manifest));
        assert_eq!(files(&root.path().join("a")), BTreeSet::from(["b".to_owned()]));
    }

    #[test]
    fn a_failed_write_leaves_the_directory_as_it_was() {
        let root = tempfile::tempdir().expect("tempdir");
        let out = root.path().join("data");
        let manifest = synthetic_into(&out, 100, 50).expect("dataset");
        let failing = |dir: &Path| -> Result<(), Failure> {
            std::fs::write(dir.join("train-00000.safetensors"), "half a shard")?;
            Err("the disk is full".into())
        };
        assert_eq!(write_dataset_dir(&out, failing).expect_err("fails").to_string(), "the disk is full");
        assert_eq!(files(&out), manifest_and_shards(&manifest));
        assert_eq!(Dataset::open(&out).expect("open").verify().expect("the old dataset is whole"), 100);
        assert_eq!(files(root.path()), BTreeSet::from(["data".to_owned()]));

        let empty = root.path().join("empty");
        std::fs::create_dir(&empty).expect("mkdir");
        assert!(write_dataset_dir(&empty, failing).is_err());
        assert!(files(&empty).is_empty(), "what the failed write left is removed");
        assert!(write_dataset_dir(&root.path().join("missing"), failing).is_err());
        assert!(!root.path().join("missing").exists());
    }

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
