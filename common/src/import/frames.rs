//! The video-frame importer (Aff-Wild2 style): one folder of frame images per video and one
//! label file per video. Splits are planned by video, never by frame, so no video's frames
//! sit on both sides of the validation boundary; every sample keeps its video id and frame
//! index for the temporal encoder.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::dataset::{ImageShape, Split};
use crate::spec::MAX_CLASSES;

use super::images::{check_image_options, folder_name, list_image_files, listing_digest, stage_images, sub_folders, PendingImage};
use super::split::{plan_videos, VideoRole};
use super::staging::{StagedSample, Staging, Target};
use super::{hex, require_train_and_val, ImportError, ImportReport, SplitOptions};

/// Imports frame folders into a dataset directory at `out`: grayscale frames resized to
/// `size`×`size`.
///
/// `root/<video>/<frame image>` holds the frames (a video's index is its position among the
/// sorted folder names; a frame's index is the last number in its file name). Labels come
/// from `labels_dir/<video>.txt`, one integer per line in frame order: line `k` labels frame
/// number `k` (1-based, as Aff-Wild2 names its frames; 0-based when some frame is numbered
/// 0). A first line that does not start with a number is a header; when it lists two or
/// more comma-separated names they are the classes, otherwise classes are `0..=max label`.
/// `-1` marks an unlabelled frame; a missing label file leaves the whole video unlabelled;
/// blank lines are skipped. Frames past the end of their label file are unlabelled.
///
/// Whole videos are split: a seeded `val_fraction` of the videos with labelled frames holds
/// validation (their labelled frames go to val, their unlabelled frames are left out and
/// counted in `ignored`), and a seeded `test_fraction` of those videos holds the test split
/// instead (the same, to test; see [`plan_videos`](super::plan_videos)); of the other labelled videos a seeded `labeled_fraction` keeps its
/// labels (labelled frames to train, unlabelled frames to unlabeled); every other frame goes
/// to unlabeled with its known label hidden. Shards carry `video_ids` and `frame_indices`.
/// An unreadable frame fails the import naming its path, or with `skip_bad` is skipped and
/// listed. `source_sha256` covers the frames' (relative path, size) list and the label files.
pub fn import_frames(
    root: &Path,
    labels_dir: &Path,
    out: &Path,
    size: u32,
    options: &SplitOptions,
    progress: &dyn Fn(u64),
) -> Result<ImportReport, ImportError> {
    options.validate()?;
    check_image_options(size, 1)?;
    let mut videos = sub_folders(root)?;
    videos.sort();
    if videos.is_empty() {
        return Err(ImportError::Layout { path: root.to_path_buf(), problem: "expected one sub-folder of frames per video".to_owned() });
    }
    let mut skipped = Vec::new();
    let mut frames_by_video = Vec::with_capacity(videos.len());
    for video in &videos {
        frames_by_video.push(list_frames(&root.join(video), options, &mut skipped)?);
    }
    let mut label_files = Vec::with_capacity(videos.len());
    let mut labels_hasher = Sha256::new();
    for video in &videos {
        let path = labels_dir.join(format!("{video}.txt"));
        let file = read_label_file(&path)?;
        if let Some(file) = &file {
            labels_hasher.update(format!("{video}.txt\t{}\n", file.bytes.len()).as_bytes());
            labels_hasher.update(&file.bytes);
        }
        label_files.push(file);
    }
    let classes = classes_of(&label_files, labels_dir)?;

    let first_number = if frames_by_video.iter().flatten().any(|(_, number)| *number == 0) { 0 } else { 1 };
    let mut items = Vec::new();
    for (video_id, frames) in frames_by_video.iter().enumerate() {
        let labels = label_files[video_id].as_ref().map_or(&[][..], |file| file.labels.as_slice());
        for (path, number) in frames {
            let label = usize::try_from(number - first_number).ok().and_then(|line| labels.get(line)).map_or(-1, |(_, label)| *label);
            let sample = StagedSample {
                sample_id: items.len() as i64,
                label,
                given_val: false,
                given_test: false,
                video_id: Some(video_id as i64),
                frame_index: Some(*number),
            };
            items.push(PendingImage { path: path.clone(), sample });
        }
    }
    if items.is_empty() {
        return Err(ImportError::Empty { path: root.to_path_buf() });
    }
    let files: Vec<&Path> = items.iter().map(|i| i.path.as_path()).collect();
    let digest = listing_digest(root, &files, hex(&labels_hasher.finalize()).as_bytes());

    let shape = ImageShape { height: size, width: size, channels: 1 };
    let mut staging = Staging::create(out, shape)?;
    stage_images(&items, shape, options, &mut staging, &mut skipped, progress)?;
    let mut labelled = vec![false; videos.len()];
    for sample in staging.samples().iter().filter(|s| s.label >= 0) {
        labelled[sample.video_id.unwrap_or(0) as usize] = true;
    }
    if !labelled.contains(&true) {
        return Err(ImportError::Layout { path: labels_dir.to_path_buf(), problem: "no frame has a label".to_owned() });
    }
    let roles = plan_videos(&labelled, options);
    let mut ignored = 0;
    let splits: Vec<Option<Split>> = staging
        .samples()
        .iter()
        .map(|sample| {
            let has_label = sample.label >= 0;
            match (roles[sample.video_id.unwrap_or(0) as usize], has_label) {
                (VideoRole::Val, true) => Some(Split::Val),
                (VideoRole::Test, true) => Some(Split::Test),
                (VideoRole::Val | VideoRole::Test, false) => {
                    ignored += 1;
                    None
                }
                (VideoRole::Labelled, true) => Some(Split::Train),
                (VideoRole::Labelled, false) | (VideoRole::Hidden, _) => Some(Split::Unlabeled),
            }
        })
        .collect();
    require_train_and_val(root, &splits, options)?;
    let target = Target { out, name: folder_name(root, "frames"), classes, shape, source: "frames", source_sha256: digest };
    let manifest = staging.write_dataset(target, &splits, options)?;
    Ok(ImportReport { manifest, skipped, rows_read: items.len() as u64, ignored })
}

/// One video's label file.
struct LabelFile {
    path: PathBuf,
    /// Class names from the header, when it lists them.
    header: Option<Vec<String>>,
    /// (line number, label) per frame, in frame order.
    labels: Vec<(u64, i64)>,
    bytes: Vec<u8>,
}

/// Reads a label file; `None` when it does not exist.
fn read_label_file(path: &Path) -> Result<Option<LabelFile>, ImportError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ImportError::Io { action: "read", path: path.to_path_buf(), source }),
    };
    let mut file = LabelFile { path: path.to_path_buf(), header: None, labels: Vec::new(), bytes: Vec::new() };
    let text = String::from_utf8_lossy(&bytes);
    let mut first = true;
    for (index, line) in text.lines().enumerate() {
        let (line, number) = (line.trim(), index as u64 + 1);
        if line.is_empty() {
            continue;
        }
        let starts_numeric = line.starts_with(|c: char| c.is_ascii_digit() || c == '-');
        if std::mem::take(&mut first) && !starts_numeric {
            let names: Vec<String> = line.split(',').map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect();
            file.header = (names.len() >= 2).then_some(names);
            continue;
        }
        let label: i64 =
            line.parse().map_err(|_| ImportError::Labels { path: path.to_path_buf(), line: number, problem: format!("label {line:?} is not a number") })?;
        if label < -1 {
            return Err(ImportError::Labels { path: path.to_path_buf(), line: number, problem: format!("label {label} is below -1") });
        }
        if label >= MAX_CLASSES as i64 {
            let problem = format!("label {label} is above {}, the largest class index (at most {MAX_CLASSES} classes)", MAX_CLASSES - 1);
            return Err(ImportError::Labels { path: path.to_path_buf(), line: number, problem });
        }
        file.labels.push((number, label));
    }
    file.bytes = bytes;
    Ok(Some(file))
}

/// The classes: the first header that names them, else `0..=max label`; every label must
/// be one of them.
fn classes_of(files: &[Option<LabelFile>], labels_dir: &Path) -> Result<Vec<String>, ImportError> {
    let files: Vec<&LabelFile> = files.iter().flatten().collect();
    let classes = match files.iter().find_map(|f| f.header.clone()) {
        Some(names) => names,
        None => {
            let max = files.iter().flat_map(|f| f.labels.iter().map(|(_, l)| *l)).max().unwrap_or(-1);
            (0..=max).map(|c| c.to_string()).collect()
        }
    };
    if classes.len() < 2 {
        let problem = format!("label files name {} classes, need at least 2", classes.len());
        return Err(ImportError::Layout { path: labels_dir.to_path_buf(), problem });
    }
    for file in files {
        if let Some((line, label)) = file.labels.iter().find(|(_, label)| *label >= classes.len() as i64) {
            let problem = format!("label {label} is outside -1..{}", classes.len());
            return Err(ImportError::Labels { path: file.path.clone(), line: *line, problem });
        }
    }
    Ok(classes)
}

/// A video's frame files with their frame numbers, sorted by number.
fn list_frames(dir: &Path, options: &SplitOptions, skipped: &mut Vec<String>) -> Result<Vec<(PathBuf, i64)>, ImportError> {
    let mut frames = Vec::new();
    for path in list_image_files(dir)? {
        match frame_number(&path) {
            Some(number) => frames.push((path, number)),
            None if options.skip_bad => skipped.push(format!("{}: frame file name has no number", path.display())),
            None => return Err(ImportError::Layout { path, problem: "frame file name has no number".to_owned() }),
        }
    }
    frames.sort_by_key(|(_, number)| *number);
    if let Some(pair) = frames.windows(2).find(|pair| pair[0].1 == pair[1].1) {
        let problem = format!("frame number {} is also {}", pair[1].1, pair[0].0.display());
        return Err(ImportError::Layout { path: pair[1].0.clone(), problem });
    }
    Ok(frames)
}

/// The last number in a file's stem: `00012.jpg` and `frame_12.png` are frame 12.
fn frame_number(path: &Path) -> Option<i64> {
    let stem = path.file_stem()?.to_string_lossy();
    let end = stem.rfind(|c: char| c.is_ascii_digit())? + 1;
    let start = stem[..end].rfind(|c: char| !c.is_ascii_digit()).map_or(0, |p| p + 1);
    stem[start..end].parse().ok()
}

#[cfg(test)]
#[path = "frames_tests.rs"]
mod tests;
