//! An image label list (`relative/path LABEL` lines) through `feral prepare images`: the
//! listed images do not exist, so an import that gets past the list fails on the first
//! image; what matters is that the list itself is read or refused by line, never a panic.
#![no_main]

use std::sync::OnceLock;

use feral_common::import::{import_images, SplitOptions};
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
}

fuzz_target!(|data: &[u8]| {
    let labels = dir().path().join("labels.txt");
    std::fs::write(&labels, data).expect("write the label list");
    let out = dir().path().join("out");
    let _ = std::fs::remove_dir_all(&out);
    if let Err(error) = import_images(dir().path(), Some(&labels), &out, 48, 1, &SplitOptions::default(), &|_| {}) {
        assert!(!error.to_string().is_empty());
    }
});
