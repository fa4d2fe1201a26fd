//! FER2013 CSV text through the importer's own parsers: rows, or the bad line named.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err((line, problem)) = feral_common::import::check_fer2013_text(data) {
        assert!(line >= 1 && !problem.is_empty());
    }
});
