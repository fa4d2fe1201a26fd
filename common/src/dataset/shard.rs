//! Reading one safetensors shard, with every check that a corrupt file could fail. The
//! shard is memory-mapped: its images stay in the map, only the small i64 columns are
//! decoded.

use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};

use super::{DatasetError, ImageShape, Images, ShardInfo};

/// Samples of one shard (or several appended), images N×H×W×C.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardData {
    pub shape: ImageShape,
    pub images: Images,
    /// Visible labels; -1 marks an unlabelled sample.
    pub labels: Vec<i64>,
    pub sample_ids: Vec<i64>,
    /// True labels of unlabelled samples where known (synthetic data, held-back labels).
    pub hidden_labels: Option<Vec<i64>>,
    /// The video of each sample (video datasets; -1 where a sample has none).
    pub video_ids: Option<Vec<i64>>,
    /// Each sample's frame index within its video (video datasets; -1 where none).
    pub frame_indices: Option<Vec<i64>>,
}

impl ShardData {
    pub fn empty(shape: ImageShape) -> Self {
        Self {
            shape,
            images: Images::new(shape.pixels()),
            labels: Vec::new(),
            sample_ids: Vec::new(),
            hidden_labels: None,
            video_ids: None,
            frame_indices: None,
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image(&self, index: usize) -> &[u8] {
        self.images.image(index)
    }

    pub fn append(&mut self, other: ShardData) {
        let (had, added) = (self.len(), other.len());
        self.images.append(other.images);
        self.labels.extend(&other.labels);
        self.sample_ids.extend(other.sample_ids);
        self.hidden_labels = merge_optional(self.hidden_labels.take(), had, other.hidden_labels, added);
        self.video_ids = merge_optional(self.video_ids.take(), had, other.video_ids, added);
        self.frame_indices = merge_optional(self.frame_indices.take(), had, other.frame_indices, added);
    }
}

/// Concatenates two optional per-sample columns, filling the side that lacks one with -1.
fn merge_optional(mine: Option<Vec<i64>>, had: usize, theirs: Option<Vec<i64>>, added: usize) -> Option<Vec<i64>> {
    match (mine, theirs) {
        (None, None) => None,
        (mine, theirs) => {
            let mut merged = mine.unwrap_or_else(|| vec![-1; had]);
            merged.extend(theirs.unwrap_or_else(|| vec![-1; added]));
            Some(merged)
        }
    }
}

/// Reads `info.file` from `dir`, checking its checksum (when `verify`), dtypes, shapes and
/// sample count against the manifest, and that every label is -1 (none) or one of the
/// manifest's `classes`.
pub fn read_shard(dir: &Path, info: &ShardInfo, shape: ImageShape, classes: usize, verify: bool) -> Result<ShardData, DatasetError> {
    let path = dir.join(&info.file);
    let io = |source| DatasetError::Io { path: path.clone(), source };
    // A regular file only: a device or a pipe named as a shard is refused, not mapped.
    let (file, _) = crate::files::open_regular(&path, u64::MAX, "dataset shard")?;
    let bytes = Arc::new(map_shard(&file).map_err(io)?);
    if verify && hex_sha256(&bytes) != info.sha256 {
        return Err(DatasetError::Checksum { path });
    }
    let corrupt = |problem: String| DatasetError::Shard { path: path.clone(), problem };
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(format!("not a safetensors file ({e})")))?;
    let n = info.samples as usize;

    let images = tensors.tensor("images").map_err(|_| corrupt("has no `images` tensor".into()))?;
    let want = [n, shape.height as usize, shape.width as usize, shape.channels as usize];
    if images.dtype() != Dtype::U8 || images.shape() != want {
        return Err(corrupt(format!("`images` is {:?} {:?}, expected U8 {want:?}", images.dtype(), images.shape())));
    }
    let labels = read_i64(&tensors, "labels", n).map_err(corrupt)?.ok_or_else(|| corrupt("has no `labels` tensor".into()))?;
    let sample_ids = read_i64(&tensors, "sample_ids", n).map_err(corrupt)?.ok_or_else(|| corrupt("has no `sample_ids` tensor".into()))?;
    let hidden_labels = read_i64(&tensors, "hidden_labels", n).map_err(corrupt)?;
    let video_ids = read_i64(&tensors, "video_ids", n).map_err(corrupt)?;
    let frame_indices = read_i64(&tensors, "frame_indices", n).map_err(corrupt)?;
    for (name, column) in [("labels", Some(&labels)), ("hidden_labels", hidden_labels.as_ref())] {
        if let Some((index, label)) = column.into_iter().flatten().enumerate().find(|(_, &l)| l < -1 || l >= classes as i64) {
            return Err(corrupt(format!("`{name}`[{index}] is {label}, outside the manifest's {classes} classes (0..{classes}, or -1 for none)")));
        }
    }
    let images = Images::mapped(shape.pixels(), Arc::clone(&bytes), range_within(&bytes, images.data()));
    Ok(ShardData { shape, images, labels, sample_ids, hidden_labels, video_ids, frame_indices })
}

/// Maps a shard read-only. The only `unsafe` of this crate; reading the whole file instead
/// (what this replaced) would be safe but costs a copy of every image in memory.
#[allow(unsafe_code)]
fn map_shard(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: a map is sound while nobody changes the file under it. Shards are immutable
    // once written: `DatasetWriter` writes each to a temporary name and renames it into
    // place, and nothing in Feral opens a shard for writing afterwards, so rewriting or
    // deleting a dataset replaces directory entries and leaves a mapped file's contents as
    // they were. Changing a shard in place from outside Feral while it is read is not
    // supported (it would be a corrupt dataset anyway).
    unsafe { Mmap::map(file) }
}

/// Where `part`, a sub-slice of `whole`, lies within it.
fn range_within(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    debug_assert!(start + part.len() <= whole.len(), "not a sub-slice");
    start..start + part.len()
}

fn read_i64(tensors: &SafeTensors<'_>, name: &str, n: usize) -> Result<Option<Vec<i64>>, String> {
    let Ok(view) = tensors.tensor(name) else { return Ok(None) };
    if view.dtype() != Dtype::I64 || view.shape() != [n] {
        return Err(format!("`{name}` is {:?} {:?}, expected I64 [{n}]", view.dtype(), view.shape()));
    }
    let values = view.data().chunks_exact(8).map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])).collect();
    Ok(Some(values))
}

pub(super) fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
