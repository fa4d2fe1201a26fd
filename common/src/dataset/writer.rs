//! Writing a dataset directory: samples go into fixed-size shards per split; the manifest
//! is written last, atomically, so a crashed import never leaves a dataset that looks whole.
//! Every file is written under a temporary name and renamed into place, so a file that
//! exists is never changed again: readers memory-map shards, which relies on that.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::manifest::FORMAT_VERSION;
use super::shard::hex_sha256;
use super::{DatasetError, ImageShape, Manifest, ManifestError, ShardInfo, Split, SplitInfo, MANIFEST_FILE};

/// One sample to write.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample<'a> {
    pub pixels: &'a [u8],
    /// -1 for unlabelled.
    pub label: i64,
    pub sample_id: i64,
    /// The true label of an unlabelled sample, where known.
    pub hidden_label: Option<i64>,
    /// Which video the sample is a frame of (video datasets only).
    pub video_id: Option<i64>,
    /// The frame's index within its video (video datasets only).
    pub frame_index: Option<i64>,
}

#[derive(Default)]
struct PendingShard {
    images: Vec<u8>,
    labels: Vec<i64>,
    sample_ids: Vec<i64>,
    hidden_labels: Vec<i64>,
    any_hidden: bool,
    video_ids: Vec<i64>,
    frame_indices: Vec<i64>,
    any_video: bool,
}

pub struct DatasetWriter {
    dir: PathBuf,
    name: String,
    classes: Vec<String>,
    shape: ImageShape,
    shard_size: usize,
    splits: BTreeMap<Split, SplitInfo>,
    pending: BTreeMap<Split, PendingShard>,
}

impl DatasetWriter {
    /// Starts a dataset in `dir` (created if missing).
    pub fn create(dir: &Path, name: &str, classes: Vec<String>, shape: ImageShape, shard_size: usize) -> Result<Self, DatasetError> {
        std::fs::create_dir_all(dir).map_err(|source| DatasetError::Io { path: dir.to_path_buf(), source })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            name: name.to_owned(),
            classes,
            shape,
            shard_size: shard_size.max(1),
            splits: BTreeMap::new(),
            pending: BTreeMap::new(),
        })
    }

    pub fn push(&mut self, split: Split, sample: Sample<'_>) -> Result<(), DatasetError> {
        assert_eq!(sample.pixels.len(), self.shape.pixels(), "sample has the wrong number of pixels");
        let classes = self.classes.len();
        let info = self.splits.entry(split).or_insert_with(|| SplitInfo { class_counts: vec![0; classes], ..SplitInfo::default() });
        let counted = if sample.label >= 0 { Some(sample.label) } else { sample.hidden_label };
        if let Some(class) = counted.filter(|c| (0..classes as i64).contains(c)) {
            info.class_counts[class as usize] += 1;
        }
        let pending = self.pending.entry(split).or_default();
        pending.images.extend_from_slice(sample.pixels);
        pending.labels.push(sample.label);
        pending.sample_ids.push(sample.sample_id);
        pending.hidden_labels.push(sample.hidden_label.unwrap_or(-1));
        pending.any_hidden |= sample.hidden_label.is_some();
        pending.video_ids.push(sample.video_id.unwrap_or(-1));
        pending.frame_indices.push(sample.frame_index.unwrap_or(-1));
        pending.any_video |= sample.video_id.is_some() || sample.frame_index.is_some();
        if pending.labels.len() >= self.shard_size {
            self.flush(split)?;
        }
        Ok(())
    }

    fn flush(&mut self, split: Split) -> Result<(), DatasetError> {
        let Some(pending) = self.pending.remove(&split) else { return Ok(()) };
        if pending.labels.is_empty() {
            return Ok(());
        }
        let info = self.splits.entry(split).or_default();
        let file = format!("{split}-{:05}.safetensors", info.shards.len());
        let path = self.dir.join(&file);
        let n = pending.labels.len();
        let s = self.shape;
        let as_bytes = |values: &[i64]| values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        let (labels, ids, hidden) = (as_bytes(&pending.labels), as_bytes(&pending.sample_ids), as_bytes(&pending.hidden_labels));
        let (videos, frames) = (as_bytes(&pending.video_ids), as_bytes(&pending.frame_indices));
        fn view<'a>(path: &Path, dtype: Dtype, shape: Vec<usize>, data: &'a [u8]) -> Result<TensorView<'a>, DatasetError> {
            TensorView::new(dtype, shape, data).map_err(|e| DatasetError::Shard { path: path.to_path_buf(), problem: e.to_string() })
        }
        let mut tensors = vec![
            ("images", view(&path, Dtype::U8, vec![n, s.height as usize, s.width as usize, s.channels as usize], &pending.images)?),
            ("labels", view(&path, Dtype::I64, vec![n], &labels)?),
            ("sample_ids", view(&path, Dtype::I64, vec![n], &ids)?),
        ];
        if pending.any_hidden {
            tensors.push(("hidden_labels", view(&path, Dtype::I64, vec![n], &hidden)?));
        }
        if pending.any_video {
            tensors.push(("video_ids", view(&path, Dtype::I64, vec![n], &videos)?));
            tensors.push(("frame_indices", view(&path, Dtype::I64, vec![n], &frames)?));
        }
        let bytes = safetensors::serialize(tensors, None).map_err(|e| DatasetError::Shard { path: path.clone(), problem: e.to_string() })?;
        write_then_rename(&path, &bytes)?;
        info.samples += n as u64;
        info.shards.push(ShardInfo { file, samples: n as u64, sha256: hex_sha256(&bytes) });
        Ok(())
    }

    /// Flushes the last shards and writes `manifest.json`.
    pub fn finish(mut self, source: &str, source_sha256: &str) -> Result<Manifest, DatasetError> {
        let splits: Vec<Split> = self.pending.keys().copied().collect();
        for split in splits {
            self.flush(split)?;
        }
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            name: self.name,
            classes: self.classes,
            image: self.shape,
            splits: self.splits,
            source: source.to_owned(),
            source_sha256: source_sha256.to_owned(),
        };
        let path = self.dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(&manifest).map_err(|e| DatasetError::Manifest { path: path.clone(), source: ManifestError::Json(e) })?;
        write_then_rename(&path, text.as_bytes())?;
        Ok(manifest)
    }
}

/// Writes `bytes` to `path` through a temporary file, so `path` is either absent, the old
/// file untouched, or the new one whole; never a file changed in place.
fn write_then_rename(path: &Path, bytes: &[u8]) -> Result<(), DatasetError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, bytes).map_err(|source| DatasetError::Io { path: temporary.clone(), source })?;
    std::fs::rename(&temporary, path).map_err(|source| DatasetError::Io { path: path.to_path_buf(), source })
}
