use super::*;
use crate::files::FileError;

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
    writer
        .push(Split::Unlabeled, Sample { pixels: &pixels, label: -1, sample_id: 99, hidden_label: Some(1), video_id: None, frame_index: None })
        .expect("push");
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
fn a_manifest_without_a_test_split_loads_as_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shard = |file: &str, samples: u64| format!(r#"{{ "file": "{file}", "samples": {samples}, "sha256": "00" }}"#);
    let split =
        |file: &str, samples: u64, counts: &str| format!(r#"{{ "samples": {samples}, "class_counts": {counts}, "shards": [{}] }}"#, shard(file, samples));
    // The manifest as releases before the test split wrote it.
    let old = format!(
        r#"{{ "format_version": 1, "name": "old", "classes": ["a", "b"], "image": {{ "height": 4, "width": 3, "channels": 1 }},
            "splits": {{ "train": {}, "val": {}, "unlabeled": {} }}, "source": "synthetic", "source_sha256": "00" }}"#,
        split("train-00000.safetensors", 3, "[2, 1]"),
        split("val-00000.safetensors", 2, "[1, 1]"),
        split("unlabeled-00000.safetensors", 1, "[0, 1]"),
    );
    std::fs::write(dir.path().join(MANIFEST_FILE), &old).expect("write");
    let dataset = Dataset::open(dir.path()).expect("an old manifest opens");
    assert_eq!(dataset.manifest().splits.keys().copied().collect::<Vec<_>>(), vec![Split::Train, Split::Val, Split::Unlabeled]);
    assert!(matches!(dataset.split(Split::Test), Err(DatasetError::MissingSplit { split: Split::Test, .. })));
    let err = dataset.read_split(Split::Test).expect_err("no test split");
    assert!(err.to_string().contains("no `test` split"), "{err}");

    let with_test = old.replace(r#""unlabeled":"#, &format!(r#""test": {}, "unlabeled":"#, split("test-00000.safetensors", 2, "[1, 1]")));
    std::fs::write(dir.path().join(MANIFEST_FILE), &with_test).expect("write");
    let dataset = Dataset::open(dir.path()).expect("a manifest with a test split opens");
    assert_eq!(dataset.split(Split::Test).expect("test").samples, 2);
    let order: Vec<String> = dataset.manifest().splits.keys().map(ToString::to_string).collect();
    assert_eq!(order, ["train", "val", "test", "unlabeled"], "splits list in this order");
    assert_eq!(serde_json::to_string(&Split::Test).expect("serialise"), r#""test""#);
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
    let err = read_shard(dir.path(), &info, shape(), 7, false).expect_err("garbage");
    assert!(err.to_string().contains("not a safetensors file"), "{err}");

    std::fs::write(dir.path().join(MANIFEST_FILE), "{ \"format_version\": 1 ").expect("write");
    let err = Dataset::open(dir.path()).expect_err("bad manifest");
    assert!(err.to_string().contains("manifest.json"), "{err}");

    let err = Dataset::open(dir.path().join("nowhere")).expect_err("missing");
    assert!(matches!(err, DatasetError::File(FileError::Open { .. })), "{err}");
    assert!(err.to_string().contains("nowhere/manifest.json"), "{err}");
    // A dataset whose manifest is a directory (or a device, a pipe) is refused by what it is.
    std::fs::remove_file(dir.path().join(MANIFEST_FILE)).expect("remove");
    std::fs::create_dir(dir.path().join(MANIFEST_FILE)).expect("mkdir");
    let err = Dataset::open(dir.path()).expect_err("a directory");
    assert!(err.to_string().contains("manifest.json is a directory, not a regular file"), "{err}");
}

#[test]
fn shard_with_wrong_shape_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_small(dir.path());
    let info = ShardInfo { file: "train-00000.safetensors".into(), samples: 3, sha256: String::new() };
    let err = read_shard(dir.path(), &info, shape(), 7, false).expect_err("wrong count");
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

/// Twelve bytes that differ from every other sample's and within the image.
fn distinct_pixels(sample: i64) -> Vec<u8> {
    (0..12).map(|byte| (sample * 12 + byte) as u8).collect()
}

/// `samples` training samples with distinct pixels in shards of `shard_size`, read back.
fn write_distinct(dir: &Path, samples: i64, shard_size: usize, offset: i64) -> ShardData {
    let mut writer = DatasetWriter::create(dir, "distinct", vec!["a".to_owned(), "b".to_owned()], shape(), shard_size).expect("create");
    for i in 0..samples {
        let pixels = distinct_pixels(i + offset);
        writer.push(Split::Train, Sample { pixels: &pixels, label: 0, sample_id: i, hidden_label: None, video_id: None, frame_index: None }).expect("push");
    }
    writer.finish("test", "none").expect("finish");
    Dataset::open(dir).expect("open").read_split(Split::Train).expect("read")
}

#[test]
fn split_of_many_mapped_shards_reads_back_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let train = write_distinct(dir.path(), 10, 3, 0);
    assert_eq!(train.images.len(), 10);
    for i in 0..10 {
        assert_eq!(train.image(i), distinct_pixels(i as i64), "image {i} (shards hold 3)");
    }
    let written: Vec<u8> = (0..10).flat_map(distinct_pixels).collect();
    assert_eq!(train.images.to_vec(), written);
}

#[test]
fn owned_and_mapped_images_append_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mapped = write_distinct(dir.path(), 5, 2, 0);
    let mut owned = ShardData::empty(shape());
    for i in 100..102 {
        owned.images.extend_from_slice(&distinct_pixels(i));
        owned.labels.push(0);
        owned.sample_ids.push(i);
    }

    let mut owned_first = owned.clone();
    owned_first.append(mapped.clone());
    let want: Vec<i64> = vec![100, 101, 0, 1, 2, 3, 4];
    assert_eq!(owned_first.images.len(), want.len());
    for (index, sample) in want.iter().enumerate() {
        assert_eq!(owned_first.image(index), distinct_pixels(*sample), "owned then mapped, image {index}");
    }

    let mut mapped_first = mapped;
    mapped_first.append(owned);
    mapped_first.images.extend_from_slice(&distinct_pixels(102));
    let want: Vec<i64> = vec![0, 1, 2, 3, 4, 100, 101, 102];
    assert_eq!(mapped_first.images.to_vec(), want.iter().flat_map(|s| distinct_pixels(*s)).collect::<Vec<u8>>());
}

#[test]
fn rewriting_a_dataset_leaves_mapped_images_as_they_were() {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = write_distinct(dir.path(), 4, 2, 0);
    let after = write_distinct(dir.path(), 4, 2, 50);
    assert_eq!(before.image(3), distinct_pixels(3), "shards are replaced, not changed in place");
    assert_eq!(after.image(3), distinct_pixels(53));
}

#[test]
fn labels_outside_the_class_list_are_refused_with_the_shard_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let classes = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
    let mut writer = DatasetWriter::create(dir.path(), "three", classes, shape(), 8).expect("create");
    for i in 0..3i64 {
        let pixels = vec![i as u8; 12];
        writer.push(Split::Train, Sample { pixels: &pixels, label: i, sample_id: i, hidden_label: None, video_id: None, frame_index: None }).expect("push");
    }
    let pixels = vec![9u8; 12];
    writer.push(Split::Unlabeled, Sample { pixels: &pixels, label: -1, sample_id: 9, hidden_label: Some(2), video_id: None, frame_index: None }).expect("push");
    let mut manifest = writer.finish("test", "none").expect("finish");
    // The shards keep their checksums; the manifest now lists two classes, so label 2 (and
    // hidden label 2 in the pool) name no class.
    manifest.classes.truncate(2);
    for split in manifest.splits.values_mut() {
        split.class_counts.truncate(2);
    }
    std::fs::write(dir.path().join(MANIFEST_FILE), serde_json::to_string(&manifest).expect("serialise")).expect("write");
    let dataset = Dataset::open(dir.path()).expect("the manifest alone is well formed");
    let err = dataset.read_split(Split::Train).expect_err("label 2 of two classes");
    let text = err.to_string();
    assert!(text.contains("train-00000.safetensors") && text.contains("`labels`[2] is 2, outside the manifest's 2 classes"), "{text}");
    let err = dataset.read_split(Split::Unlabeled).expect_err("hidden label 2 of two classes");
    assert!(err.to_string().contains("`hidden_labels`[0] is 2"), "{err}");
}

/// A damaged manifest or shard, as a disk or a copy leaves one: never a panic; an error
/// that names the damaged file, or (damage a check cannot see) every split read whole.
mod damaged {
    use proptest::prelude::*;

    use super::*;
    use crate::mutate::damaged;

    /// A small dataset's bytes: its manifest and its first train shard (name and bytes).
    fn valid() -> (Vec<u8>, String, Vec<u8>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let manifest = write_small(dir.path());
        let shard = manifest.splits[&Split::Train].shards[0].file.clone();
        let read = |name: &str| std::fs::read(dir.path().join(name)).expect("read");
        (read(MANIFEST_FILE), shard.clone(), read(&shard))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn a_damaged_manifest_is_refused_by_name(bytes in damaged(valid().0)) {
            let dir = tempfile::tempdir().expect("tempdir");
            write_small(dir.path());
            std::fs::write(dir.path().join(MANIFEST_FILE), &bytes).expect("write");
            match Dataset::open(dir.path()) {
                Err(error) => prop_assert!(error.to_string().contains(MANIFEST_FILE), "{error}"),
                Ok(dataset) => {
                    // What the manifest still says must hold, or reading names the shard.
                    for (split, info) in &dataset.manifest().splits {
                        match dataset.read_split(*split) {
                            Ok(data) => prop_assert_eq!(data.len() as u64, info.samples),
                            Err(error) => prop_assert!(error.to_string().contains(&*dir.path().to_string_lossy()), "{error}"),
                        }
                    }
                }
            }
        }

        #[test]
        fn a_damaged_shard_is_refused_by_name(bytes in damaged(valid().2)) {
            let dir = tempfile::tempdir().expect("tempdir");
            let manifest = write_small(dir.path());
            let info = &manifest.splits[&Split::Train].shards[0];
            std::fs::write(dir.path().join(&info.file), &bytes).expect("write");
            // Unverified, the parser itself meets the damage; verified, the checksum does.
            for verify in [false, true] {
                match read_shard(dir.path(), info, manifest.image, manifest.classes.len(), verify) {
                    Ok(data) => prop_assert_eq!(data.len() as u64, info.samples),
                    Err(error) => prop_assert!(error.to_string().contains(&info.file), "{error}"),
                }
            }
        }
    }
}
