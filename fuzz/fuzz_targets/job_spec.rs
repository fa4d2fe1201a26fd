//! A job spec as `feral submit` sends it: parsed and validated, or refused naming a field.
#![no_main]

use feral_common::spec::JobSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(spec) = JobSpec::from_toml(text) {
            // What was accepted must be writable and read back the same.
            let again = JobSpec::from_toml(&spec.to_toml()).expect("an accepted spec reads back");
            assert_eq!(again, spec);
        }
    }
});
