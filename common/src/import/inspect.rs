//! `feral dataset inspect`: what a dataset directory holds (samples per split and class,
//! the class imbalance, every shard with its size) and whether each shard still matches its
//! checksum, found by reading it whole.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::dataset::{read_shard, DatasetError, Manifest, Split};
use crate::text::{printable, printable_path};

use super::ImportError;

/// A dataset directory, summarised and verified.
#[derive(Clone, Debug, PartialEq)]
pub struct Inspection {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// One entry per split, in split order.
    pub splits: Vec<SplitSummary>,
    /// Largest over smallest nonzero class count of train plus unlabeled (hidden labels);
    /// `None` when no class has a sample.
    pub imbalance_ratio: Option<f64>,
}

/// One split of an inspected dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitSummary {
    pub split: Split,
    pub samples: u64,
    /// Samples per class (hidden labels for unlabeled), from the manifest.
    pub class_counts: Vec<u64>,
    /// Distinct video ids among the split's readable shards (video datasets only).
    pub videos: Option<u64>,
    pub shards: Vec<ShardStatus>,
}

/// One shard file and what reading it found.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardStatus {
    pub file: String,
    pub samples: u64,
    /// Size on disk; `None` when the file is missing.
    pub bytes: Option<u64>,
    pub check: ShardCheck,
}

/// Whether a shard is intact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardCheck {
    Ok,
    Missing,
    ChecksumMismatch,
    /// Matches no checksum problem but cannot be parsed as the manifest describes.
    Corrupt(String),
}

impl Inspection {
    /// Whether every shard read back intact.
    pub fn all_ok(&self) -> bool {
        self.splits.iter().flat_map(|s| &s.shards).all(|s| s.check == ShardCheck::Ok)
    }
}

/// Reads `dir`'s manifest and every shard (verifying checksums) and summarises them. Fails
/// only when the manifest cannot be read; damaged shards are reported in the result.
pub fn inspect(dir: &Path) -> Result<Inspection, ImportError> {
    let manifest = Manifest::load(dir)?;
    let mut splits = Vec::new();
    for (split, info) in &manifest.splits {
        let mut shards = Vec::new();
        let mut videos: Option<BTreeSet<i64>> = None;
        for shard in &info.shards {
            let bytes = std::fs::metadata(dir.join(&shard.file)).ok().map(|m| m.len());
            let check = match read_shard(dir, shard, manifest.image, manifest.classes.len(), true) {
                Ok(data) => {
                    if let Some(ids) = data.video_ids {
                        videos.get_or_insert_with(BTreeSet::new).extend(ids.into_iter().filter(|id| *id >= 0));
                    }
                    ShardCheck::Ok
                }
                Err(DatasetError::Io { .. } | DatasetError::File(_)) if bytes.is_none() => ShardCheck::Missing,
                Err(DatasetError::Checksum { .. }) => ShardCheck::ChecksumMismatch,
                Err(other) => ShardCheck::Corrupt(other.to_string()),
            };
            shards.push(ShardStatus { file: shard.file.clone(), samples: shard.samples, bytes, check });
        }
        let videos = videos.map(|v| v.len() as u64);
        splits.push(SplitSummary { split: *split, samples: info.samples, class_counts: info.class_counts.clone(), videos, shards });
    }
    let imbalance_ratio = imbalance(&manifest);
    Ok(Inspection { dir: dir.to_path_buf(), manifest, splits, imbalance_ratio })
}

fn imbalance(manifest: &Manifest) -> Option<f64> {
    let mut totals = vec![0u64; manifest.classes.len()];
    for split in [Split::Train, Split::Unlabeled] {
        for (total, count) in totals.iter_mut().zip(manifest.splits.get(&split).map(|s| s.class_counts.as_slice()).unwrap_or(&[])) {
            *total += count;
        }
    }
    let nonzero = totals.iter().filter(|c| **c > 0);
    let (max, min) = (nonzero.clone().max()?, nonzero.min()?);
    Some(*max as f64 / *min as f64)
}

/// The inspection as `feral dataset inspect` prints it; the manifest's names and the
/// dataset's path are [`printable`], since a dataset may come from anyone.
impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.manifest;
        writeln!(f, "dataset {} ({}) at {}", printable(&m.name), printable(&m.source), printable_path(&self.dir))?;
        writeln!(
            f,
            "images {}x{}x{}, {} classes, source sha256 {}",
            m.image.height,
            m.image.width,
            m.image.channels,
            m.classes.len(),
            printable(&m.source_sha256)
        )?;
        let classes: Vec<_> = m.classes.iter().map(|c| printable(c)).collect();
        let width = classes.iter().map(|c| c.chars().count()).max().unwrap_or(5).max(9);
        write!(f, "{:<width$}", "class")?;
        for summary in &self.splits {
            write!(f, " {:>10}", summary.split.to_string())?;
        }
        writeln!(f)?;
        for (class, name) in classes.iter().enumerate() {
            write!(f, "{name:<width$}")?;
            for summary in &self.splits {
                write!(f, " {:>10}", summary.class_counts.get(class).copied().unwrap_or(0))?;
            }
            writeln!(f)?;
        }
        write!(f, "{:<width$}", "total")?;
        for summary in &self.splits {
            write!(f, " {:>10}", summary.samples)?;
        }
        writeln!(f)?;
        match self.imbalance_ratio {
            Some(ratio) => writeln!(f, "imbalance (train + unlabeled, max/min class): {ratio:.2}")?,
            None => writeln!(f, "imbalance: no training samples")?,
        }
        for summary in &self.splits {
            if let Some(videos) = summary.videos {
                writeln!(f, "{}: {videos} videos", summary.split)?;
            }
            for shard in &summary.shards {
                let size = shard.bytes.map_or_else(|| "-".to_owned(), |b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)));
                let check = match &shard.check {
                    ShardCheck::Ok => "ok".to_owned(),
                    ShardCheck::Missing => "MISSING".to_owned(),
                    ShardCheck::ChecksumMismatch => "CHECKSUM MISMATCH".to_owned(),
                    ShardCheck::Corrupt(problem) => format!("CORRUPT: {}", printable(problem)),
                };
                writeln!(f, "  {:<28} {:>8} samples {:>10}  {check}", printable(&shard.file), shard.samples, size)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "inspect_tests.rs"]
mod tests;
