//! The image-folder importer (RAF-DB / AffectNet style): class sub-folders, optionally under
//! top-level `train/` and `val/` (or `test/`) folders, or a label list file. Images of any
//! size and colour are decoded in parallel chunks, converted to grayscale or RGB and resized
//! to a square; the decoding helpers are shared with the frame importer.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::dataset::ImageShape;
use crate::spec::MAX_CLASSES;
use crate::synthetic::CLASS_NAMES;

use super::split::assign_labelled;
use super::staging::{StagedSample, Staging, Target};
use super::{hex, require_train_and_val, ImportError, ImportReport, SplitOptions};

/// Images decoded in parallel at a time.
const CHUNK_IMAGES: usize = 256;
/// Top-level folder names that define the validation split, in order of preference.
const VAL_FOLDERS: [&str; 3] = ["val", "validation", "test"];

/// Imports image folders into a dataset directory at `out`, every image resized (triangle
/// filter, aspect ratio not kept) to `size`×`size` with `channels` 1 (grayscale) or 3 (RGB).
///
/// Without `labels`, `root` holds one sub-folder per class (class names = the sorted
/// sub-folder names, numerically when all are numbers; images found recursively), or
/// `train/` and `val/` (else `validation/` or `test/`) folders that each hold class
/// sub-folders, the second one being the val split. With `labels`, each line of that file
/// is `relative/path.jpg LABEL` (path relative to `root`; LABEL a class index, classes then
/// being `0..=max`, or a class name, classes then being the sorted distinct names); paths
/// whose first folder is `val`, `validation` or `test` form the val split. Without a val
/// split, a stratified seeded `val_fraction` is held out. A stratified seeded
/// `test_fraction` of the val split (given or held out) then moves to the test split, which
/// is only reported. Of the rest, a stratified seeded `labeled_fraction` keeps its labels
/// and the others join unlabeled with labels hidden.
/// Sample ids are positions in the listing (sorted paths, or the label file's order); an
/// unreadable image fails the import naming its path, or with `skip_bad` is skipped and
/// listed. `source_sha256` is the sha256 of the sorted (relative path, size) list, followed
/// by the label file's bytes. `progress` receives the number of images decoded so far.
pub fn import_images(
    root: &Path,
    labels: Option<&Path>,
    out: &Path,
    size: u32,
    channels: u32,
    options: &SplitOptions,
    progress: &dyn Fn(u64),
) -> Result<ImportReport, ImportError> {
    options.validate()?;
    check_image_options(size, channels)?;
    let listing = match labels {
        Some(labels) => list_from_label_file(root, labels)?,
        None => list_class_folders(root)?,
    };
    if listing.items.is_empty() {
        return Err(ImportError::Empty { path: root.to_path_buf() });
    }
    let shape = ImageShape { height: size, width: size, channels };
    let mut staging = Staging::create(out, shape)?;
    let mut skipped = Vec::new();
    stage_images(&listing.items, shape, options, &mut staging, &mut skipped, progress)?;
    if staging.samples().is_empty() {
        return Err(ImportError::Empty { path: root.to_path_buf() });
    }
    let labels: Vec<i64> = staging.samples().iter().map(|s| s.label).collect();
    let given_val: Vec<bool> = staging.samples().iter().map(|s| s.given_val).collect();
    let given_test = vec![false; given_val.len()];
    let splits: Vec<_> = assign_labelled(&labels, &given_val, &given_test, options).into_iter().map(Some).collect();
    require_train_and_val(root, &splits, options)?;
    let target = Target { out, name: folder_name(root, "images"), classes: listing.classes, shape, source: "images", source_sha256: listing.digest };
    let manifest = staging.write_dataset(target, &splits, options)?;
    Ok(ImportReport { manifest, skipped, rows_read: listing.items.len() as u64, ignored: listing.ignored })
}

/// An image to decode and what to stage it as.
pub(super) struct PendingImage {
    pub path: PathBuf,
    pub sample: StagedSample,
}

/// What was found under the root.
struct Listing {
    classes: Vec<String>,
    items: Vec<PendingImage>,
    digest: String,
    ignored: u64,
}

/// Decodes `items` in parallel chunks and stages them in order.
pub(super) fn stage_images(
    items: &[PendingImage],
    shape: ImageShape,
    options: &SplitOptions,
    staging: &mut Staging,
    skipped: &mut Vec<String>,
    progress: &dyn Fn(u64),
) -> Result<(), ImportError> {
    let mut done = 0u64;
    for chunk in items.chunks(CHUNK_IMAGES) {
        let decoded: Vec<Result<Vec<u8>, String>> = chunk.par_iter().map(|item| decode_image(&item.path, shape)).collect();
        for (item, pixels) in chunk.iter().zip(decoded) {
            match pixels {
                Ok(pixels) => staging.push(item.sample, &pixels)?,
                Err(problem) if options.skip_bad => skipped.push(format!("{}: {problem}", item.path.display())),
                Err(problem) => return Err(ImportError::Image { path: item.path.clone(), problem }),
            }
        }
        done += chunk.len() as u64;
        progress(done);
    }
    Ok(())
}

/// One image as `shape` bytes (height × width × channels, row-major).
pub(super) fn decode_image(path: &Path, shape: ImageShape) -> Result<Vec<u8>, String> {
    Ok(to_shape(&open_image(path)?, shape))
}

/// The image file at `path`, decoded (its format guessed from its bytes).
fn open_image(path: &Path) -> Result<image::DynamicImage, String> {
    image::ImageReader::open(path).map_err(|e| e.to_string())?.with_guessed_format().map_err(|e| e.to_string())?.decode().map_err(|e| e.to_string())
}

/// `image` resized and converted to `shape` bytes (gray or RGB).
fn to_shape(image: &image::DynamicImage, shape: ImageShape) -> Vec<u8> {
    let (width, height) = (shape.width, shape.height);
    if shape.channels == 1 {
        image::imageops::resize(&image.to_luma8(), width, height, FilterType::Triangle).into_raw()
    } else {
        image::imageops::resize(&image.to_rgb8(), width, height, FilterType::Triangle).into_raw()
    }
}

pub(super) fn check_image_options(size: u32, channels: u32) -> Result<(), ImportError> {
    if !(1..=4096).contains(&size) {
        return Err(ImportError::Options { problem: format!("image size {size} is outside 1..=4096") });
    }
    if channels != 1 && channels != 3 {
        return Err(ImportError::Options { problem: format!("channels must be 1 or 3, got {channels}") });
    }
    Ok(())
}

/// Whether `path` names a JPEG or PNG file (by extension; hidden files never).
pub fn is_image_file(path: &Path) -> bool {
    let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
    let extension = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
    !hidden && matches!(extension.as_deref(), Some("jpg" | "jpeg" | "png"))
}

/// Image files under `dir`, recursively, sorted by path.
pub fn list_image_files(dir: &Path) -> Result<Vec<PathBuf>, ImportError> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).map_err(ImportError::io("list", &folder))? {
            let path = entry.map_err(ImportError::io("list", &folder))?.path();
            if path.is_dir() {
                pending.push(path);
            } else if is_image_file(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Names of the sub-folders of `dir` (hidden ones left out).
pub(super) fn sub_folders(dir: &Path) -> Result<Vec<String>, ImportError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(ImportError::io("list", dir))? {
        let entry = entry.map_err(ImportError::io("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && !name.starts_with('.') {
            names.push(name);
        }
    }
    Ok(names)
}

/// Sorts class names: the basic expressions (any case) in Feral's one order, that of
/// FER2013 and the synthetic set ([`CLASS_NAMES`], then `contempt`), so that a model's
/// outputs mean the same classes whichever importer made its dataset; numerically when all
/// are numbers; else as text.
fn sort_class_names(names: &mut Vec<String>) {
    names.sort();
    names.dedup();
    let basic = |name: &str| {
        let name = name.to_ascii_lowercase();
        CLASS_NAMES.iter().chain(&["contempt"]).position(|c| *c == name)
    };
    if names.iter().all(|n| basic(n).is_some()) {
        names.sort_by_key(|n| basic(n));
    } else if names.iter().all(|n| n.parse::<u64>().is_ok()) {
        names.sort_by_key(|n| n.parse::<u64>().unwrap_or(u64::MAX));
    }
}

/// The image file at `path` as the `shape` a model takes (height × width × channels bytes,
/// row-major). With `resize`, any size and colour is resized and converted; without, an
/// image of another size or channel count is refused, naming both.
pub fn read_image_as(path: &Path, shape: ImageShape, resize: bool) -> Result<Vec<u8>, String> {
    let image = open_image(path)?;
    if !resize {
        let channels = if image.color().has_color() { 3 } else { 1 };
        if (image.height(), image.width(), channels) != (shape.height, shape.width, shape.channels) {
            let colour = |c| if c == 1 { "grayscale" } else { "colour" };
            return Err(format!(
                "is {}×{} {}; the model takes {}×{} {} (resize it, or pass --resize)",
                image.width(),
                image.height(),
                colour(channels),
                shape.width,
                shape.height,
                colour(shape.channels)
            ));
        }
    }
    Ok(to_shape(&image, shape))
}

/// sha256 over `relative path \t size \n` lines of the sorted files, then `extra`.
pub(super) fn listing_digest(root: &Path, files: &[&Path], extra: &[u8]) -> String {
    let mut lines: Vec<String> = files
        .iter()
        .map(|path| {
            let relative = path.strip_prefix(root).unwrap_or(path);
            let size = std::fs::metadata(path).map_or_else(|_| "missing".to_owned(), |m| m.len().to_string());
            format!("{}\t{size}\n", relative.display())
        })
        .collect();
    lines.sort();
    let mut hasher = Sha256::new();
    for line in &lines {
        hasher.update(line.as_bytes());
    }
    hasher.update(extra);
    hex(&hasher.finalize())
}

pub(super) fn folder_name(root: &Path, fallback: &str) -> String {
    root.file_name().map_or_else(|| fallback.to_owned(), |n| n.to_string_lossy().into_owned())
}

fn list_class_folders(root: &Path) -> Result<Listing, ImportError> {
    let top = sub_folders(root)?;
    let val_folder = VAL_FOLDERS.iter().find(|name| top.iter().any(|t| t == *name));
    let parts: Vec<(PathBuf, bool)> = match (top.iter().any(|t| t == "train"), val_folder) {
        (true, Some(val)) => vec![(root.join("train"), false), (root.join(val), true)],
        _ => vec![(root.to_path_buf(), false)],
    };
    let mut classes = Vec::new();
    for (dir, _) in &parts {
        classes.extend(sub_folders(dir)?);
    }
    sort_class_names(&mut classes);
    if classes.len() < 2 {
        let problem = format!("expected class sub-folders (at least 2), found {}", classes.len());
        return Err(ImportError::Layout { path: root.to_path_buf(), problem });
    }
    let mut items = Vec::new();
    for (dir, given_val) in &parts {
        for (label, class) in classes.iter().enumerate() {
            let class_dir = dir.join(class);
            if !class_dir.is_dir() {
                continue;
            }
            for path in list_image_files(&class_dir)? {
                let sample = StagedSample {
                    sample_id: items.len() as i64,
                    label: label as i64,
                    given_val: *given_val,
                    given_test: false,
                    video_id: None,
                    frame_index: None,
                };
                items.push(PendingImage { path, sample });
            }
        }
    }
    let mut ignored = 0;
    if parts.len() == 2 {
        for unused in top.iter().filter(|t| parts.iter().all(|(dir, _)| dir != &root.join(t))) {
            ignored += list_image_files(&root.join(unused))?.len() as u64;
        }
    }
    let files: Vec<&Path> = items.iter().map(|i| i.path.as_path()).collect();
    let digest = listing_digest(root, &files, &[]);
    Ok(Listing { classes, items, digest, ignored })
}

fn list_from_label_file(root: &Path, labels: &Path) -> Result<Listing, ImportError> {
    let bytes = std::fs::read(labels).map_err(ImportError::io("read", labels))?;
    let text = String::from_utf8_lossy(&bytes);
    let mut entries: Vec<(u64, &str, &str)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let split_at = line.rfind(|c: char| c.is_ascii_whitespace() || c == ',');
        let Some(at) = split_at.filter(|&at| !line[..at].trim().is_empty()) else {
            let problem = format!("expected `relative/path LABEL`, found {line:?}");
            return Err(ImportError::Labels { path: labels.to_path_buf(), line: index as u64 + 1, problem });
        };
        entries.push((index as u64 + 1, line[..at].trim_end_matches(',').trim(), line[at + 1..].trim()));
    }
    let numeric = entries.iter().all(|(_, _, label)| label.parse::<i64>().is_ok());
    let classes: Vec<String> = if numeric {
        let mut max = -1;
        for (line, _, label) in &entries {
            let value = label.parse::<i64>().unwrap_or(-1);
            if value < 0 {
                return Err(ImportError::Labels { path: labels.to_path_buf(), line: *line, problem: format!("label {value} is negative") });
            }
            if value >= MAX_CLASSES as i64 {
                let problem = format!("label {value} is above {}, the largest class index (at most {MAX_CLASSES} classes)", MAX_CLASSES - 1);
                return Err(ImportError::Labels { path: labels.to_path_buf(), line: *line, problem });
            }
            max = max.max(value);
        }
        (0..=max).map(|c| c.to_string()).collect()
    } else {
        let mut names: Vec<String> = entries.iter().map(|(_, _, label)| (*label).to_owned()).collect();
        sort_class_names(&mut names);
        names
    };
    if classes.len() < 2 {
        let problem = format!("needs at least 2 classes, found {}", classes.len());
        return Err(ImportError::Layout { path: labels.to_path_buf(), problem });
    }
    let mut items = Vec::with_capacity(entries.len());
    for (_, relative, label) in entries {
        let label = if numeric { label.parse::<i64>().unwrap_or(-1) } else { classes.iter().position(|c| c == label).map_or(-1, |c| c as i64) };
        let first = Path::new(relative).components().next().map(|c| c.as_os_str().to_string_lossy().to_ascii_lowercase());
        let given_val = first.is_some_and(|f| VAL_FOLDERS.contains(&f.as_str()));
        let sample = StagedSample { sample_id: items.len() as i64, label, given_val, given_test: false, video_id: None, frame_index: None };
        items.push(PendingImage { path: root.join(relative), sample });
    }
    let files: Vec<&Path> = items.iter().map(|i| i.path.as_path()).collect();
    let digest = listing_digest(root, &files, &bytes);
    Ok(Listing { classes, items, digest, ignored: 0 })
}

#[cfg(test)]
#[path = "images_tests.rs"]
mod tests;
