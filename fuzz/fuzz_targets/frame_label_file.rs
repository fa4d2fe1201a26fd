//! A video's frame label file (an optional header of class names, then one label per
//! frame) through `feral prepare frames`, beside one two-frame video: imported, or refused
//! naming the file and line, never a panic.
#![no_main]

use std::sync::OnceLock;

use feral_common::import::{import_frames, SplitOptions};
use libfuzzer_sys::fuzz_target;

/// A root with one video of two 8×8 gray frames, and its label directory.
fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let video = dir.path().join("frames/clip");
        std::fs::create_dir_all(&video).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("labels")).expect("mkdir");
        for frame in 1..=2 {
            image::GrayImage::from_pixel(8, 8, image::Luma([frame * 60])).save(video.join(format!("{frame:05}.png"))).expect("a frame");
        }
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let root = dir().path();
    std::fs::write(root.join("labels/clip.txt"), data).expect("write the label file");
    let out = root.join("out");
    let _ = std::fs::remove_dir_all(&out);
    if let Err(error) = import_frames(&root.join("frames"), &root.join("labels"), &out, 8, &SplitOptions::default(), &|_| {}) {
        assert!(!error.to_string().is_empty());
    }
});
