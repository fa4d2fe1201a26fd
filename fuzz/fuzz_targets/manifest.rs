//! A dataset's `manifest.json`: parsed and checked, or refused with the problem.
#![no_main]

use feral_common::dataset::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(problem) = Manifest::parse(text) {
            assert!(!problem.to_string().is_empty());
        }
    }
});
