//! `manifest.json`: what a dataset directory holds.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::DatasetError;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Labelled training data.
    Train,
    /// Held-out labelled data for evaluation and feedback: it chooses the best round.
    Val,
    /// Held-out labelled data that is only reported, never used to choose anything, so its
    /// metrics are an honest estimate. Optional: datasets written before it have none.
    Test,
    /// The unlabelled pool for pseudo-labelling (true labels, when known, kept hidden).
    Unlabeled,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
            Split::Unlabeled => "unlabeled",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageShape {
    pub height: u32,
    pub width: u32,
    pub channels: u32,
}

impl ImageShape {
    pub fn pixels(&self) -> usize {
        self.height as usize * self.width as usize * self.channels as usize
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardInfo {
    /// File name relative to the dataset directory.
    pub file: String,
    pub samples: u64,
    /// Hex sha256 of the shard file.
    pub sha256: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitInfo {
    pub samples: u64,
    /// Samples per class among the visible labels (hidden labels for `unlabeled`).
    pub class_counts: Vec<u64>,
    pub shards: Vec<ShardInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    pub classes: Vec<String>,
    pub image: ImageShape,
    pub splits: BTreeMap<Split, SplitInfo>,
    /// Where the data came from (`synthetic`, `fer2013`, ...) and that source's checksum.
    pub source: String,
    pub source_sha256: String,
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Self, DatasetError> {
        let path = dir.join(MANIFEST_FILE);
        let text = crate::files::read_text(&path, crate::files::MAX_JSON_BYTES, "dataset manifest")?;
        Self::parse(&text).map_err(|problem| DatasetError::Manifest { path, problem })
    }

    /// A manifest from its JSON text, checked as [`load`](Self::load) checks it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let manifest: Manifest = serde_json::from_str(text).map_err(|e| e.to_string())?;
        manifest.validate()?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), String> {
        if self.format_version != FORMAT_VERSION {
            return Err(format!("format_version must be {FORMAT_VERSION}, got {}", self.format_version));
        }
        if self.classes.len() < 2 {
            return Err(format!("needs at least 2 classes, has {}", self.classes.len()));
        }
        if self.image.pixels() == 0 {
            return Err("image shape has a zero dimension".to_owned());
        }
        for (split, info) in &self.splits {
            let in_shards: u64 = info.shards.iter().map(|s| s.samples).sum();
            if in_shards != info.samples {
                return Err(format!("split {split} counts {} samples but its shards hold {in_shards}", info.samples));
            }
            if !info.class_counts.is_empty() && info.class_counts.len() != self.classes.len() {
                return Err(format!("split {split} has {} class counts for {} classes", info.class_counts.len(), self.classes.len()));
            }
            if let Some(bad) = info.shards.iter().find(|s| s.file.contains('/') || s.file.contains("..")) {
                return Err(format!("shard file name {:?} must be a plain file name", bad.file));
            }
        }
        Ok(())
    }
}
