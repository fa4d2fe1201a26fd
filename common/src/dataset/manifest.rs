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
        Self::parse(&text).map_err(|source| DatasetError::Manifest { path, source })
    }

    /// A manifest from its JSON text, checked as [`load`](Self::load) checks it.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest = serde_json::from_str(text)?;
        manifest.validate()?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), ManifestError> {
        if self.format_version != FORMAT_VERSION {
            return Err(ManifestError::FormatVersion { found: self.format_version });
        }
        if self.classes.len() < 2 {
            return Err(ManifestError::TooFewClasses { classes: self.classes.len() });
        }
        if self.image.pixels() == 0 {
            return Err(ManifestError::EmptyImage { shape: self.image });
        }
        for (split, info) in &self.splits {
            let in_shards: u64 = info.shards.iter().map(|s| s.samples).sum();
            if in_shards != info.samples {
                return Err(ManifestError::SampleCount { split: *split, samples: info.samples, in_shards });
            }
            if !info.class_counts.is_empty() && info.class_counts.len() != self.classes.len() {
                return Err(ManifestError::ClassCounts { split: *split, counts: info.class_counts.len(), classes: self.classes.len() });
            }
            if let Some(bad) = info.shards.iter().find(|s| s.file.contains('/') || s.file.contains("..")) {
                return Err(ManifestError::ShardName { split: *split, file: bad.file.clone() });
            }
        }
        Ok(())
    }
}

/// Why a manifest's text is not a valid manifest: each names the field and the values
/// that do not fit.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or not the manifest's fields and types.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("format_version must be {FORMAT_VERSION}, got {found}")]
    FormatVersion { found: u32 },
    #[error("needs at least 2 classes, has {classes}")]
    TooFewClasses { classes: usize },
    #[error("image shape has a zero dimension (height {}, width {}, channels {})", shape.height, shape.width, shape.channels)]
    EmptyImage { shape: ImageShape },
    #[error("split {split} counts {samples} samples but its shards hold {in_shards}")]
    SampleCount { split: Split, samples: u64, in_shards: u64 },
    #[error("split {split} has {counts} class counts for {classes} classes")]
    ClassCounts { split: Split, counts: usize, classes: usize },
    #[error("shard file name {file:?} of split {split} must be a plain file name")]
    ShardName { split: Split, file: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_manifest_is_refused_with_the_field_and_values() {
        let text = |version: u32, classes: &str, height: u32, file: &str| {
            format!(
                r#"{{ "format_version": {version}, "name": "n", "classes": [{classes}], "image": {{ "height": {height}, "width": 3, "channels": 1 }},
                "splits": {{ "train": {{ "samples": 2, "class_counts": [1, 1], "shards": [{{ "file": "{file}", "samples": 2, "sha256": "00" }}] }} }},
                "source": "synthetic", "source_sha256": "00" }}"#
            )
        };
        let good = text(1, r#""a", "b""#, 4, "train-00000.safetensors");
        assert_eq!(Manifest::parse(&good).expect("valid").classes.len(), 2);
        assert!(matches!(Manifest::parse(&text(2, r#""a", "b""#, 4, "t")), Err(ManifestError::FormatVersion { found: 2 })));
        assert!(matches!(Manifest::parse(&text(1, r#""a""#, 4, "t")), Err(ManifestError::TooFewClasses { classes: 1 })));
        let error = Manifest::parse(&text(1, r#""a", "b", "c""#, 4, "t")).expect_err("3 classes, 2 counts");
        assert_eq!(error.to_string(), "split train has 2 class counts for 3 classes");
        assert!(Manifest::parse(&text(1, r#""a", "b""#, 0, "t")).expect_err("empty").to_string().contains("zero dimension (height 0"));
        let error = Manifest::parse(&text(1, r#""a", "b""#, 4, "../t")).expect_err("path");
        assert!(matches!(&error, ManifestError::ShardName { split: Split::Train, file } if file == "../t"), "{error}");
        assert!(matches!(Manifest::parse("{"), Err(ManifestError::Json(_))));
        let error = Manifest::parse(&good.replace("\"samples\": 2, \"class", "\"samples\": 3, \"class")).expect_err("count");
        assert_eq!(error.to_string(), "split train counts 3 samples but its shards hold 2");
    }
}
