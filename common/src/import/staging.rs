//! The staging file between decoding and writing: importers append decoded samples (fixed
//! size pixels) to a temporary file next to the output and keep only a few numbers per
//! sample in memory, so the splits can be planned from all labels before any shard is
//! written, without holding the images. The file is removed when the staging is dropped.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::dataset::{DatasetWriter, ImageShape, Manifest, Sample, Split};

use super::{ImportError, SplitOptions};

/// What is remembered of a staged sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct StagedSample {
    /// Stable id: the sample's position in the source.
    pub sample_id: i64,
    /// The known label, -1 when none.
    pub label: i64,
    /// The source puts the sample in its validation split.
    pub given_val: bool,
    /// The source puts the sample in its test split (FER2013 `PrivateTest`).
    pub given_test: bool,
    pub video_id: Option<i64>,
    pub frame_index: Option<i64>,
}

/// The dataset a staging becomes.
pub(super) struct Target<'a> {
    pub out: &'a Path,
    pub name: String,
    pub classes: Vec<String>,
    pub shape: ImageShape,
    /// `fer2013`, `images` or `frames`.
    pub source: &'static str,
    pub source_sha256: String,
}

/// Decoded samples waiting for their splits.
pub(super) struct Staging {
    path: PathBuf,
    file: BufWriter<File>,
    record_size: usize,
    samples: Vec<StagedSample>,
}

impl Staging {
    /// A staging file in `out` (created if missing) for samples of `shape`.
    pub fn create(out: &Path, shape: ImageShape) -> Result<Self, ImportError> {
        std::fs::create_dir_all(out).map_err(ImportError::io("create", out))?;
        let path = out.join(format!(".import-staging-{}.raw", std::process::id()));
        let file = File::create(&path).map_err(ImportError::io("create", &path))?;
        Ok(Self { path, file: BufWriter::with_capacity(1 << 20, file), record_size: shape.pixels(), samples: Vec::new() })
    }

    /// Appends one decoded sample; `pixels` must have the staging's record size.
    pub fn push(&mut self, sample: StagedSample, pixels: &[u8]) -> Result<(), ImportError> {
        debug_assert_eq!(pixels.len(), self.record_size);
        self.file.write_all(pixels).map_err(ImportError::io("write", &self.path))?;
        self.samples.push(sample);
        Ok(())
    }

    pub fn samples(&self) -> &[StagedSample] {
        &self.samples
    }

    /// Writes the staged samples in source order into a dataset at `out`: sample `i` goes to
    /// `splits[i]` (or nowhere when `None`); an unlabeled sample keeps its known label hidden.
    pub fn write_dataset(mut self, target: Target, splits: &[Option<Split>], options: &SplitOptions) -> Result<Manifest, ImportError> {
        self.file.flush().map_err(ImportError::io("write", &self.path))?;
        let file = File::open(&self.path).map_err(ImportError::io("read", &self.path))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut writer = DatasetWriter::create(target.out, &target.name, target.classes, target.shape, options.shard_size)?;
        let mut pixels = vec![0u8; self.record_size];
        for (staged, split) in self.samples.iter().zip(splits) {
            reader.read_exact(&mut pixels).map_err(ImportError::io("read", &self.path))?;
            let Some(split) = *split else { continue };
            let known = (staged.label >= 0).then_some(staged.label);
            let (label, hidden_label) = match split {
                Split::Unlabeled => (-1, known),
                Split::Train | Split::Val | Split::Test => (staged.label, None),
            };
            let sample =
                Sample { pixels: &pixels, label, sample_id: staged.sample_id, hidden_label, video_id: staged.video_id, frame_index: staged.frame_index };
            writer.push(split, sample)?;
        }
        Ok(writer.finish(target.source, &target.source_sha256)?)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Best effort: a leftover staging file is harmless and named for what it is.
        let _ = std::fs::remove_file(&self.path);
    }
}
