//! Tests of `inspect`: counts, imbalance, and damaged or missing shards flagged one by one.

use super::*;
use crate::import::test_support::*;
use crate::import::{import_fer2013, SplitOptions};

#[test]
fn inspect_counts_and_flags_damaged_shards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("fer.csv");
    std::fs::write(&csv, fer_csv(&fer_rows(&[("Training", [20, 2, 10, 30, 10, 10, 10]), ("PublicTest", [2, 1, 2, 3, 2, 2, 2])]))).expect("write");
    let out = dir.path().join("out");
    let options = SplitOptions { labeled_fraction: 0.5, shard_size: 16, ..SplitOptions::default() };
    import_fer2013(&csv, &out, &options, &|_| {}).expect("import");

    let inspection = inspect(&out).expect("inspect");
    assert!(inspection.all_ok());
    let by_split = |split: Split| inspection.splits.iter().find(|s| s.split == split).expect("split");
    assert_eq!(by_split(Split::Val).samples, 14);
    assert_eq!(by_split(Split::Val).class_counts, vec![2, 1, 2, 3, 2, 2, 2]);
    assert_eq!(by_split(Split::Train).samples + by_split(Split::Unlabeled).samples, 92);
    assert_eq!(inspection.imbalance_ratio, Some(15.0), "happy 30 over disgust 2");
    assert_eq!(by_split(Split::Train).shards.iter().map(|s| s.samples).sum::<u64>(), by_split(Split::Train).samples);
    assert!(by_split(Split::Train).shards.iter().all(|s| s.bytes.is_some_and(|b| b > s.samples * 2304)));
    assert_eq!(by_split(Split::Train).videos, None);

    let damaged = &by_split(Split::Unlabeled).shards[0].file;
    let mut bytes = std::fs::read(out.join(damaged)).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(out.join(damaged), bytes).expect("write");
    let missing = &by_split(Split::Val).shards[0].file;
    std::fs::remove_file(out.join(missing)).expect("remove");

    let inspection = inspect(&out).expect("inspect");
    assert!(!inspection.all_ok());
    let checks: Vec<(&str, &ShardCheck)> = inspection.splits.iter().flat_map(|s| &s.shards).map(|s| (s.file.as_str(), &s.check)).collect();
    for (file, check) in checks {
        let expected = if file == damaged {
            ShardCheck::ChecksumMismatch
        } else if file == missing {
            ShardCheck::Missing
        } else {
            ShardCheck::Ok
        };
        assert_eq!(check, &expected, "{file}");
    }
    let printed = inspection.to_string();
    assert!(printed.contains(damaged.as_str()) && printed.contains("CHECKSUM MISMATCH"), "{printed}");
    assert!(printed.contains("MISSING") && printed.contains("disgust"), "{printed}");

    let err = inspect(&dir.path().join("nowhere")).expect_err("no dataset");
    assert!(err.to_string().contains("manifest.json"), "{err}");
}

#[test]
fn inspect_shows_the_test_split_beside_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("fer.csv");
    let rows = fer_rows(&[("Training", [6, 2, 6, 6, 6, 6, 6]), ("PublicTest", [2, 1, 2, 2, 2, 2, 2]), ("PrivateTest", [3, 0, 1, 2, 1, 1, 1])]);
    std::fs::write(&csv, fer_csv(&rows)).expect("write");
    let out = dir.path().join("out");
    import_fer2013(&csv, &out, &SplitOptions::default(), &|_| {}).expect("import");

    let inspection = inspect(&out).expect("inspect");
    assert!(inspection.all_ok());
    let order: Vec<Split> = inspection.splits.iter().map(|s| s.split).collect();
    assert_eq!(order, [Split::Train, Split::Val, Split::Test]);
    let test = inspection.splits.iter().find(|s| s.split == Split::Test).expect("test split");
    assert_eq!((test.samples, test.class_counts.clone()), (9, vec![3, 0, 1, 2, 1, 1, 1]));
    assert_eq!(inspection.imbalance_ratio, Some(3.0), "test counts stay out of the imbalance");
    let printed = inspection.to_string();
    let header: Vec<&str> = printed.lines().nth(2).unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["class", "train", "val", "test"], "{printed}");
    let angry: Vec<&str> = printed.lines().find(|l| l.starts_with("angry")).unwrap_or_default().split_whitespace().collect();
    assert_eq!(angry, ["angry", "6", "2", "3"], "{printed}");
    assert!(printed.contains("test-00000.safetensors"), "{printed}");
}

#[test]
fn names_from_the_manifest_are_printed_escaped() {
    use crate::dataset::{DatasetWriter, ImageShape, Sample};
    let dir = tempfile::tempdir().expect("tempdir");
    let classes = vec!["\u{1b}]0;title\u{7}".to_owned(), "\u{1b}[2J".to_owned(), "gpj.\u{202e}exe".to_owned(), "惊讶 é".to_owned()];
    let shape = ImageShape { height: 2, width: 2, channels: 1 };
    let mut writer = DatasetWriter::create(dir.path(), "evil\u{1b}[31m", classes, shape, 4).expect("writer");
    for label in 0..4 {
        writer.push(Split::Train, Sample { pixels: &[0; 4], label, sample_id: label, hidden_label: None, video_id: None, frame_index: None }).expect("push");
    }
    writer.finish("test", "\u{1b}[0m").expect("finish");

    let printed = inspect(dir.path()).expect("inspect").to_string();
    assert!(!printed.contains(['\u{1b}', '\u{7}', '\u{202e}']), "{printed:?}");
    assert!(printed.starts_with("dataset evil\\u{1b}[31m (test) at "), "{printed}");
    assert!(printed.contains("source sha256 \\u{1b}[0m\n"), "{printed}");
    let rows: Vec<Vec<&str>> = printed.lines().skip(3).take(4).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows, [vec!["\\u{1b}]0;title\\u{7}", "1"], vec!["\\u{1b}[2J", "1"], vec!["gpj.\\u{202e}exe", "1"], vec!["惊讶", "é", "1"]], "{printed}");
    let widths: Vec<usize> = printed.lines().skip(2).take(6).map(|l| l.chars().count()).collect();
    assert!(widths.windows(2).all(|w| w[0] == w[1]), "the count column lines up: {printed}");
}
