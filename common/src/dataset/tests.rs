use super::*;

fn shape() -> ImageShape {
    ImageShape { height: 4, width: 3, channels: 1 }
}

fn write_small(dir: &Path) -> Manifest {
    let classes = vec!["a".to_owned(), "b".to_owned()];
    let mut writer = DatasetWriter::create(dir, "small", classes, shape(), 2).expect("create");
    for i in 0..5i64 {
        let pixels = vec![i as u8; 12];
        writer.push(Split::Train, Sample { pixels: &pixels, label: i % 2, sample_id: i, hidden_label: None, video_id: None, frame_index: None }).expect("push");
    }
    let pixels = vec![9u8; 12];
    writer.push(Split::Unlabeled, Sample { pixels: &pixels, label: -1, sample_id: 99, hidden_label: Some(1), video_id: None, frame_index: None }).expect("push");
    writer.finish("test", "none").expect("finish")
}

#[test]
fn written_dataset_reads_back_identically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = write_small(dir.path());
    assert_eq!(manifest.splits[&Split::Train].shards.len(), 3, "5 samples in shards of 2");
    assert_eq!(manifest.splits[&Split::Train].class_counts, vec![3, 2]);
    assert_eq!(manifest.splits[&Split::Unlabeled].class_counts, vec![0, 1], "hidden labels are counted");

    let dataset = Dataset::open(dir.path()).expect("open");
    assert_eq!(dataset.manifest(), &manifest);
    let train = dataset.read_split(Split::Train).expect("read");
    assert_eq!(train.labels, vec![0, 1, 0, 1, 0]);
    assert_eq!(train.sample_ids, vec![0, 1, 2, 3, 4]);
    assert_eq!(train.image(3), &[3u8; 12]);
    assert_eq!(train.hidden_labels, None);
    assert_eq!(train.video_ids, None, "no video columns unless a sample has them");
    let pool = dataset.read_split(Split::Unlabeled).expect("read");
    assert_eq!(pool.labels, vec![-1]);
    assert_eq!(pool.hidden_labels, Some(vec![1]));
    assert_eq!(dataset.verify().expect("verify"), 6);
    assert!(matches!(dataset.read_split(Split::Val), Err(DatasetError::MissingSplit { .. })));
}

#[test]
fn corrupt_files_are_reported_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_small(dir.path());
    let shard = dir.path().join("train-00001.safetensors");
    let mut bytes = std::fs::read(&shard).expect("read shard");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&shard, &bytes).expect("write shard");
    let err = Dataset::open(dir.path()).expect("manifest still fine").read_split(Split::Train).expect_err("checksum");
    assert!(matches!(err, DatasetError::Checksum { .. }));
    assert!(err.to_string().contains("train-00001.safetensors"), "{err}");

    // Garbage that still matches its checksum: the parser must refuse it, not panic.
    std::fs::write(&shard, b"not a tensor file").expect("write");
    let info = ShardInfo { file: "train-00001.safetensors".into(), samples: 2, sha256: String::new() };
    let err = read_shard(dir.path(), &info, shape(), false).expect_err("garbage");
    assert!(err.to_string().contains("not a safetensors file"), "{err}");

    std::fs::write(dir.path().join(MANIFEST_FILE), "{ \"format_version\": 1 ").expect("write");
    let err = Dataset::open(dir.path()).expect_err("bad manifest");
    assert!(err.to_string().contains("manifest.json"), "{err}");

    let err = Dataset::open(dir.path().join("nowhere")).expect_err("missing");
    assert!(matches!(err, DatasetError::Io { .. }), "{err}");
}

#[test]
fn shard_with_wrong_shape_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_small(dir.path());
    let info = ShardInfo { file: "train-00000.safetensors".into(), samples: 3, sha256: String::new() };
    let err = read_shard(dir.path(), &info, shape(), false).expect_err("wrong count");
    assert!(err.to_string().contains("`images`"), "{err}");
}

#[test]
fn video_columns_round_trip_and_merge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let classes = vec!["a".to_owned(), "b".to_owned()];
    let mut writer = DatasetWriter::create(dir.path(), "video", classes, shape(), 2).expect("create");
    let pixels = vec![1u8; 12];
    writer.push(Split::Train, Sample { pixels: &pixels, label: 0, sample_id: 0, hidden_label: None, video_id: None, frame_index: None }).expect("push");
    writer.push(Split::Train, Sample { pixels: &pixels, label: 1, sample_id: 1, hidden_label: None, video_id: None, frame_index: None }).expect("push");
    writer.push(Split::Train, Sample { pixels: &pixels, label: 1, sample_id: 2, hidden_label: None, video_id: Some(4), frame_index: Some(17) }).expect("push");
    writer.finish("test", "none").expect("finish");
    let train = Dataset::open(dir.path()).expect("open").read_split(Split::Train).expect("read");
    assert_eq!(train.video_ids, Some(vec![-1, -1, 4]), "a shard without video columns reads as -1");
    assert_eq!(train.frame_indices, Some(vec![-1, -1, 17]));
}
