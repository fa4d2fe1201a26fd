//! A dataset shard (safetensors) read as the manifest of `corpus/shard`'s seed describes it
//! (four 4×3 gray images, two classes): read whole, or refused naming the file.
#![no_main]

use std::sync::OnceLock;

use feral_common::dataset::{read_shard, ImageShape, ShardInfo};
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
}

fuzz_target!(|data: &[u8]| {
    let info = ShardInfo { file: "train-00000.safetensors".into(), samples: 4, sha256: String::new() };
    std::fs::write(dir().path().join(&info.file), data).expect("write the shard");
    let shape = ImageShape { height: 4, width: 3, channels: 1 };
    match read_shard(dir().path(), &info, shape, 2, false) {
        Ok(shard) => assert_eq!(shard.len(), 4),
        Err(error) => assert!(error.to_string().contains(&info.file)),
    }
});
