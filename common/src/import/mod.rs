//! Importers that turn datasets in their published formats into Feral dataset directories
//! (`feral prepare`): the FER2013 CSV, image folders in the RAF-DB / AffectNet style (class
//! sub-folders or a label list) and frame folders in the Aff-Wild2 style (one folder per
//! video, per-frame label files). Every importer streams its source: samples are decoded in
//! parallel chunks into a staging file next to the output, the splits are planned from the
//! labels alone (stratified and seeded, by video for videos), and the staged samples are then
//! written into shards. `inspect` summarises a dataset directory and verifies its shards.

mod fer2013;
mod frames;
mod images;
mod inspect;
mod split;
mod staging;

pub use fer2013::{check_fer2013_text, import_fer2013};
pub use frames::import_frames;
pub use images::{import_images, is_image_file, list_image_files, read_image_as};
pub use inspect::{inspect, Inspection, ShardCheck, ShardStatus, SplitSummary};
pub use split::{assign_labelled, pick_groups, plan_videos, split_off_test, stratified_pick, VideoRole};

use std::path::{Path, PathBuf};

use crate::dataset::{DatasetError, Manifest, Split};

/// How an importer divides its samples into the train, val, test and unlabeled splits.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitOptions {
    /// Share of each class's training samples that keeps its label (exactly
    /// `round(fraction * n_c)` per class); the rest join the unlabeled pool with their labels
    /// hidden. For videos the share is taken over labelled videos, not frames.
    pub labeled_fraction: f64,
    /// Share held out for validation when the source defines no validation split
    /// (stratified per class; by video for videos).
    pub val_fraction: f64,
    /// Share of the validation samples moved to the test split when the source defines no
    /// test split (stratified per class, at least one of every class with two or more
    /// validation samples on each side; by video for videos). In `[0, 1)`; 0 writes no test
    /// split. Val chooses feedback and the best round; test is only reported.
    pub test_fraction: f64,
    /// Seed of every random choice; the same seed and source give the same dataset.
    pub seed: u64,
    /// Samples per shard file.
    pub shard_size: usize,
    /// Skip bad rows and unreadable images (listed in the report) instead of failing.
    pub skip_bad: bool,
}

impl Default for SplitOptions {
    fn default() -> Self {
        Self { labeled_fraction: 1.0, val_fraction: 0.1, test_fraction: 0.0, seed: 7, shard_size: 4096, skip_bad: false }
    }
}

impl SplitOptions {
    fn validate(&self) -> Result<(), ImportError> {
        let fraction_ok = |f: f64| (0.0..=1.0).contains(&f);
        if !fraction_ok(self.labeled_fraction) {
            return Err(ImportError::Options { problem: format!("labeled fraction {} is outside 0..=1", self.labeled_fraction) });
        }
        if !fraction_ok(self.val_fraction) {
            return Err(ImportError::Options { problem: format!("val fraction {} is outside 0..=1", self.val_fraction) });
        }
        if !(0.0..1.0).contains(&self.test_fraction) {
            return Err(ImportError::Options { problem: format!("test_fraction {} is outside 0..1", self.test_fraction) });
        }
        if self.shard_size == 0 {
            return Err(ImportError::Options { problem: "shard size must be at least 1".to_owned() });
        }
        Ok(())
    }
}

/// What an import wrote and what it left out.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportReport {
    /// The manifest of the written dataset.
    pub manifest: Manifest,
    /// Each skipped bad row or image with the reason (`line 17: pixels has 2303 values,
    /// expected 2304`, or a path and its problem); only with `skip_bad`.
    pub skipped: Vec<String>,
    /// Rows, images or frames read from the source, skipped and ignored ones included.
    pub rows_read: u64,
    /// Samples read but deliberately not imported: images under an unused top-level folder,
    /// unlabelled frames of validation and test videos.
    pub ignored: u64,
}

/// Why an import or an inspection failed; every message names the file and, for text
/// sources, the line.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path}: line {line}: {problem}")]
    Row { path: PathBuf, line: u64, problem: String },
    #[error("cannot read image {path}: {problem}")]
    Image { path: PathBuf, problem: String },
    #[error("label file {path}: line {line}: {problem}")]
    Labels { path: PathBuf, line: u64, problem: String },
    #[error("{path}: {problem}")]
    Layout { path: PathBuf, problem: String },
    #[error("{path} holds no samples to import")]
    Empty { path: PathBuf },
    #[error("invalid import options: {problem}")]
    Options { problem: String },
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    OutDir(#[from] crate::prepare::OutDirError),
}

impl ImportError {
    fn io<'a>(action: &'static str, path: &'a std::path::Path) -> impl FnOnce(std::io::Error) -> ImportError + 'a {
        move |source| ImportError::Io { action, path: path.to_path_buf(), source }
    }
}

/// Fails, naming `source`, when the planned `splits` leave train or val without a sample:
/// every job needs both, and would otherwise find out only later, on a worker.
fn require_train_and_val(source: &Path, splits: &[Option<Split>], options: &SplitOptions) -> Result<(), ImportError> {
    let empty = |split: Split, cause: String| ImportError::Layout { path: source.to_path_buf(), problem: format!("the {split} split would be empty: {cause}") };
    if !splits.contains(&Some(Split::Val)) {
        let cause = format!(
            "the source names no validation samples (FER2013 `PublicTest` rows, a val/ folder) and a val fraction of {} holds out none of the others; raise it",
            options.val_fraction
        );
        return Err(empty(Split::Val, cause));
    }
    if !splits.contains(&Some(Split::Train)) {
        let cause = format!("a labeled fraction of {} keeps no training sample's label; raise it", options.labeled_fraction);
        return Err(empty(Split::Train, cause));
    }
    Ok(())
}

/// Lowercase hex of a sha256 digest.
fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod test_support;
