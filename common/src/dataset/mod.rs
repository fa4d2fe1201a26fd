//! The dataset format of docs/design.md §4: a directory with `manifest.json` (classes, splits,
//! counts, image shape, source checksum) and fixed-size safetensors shards that Python
//! users can open too (`images` u8 N×H×W×C, `labels` i64 with -1 for unlabelled,
//! `sample_ids` i64, and optionally `hidden_labels`, `video_ids`, `frame_indices`).

mod images;
mod manifest;
mod shard;
mod writer;

pub use images::Images;
pub use manifest::{ImageShape, Manifest, ManifestError, ShardInfo, Split, SplitInfo, MANIFEST_FILE};
pub use shard::{read_shard, ShardData};
pub use writer::{DatasetWriter, Sample};

use std::path::{Path, PathBuf};

/// Everything that can be wrong with a dataset on disk; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read dataset file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    #[error("dataset manifest {path} is invalid: {source}")]
    Manifest { path: PathBuf, source: ManifestError },
    #[error("dataset shard {path} is corrupt: {problem}")]
    Shard { path: PathBuf, problem: String },
    #[error("dataset shard {path} does not match its checksum in the manifest")]
    Checksum { path: PathBuf },
    #[error("dataset {dir} has no `{split}` split")]
    MissingSplit { dir: PathBuf, split: Split },
}

/// An opened dataset directory.
#[derive(Clone, Debug)]
pub struct Dataset {
    dir: PathBuf,
    manifest: Manifest,
}

impl Dataset {
    /// Opens `dir` and validates its manifest (shards are checked when read).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, DatasetError> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = Manifest::load(&dir)?;
        Ok(Self { dir, manifest })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn split(&self, split: Split) -> Result<&SplitInfo, DatasetError> {
        self.manifest.splits.get(&split).ok_or_else(|| DatasetError::MissingSplit { dir: self.dir.clone(), split })
    }

    /// Reads every shard of `split` into one [`ShardData`], verifying checksums; the images
    /// stay in the shards' memory maps.
    pub fn read_split(&self, split: Split) -> Result<ShardData, DatasetError> {
        let info = self.split(split)?;
        let mut all = ShardData::empty(self.manifest.image);
        for shard in &info.shards {
            all.append(read_shard(&self.dir, shard, self.manifest.image, self.manifest.classes.len(), true)?);
        }
        Ok(all)
    }

    /// Verifies every shard of every split against the manifest; returns how many samples.
    pub fn verify(&self) -> Result<u64, DatasetError> {
        let mut samples = 0;
        for info in self.manifest.splits.values() {
            for shard in &info.shards {
                samples += read_shard(&self.dir, shard, self.manifest.image, self.manifest.classes.len(), true)?.len() as u64;
            }
        }
        Ok(samples)
    }
}

#[cfg(test)]
mod tests;
