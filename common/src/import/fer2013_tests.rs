//! Tests of the FER2013 importer on small CSV files the tests write: counts, stratification,
//! no leakage, the test split (PrivateTest, or split off PublicTest), exact pixels, gzip,
//! and errors that name their line.

use std::cell::Cell;
use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use super::*;
use crate::dataset::Split;
use crate::import::test_support::*;

const TRAINING: [usize; 7] = [30, 6, 28, 40, 25, 20, 21];
const PUBLIC: [usize; 7] = [5, 1, 5, 8, 4, 3, 4];

fn sample_rows() -> Vec<FerRow> {
    fer_rows(&[("Training", TRAINING), ("PublicTest", PUBLIC), ("PrivateTest", [1, 0, 1, 0, 0, 1, 0])])
}

#[test]
fn training_and_public_test_import_with_stratified_labels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = sample_rows();
    let csv_text = fer_csv(&rows);
    let csv = dir.path().join("fer2013.csv");
    std::fs::write(&csv, &csv_text).expect("write csv");
    let out = dir.path().join("out");
    let options = SplitOptions { labeled_fraction: 0.3, shard_size: 32, ..SplitOptions::default() };
    let last_progress = Cell::new(0);
    let report = import_fer2013(&csv, &out, &options, &|rows| last_progress.set(rows)).expect("import");

    assert_eq!(report.rows_read, 203);
    assert_eq!(last_progress.get(), 203);
    assert_eq!(report.ignored, 0, "PrivateTest rows are the test split");
    assert!(report.skipped.is_empty());
    assert_eq!(report.manifest.source, "fer2013");
    assert_eq!(report.manifest.source_sha256, hex(&Sha256::digest(csv_text.as_bytes())));
    assert_eq!(report.manifest.classes.len(), 7);
    assert_no_staging_left(&out);

    let splits = read_splits(&out);
    let (train, val, test, pool) = (&splits[&Split::Train], &splits[&Split::Val], &splits[&Split::Test], &splits[&Split::Unlabeled]);
    assert_eq!(train.len() + pool.len(), 170);
    for (class, &n) in TRAINING.iter().enumerate() {
        let expected = (0.3 * n as f64).round() as usize;
        assert_eq!(count_label(train, class as i64), expected, "class {class}");
        let hidden = pool.hidden_labels.as_ref().expect("hidden labels").iter().filter(|l| **l == class as i64).count();
        assert_eq!(hidden, n - expected, "class {class} in the pool");
    }
    assert!(pool.labels.iter().all(|l| *l == -1), "pool labels are hidden");

    let public: BTreeSet<i64> = rows.iter().enumerate().filter(|(_, r)| r.usage == "PublicTest").map(|(i, _)| i as i64).collect();
    assert_eq!(val.sample_ids.iter().copied().collect::<BTreeSet<_>>(), public, "val is exactly the PublicTest rows");
    let private: BTreeSet<i64> = rows.iter().enumerate().filter(|(_, r)| r.usage == "PrivateTest").map(|(i, _)| i as i64).collect();
    assert_eq!(test.sample_ids.iter().copied().collect::<BTreeSet<_>>(), private, "test is exactly the PrivateTest rows");
    assert_eq!(report.manifest.splits[&Split::Test].class_counts, vec![1, 0, 1, 0, 0, 1, 0]);
    assert!(test.hidden_labels.is_none() && test.labels.iter().all(|l| *l >= 0), "test labels are visible");
    let mut all_ids: Vec<i64> = train.sample_ids.iter().chain(&val.sample_ids).chain(&test.sample_ids).chain(&pool.sample_ids).copied().collect();
    all_ids.sort_unstable();
    all_ids.dedup();
    assert_eq!(all_ids.len(), 203, "no sample is in two splits");

    for data in [train, val, test, pool] {
        for (index, &id) in data.sample_ids.iter().enumerate() {
            let row = &rows[id as usize];
            assert_eq!(data.image(index), row.pixels.as_slice(), "pixels of row {id}");
            let label = data.hidden_labels.as_ref().map_or(data.labels[index], |h| h[index].max(data.labels[index]));
            assert_eq!(label, row.emotion, "label of row {id}");
        }
    }
}

#[test]
fn gzipped_files_import_identically_by_extension_or_magic_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = fer_csv(&sample_rows());
    let plain = dir.path().join("plain.csv");
    let by_extension = dir.path().join("rows.csv.gz");
    let by_magic = dir.path().join("rows-compressed.csv");
    std::fs::write(&plain, &text).expect("write");
    std::fs::write(&by_extension, gzip(text.as_bytes())).expect("write");
    std::fs::write(&by_magic, gzip(text.as_bytes())).expect("write");
    let options = SplitOptions { labeled_fraction: 0.5, shard_size: 50, ..SplitOptions::default() };
    let import = |csv: &Path, name: &str| import_fer2013(csv, &dir.path().join(name), &options, &|_| {}).expect("import").manifest;
    let expected = import(&plain, "plain");
    assert_eq!(import(&by_extension, "extension"), expected);
    assert_eq!(import(&by_magic, "magic"), expected);
}

#[test]
fn without_public_test_a_stratified_val_is_held_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("train-only.csv");
    std::fs::write(&csv, fer_csv(&fer_rows(&[("Training", TRAINING)]))).expect("write");
    let options = SplitOptions { labeled_fraction: 0.5, val_fraction: 0.2, ..SplitOptions::default() };
    let report = import_fer2013(&csv, &dir.path().join("out"), &options, &|_| {}).expect("import");
    let splits = read_splits(&dir.path().join("out"));
    for (class, &n) in TRAINING.iter().enumerate() {
        let val = (0.2 * n as f64).round() as usize;
        assert_eq!(count_label(&splits[&Split::Val], class as i64), val, "class {class}");
        assert_eq!(count_label(&splits[&Split::Train], class as i64), (0.5 * (n - val) as f64).round() as usize, "class {class}");
    }
    let other_seed = SplitOptions { seed: 8, ..options };
    let again = import_fer2013(&csv, &dir.path().join("other"), &other_seed, &|_| {}).expect("import");
    assert_ne!(report.manifest.splits[&Split::Val].shards[0].sha256, again.manifest.splits[&Split::Val].shards[0].sha256, "the seed decides");
}

#[test]
fn private_test_rows_keep_the_other_splits_as_they_were() {
    let dir = tempfile::tempdir().expect("tempdir");
    let with_private = dir.path().join("with-private.csv");
    let without_private = dir.path().join("without-private.csv");
    let rows = sample_rows();
    std::fs::write(&with_private, fer_csv(&rows)).expect("write");
    let kept: Vec<FerRow> = rows.iter().filter(|r| r.usage != "PrivateTest").cloned().collect();
    std::fs::write(&without_private, fer_csv(&kept)).expect("write");
    let options = SplitOptions { labeled_fraction: 0.4, test_fraction: 0.5, ..SplitOptions::default() };
    import_fer2013(&with_private, &dir.path().join("a"), &options, &|_| {}).expect("import");
    let with = read_splits(&dir.path().join("a"));
    assert_eq!(with[&Split::Test].len(), 3, "a given test split wins over test_fraction");
    assert_eq!(with[&Split::Val].len(), PUBLIC.iter().sum::<usize>(), "val keeps every PublicTest row");
    let options = SplitOptions { test_fraction: 0.0, ..options };
    import_fer2013(&without_private, &dir.path().join("b"), &options, &|_| {}).expect("import");
    let without = read_splits(&dir.path().join("b"));
    assert!(!without.contains_key(&Split::Test), "no test split without PrivateTest at test_fraction 0");
    // PrivateTest rows come last here, so the other rows keep their ids and their splits.
    for split in [Split::Train, Split::Val, Split::Unlabeled] {
        assert_eq!(with[&split].sample_ids, without[&split].sample_ids, "{split}");
    }
}

/// Sample ids of `split` in the dataset at `dir`, as a set.
fn ids_of(dir: &Path, split: Split) -> BTreeSet<i64> {
    read_splits(dir).get(&split).map(|data| data.sample_ids.iter().copied().collect()).unwrap_or_default()
}

#[test]
fn without_private_test_a_test_fraction_halves_public_test_per_class() {
    const PUBLIC_LARGER: [usize; 7] = [10, 2, 9, 16, 7, 1, 6];
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = fer_rows(&[("Training", TRAINING), ("PublicTest", PUBLIC_LARGER)]);
    let csv = dir.path().join("no-private.csv");
    std::fs::write(&csv, fer_csv(&rows)).expect("write");
    let options = SplitOptions { labeled_fraction: 0.5, test_fraction: 0.5, seed: 11, ..SplitOptions::default() };
    let report = import_fer2013(&csv, &dir.path().join("out"), &options, &|_| {}).expect("import");
    let out = dir.path().join("out");
    let (val, test) = (ids_of(&out, Split::Val), ids_of(&out, Split::Test));
    let public: BTreeSet<i64> = rows.iter().enumerate().filter(|(_, r)| r.usage == "PublicTest").map(|(i, _)| i as i64).collect();
    assert!(val.is_disjoint(&test), "no row is both val and test");
    assert_eq!(val.union(&test).copied().collect::<BTreeSet<_>>(), public, "val and test are PublicTest between them");
    let total: usize = PUBLIC_LARGER.iter().sum();
    assert!(test.len().abs_diff(total / 2) <= 4 && val.len().abs_diff(total / 2) <= 4, "val {} and test {} of {total}", val.len(), test.len());
    for (class, &n) in PUBLIC_LARGER.iter().enumerate() {
        let in_test = test.iter().filter(|id| rows[**id as usize].emotion == class as i64).count();
        let expected = if n < 2 { 0 } else { ((0.5 * n as f64).round() as usize).clamp(1, n - 1) };
        assert_eq!(in_test, expected, "class {class}: a stratified half of its {n} PublicTest rows");
        if n >= 2 {
            assert!(in_test >= 1 && n - in_test >= 1, "class {class} is in both val and test");
        }
    }
    let counts = |split: Split| report.manifest.splits[&split].class_counts.clone();
    let summed: Vec<u64> = counts(Split::Val).iter().zip(counts(Split::Test)).map(|(v, t)| v + t).collect();
    assert_eq!(summed, PUBLIC_LARGER.iter().map(|&n| n as u64).collect::<Vec<_>>());
    let train = ids_of(&out, Split::Train);
    assert!(train.is_disjoint(&test) && ids_of(&out, Split::Unlabeled).is_disjoint(&test), "test rows are held out of training");

    import_fer2013(&csv, &dir.path().join("again"), &options, &|_| {}).expect("import");
    assert_eq!(ids_of(&dir.path().join("again"), Split::Test), test, "the same seed gives the same test split");
    let other = SplitOptions { seed: 12, ..options.clone() };
    import_fer2013(&csv, &dir.path().join("other"), &other, &|_| {}).expect("import");
    assert_ne!(ids_of(&dir.path().join("other"), Split::Test), test, "another seed gives another test split");
    let no_test = SplitOptions { test_fraction: 0.0, ..options };
    import_fer2013(&csv, &dir.path().join("plain"), &no_test, &|_| {}).expect("import");
    assert_eq!(ids_of(&dir.path().join("plain"), Split::Val), public, "without test_fraction val is all of PublicTest");
    assert_eq!(ids_of(&dir.path().join("plain"), Split::Train), train, "test_fraction does not change train");
}

#[test]
fn a_test_fraction_outside_zero_to_one_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("fer.csv");
    std::fs::write(&csv, fer_csv(&sample_rows())).expect("write");
    for bad in [1.0, -0.1, 1.5, f64::NAN] {
        let options = SplitOptions { test_fraction: bad, ..SplitOptions::default() };
        let err = import_fer2013(&csv, &dir.path().join("out"), &options, &|_| {}).expect_err("bad test_fraction");
        assert!(matches!(err, ImportError::Options { .. }) && err.to_string().contains("test_fraction"), "{bad}: {err}");
    }
}

/// A valid file whose line 5 is `bad`.
fn with_bad_line(bad: &str) -> String {
    let rows = fer_rows(&[("Training", [1, 1, 1, 1, 1, 1, 1])]);
    let mut lines: Vec<String> = rows.iter().map(fer_line).collect();
    lines.insert(3, bad.to_owned());
    format!("emotion,pixels,Usage\n{}\n", lines.join("\n"))
}

#[test]
fn broken_rows_are_named_by_line() {
    let good = fer_pixels(0).iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" ");
    let short = good.rsplit_once(' ').map(|(head, _)| head.to_owned()).expect("pixels");
    let cases = [
        (format!("3,{good}"), "has 2 columns, expected 3"),
        (format!("3,{good},Training,extra"), "has 4 columns, expected 3"),
        (format!("3,{short},Training"), "pixels has 2303 values, expected 2304"),
        (format!("3,{good} 9,Training"), "pixels has 2305 values, expected 2304"),
        (format!("3,256{},Training", &good[good.find(' ').expect("space")..]), "pixel value 256 is above 255"),
        (format!("3,x1{},Training", &good[good.find(' ').expect("space")..]), "non-numeric value \"x1\""),
        (format!("7,{good},Training"), "emotion 7 is outside 0..7"),
        (format!("-1,{good},Training"), "emotion -1 is outside 0..7"),
        (format!("happy,{good},Training"), "emotion \"happy\" is not a number"),
        (format!("3,{good},Validation"), "unknown Usage \"Validation\""),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    for (bad, problem) in cases {
        let csv = dir.path().join("bad.csv");
        std::fs::write(&csv, with_bad_line(&bad)).expect("write");
        let err = import_fer2013(&csv, &dir.path().join("out"), &SplitOptions::default(), &|_| {}).expect_err(problem);
        assert!(matches!(err, ImportError::Row { line: 5, .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("bad.csv: line 5: ") && message.contains(problem), "{message}");
    }
    std::fs::write(dir.path().join("no-header.csv"), fer_csv(&sample_rows()).replacen("emotion,pixels,Usage\n", "", 1)).expect("write");
    let err = import_fer2013(&dir.path().join("no-header.csv"), &dir.path().join("out"), &SplitOptions::default(), &|_| {}).expect_err("header");
    assert!(err.to_string().contains("line 1: expected a header"), "{err}");
    let err = import_fer2013(&dir.path().join("missing.csv"), &dir.path().join("out"), &SplitOptions::default(), &|_| {}).expect_err("missing");
    assert!(err.to_string().contains("missing.csv"), "{err}");
}

#[test]
fn with_skip_bad_broken_rows_are_skipped_and_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = with_bad_line("3,1 2 3,Training");
    text.push_str("9,1 2,Training\n\n");
    text.push_str(&fer_line(&FerRow { emotion: 3, usage: "PublicTest", pixels: fer_pixels(99) }));
    let csv = dir.path().join("some-bad.csv");
    std::fs::write(&csv, text).expect("write");
    let options = SplitOptions { skip_bad: true, val_fraction: 0.0, ..SplitOptions::default() };
    let report = import_fer2013(&csv, &dir.path().join("out"), &options, &|_| {}).expect("import");
    assert_eq!(report.skipped, vec!["line 5: pixels has 3 values, expected 2304".to_owned(), "line 10: emotion 9 is outside 0..7".to_owned()]);
    assert_eq!(report.rows_read, 10, "bad rows are read and counted; the blank line is not a row");
    assert_eq!(report.manifest.splits[&Split::Train].samples, 7);
    let ids = &read_splits(&dir.path().join("out"))[&Split::Train].sample_ids;
    assert_eq!(ids, &vec![0, 1, 2, 4, 5, 6, 7], "sample ids stay the rows' positions");
}

#[test]
fn a_file_without_training_rows_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("tests-only.csv");
    std::fs::write(&csv, fer_csv(&fer_rows(&[("PublicTest", PUBLIC), ("PrivateTest", [1; 7])]))).expect("write");
    let out = dir.path().join("out");
    let err = import_fer2013(&csv, &out, &SplitOptions::default(), &|_| {}).expect_err("no Training rows");
    let message = err.to_string();
    assert!(message.contains("tests-only.csv: has no `Training` rows; the train split and the unlabelled pool come from them"), "{message}");
    assert!(!out.join(crate::dataset::MANIFEST_FILE).exists(), "no dataset is written");
}

#[test]
fn a_split_left_empty_is_refused_naming_the_split() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Two Training rows per class and no PublicTest rows: a val fraction of 0.1 holds none out.
    let csv = dir.path().join("train-only.csv");
    std::fs::write(&csv, fer_csv(&fer_rows(&[("Training", [2; 7])]))).expect("write");
    let err = import_fer2013(&csv, &dir.path().join("out"), &SplitOptions::default(), &|_| {}).expect_err("no val");
    let message = err.to_string();
    assert!(message.contains("train-only.csv: the val split would be empty") && message.contains("val fraction of 0.1"), "{message}");
    let options = SplitOptions { val_fraction: 0.5, ..SplitOptions::default() };
    assert!(import_fer2013(&csv, &dir.path().join("out"), &options, &|_| {}).is_ok(), "half of each class is held out");

    // A labeled fraction of 0 leaves every Training row in the unlabelled pool.
    let csv = dir.path().join("fer2013.csv");
    std::fs::write(&csv, fer_csv(&sample_rows())).expect("write");
    let options = SplitOptions { labeled_fraction: 0.0, ..SplitOptions::default() };
    let err = import_fer2013(&csv, &dir.path().join("pool-only"), &options, &|_| {}).expect_err("no train");
    let message = err.to_string();
    assert!(message.contains("fer2013.csv: the train split would be empty") && message.contains("labeled fraction of 0"), "{message}");
    assert!(!dir.path().join("pool-only").join(crate::dataset::MANIFEST_FILE).exists(), "no dataset is written");
}

/// Times the import of a real FER2013 file named by `FERAL_FER2013_CSV` (not shipped):
/// `FERAL_FER2013_CSV=... cargo test --release -p feral-common real_fer2013 -- --ignored --nocapture`.
#[test]
#[ignore]
fn real_fer2013_import_time() {
    let Ok(csv) = std::env::var("FERAL_FER2013_CSV") else {
        eprintln!("FERAL_FER2013_CSV is not set; nothing to time");
        return;
    };
    let out = tempfile::tempdir().expect("tempdir");
    let options = SplitOptions { labeled_fraction: 0.1, ..SplitOptions::default() };
    let started = std::time::Instant::now();
    let report = import_fer2013(Path::new(&csv), out.path(), &options, &|_| {}).expect("import");
    let elapsed = started.elapsed();
    for (split, info) in &report.manifest.splits {
        eprintln!("{split}: {} samples, classes {:?}", info.samples, info.class_counts);
    }
    eprintln!("rows {} in {elapsed:.2?}; source sha256 {}", report.rows_read, report.manifest.source_sha256);
}

/// Damaged FER2013 text, as a user's file may be: never a panic; a row count no larger than
/// the file held, or the bad line's number (within the file) with a reason.
mod damaged {
    use proptest::prelude::*;

    use super::*;
    use crate::mutate::damaged;

    const ROWS: u64 = 8;

    fn valid() -> Vec<u8> {
        fer_csv(&fer_rows(&[("Training", [1, 1, 1, 1, 1, 1, 1]), ("PublicTest", [0, 0, 0, 1, 0, 0, 0])])).into_bytes()
    }

    #[test]
    fn the_valid_text_reads_whole() {
        assert_eq!(check_fer2013_text(&valid()), Ok(ROWS));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn damaged_text_is_read_or_refused_by_line(text in damaged(valid())) {
            match check_fer2013_text(&text) {
                Ok(rows) => prop_assert!(rows <= ROWS, "{rows} rows from a file of {ROWS}"),
                Err((line, problem)) => {
                    let lines = text.split(|b| *b == b'\n').count() as u64;
                    prop_assert!((1..=lines).contains(&line), "line {line} of {lines}");
                    prop_assert!(!problem.is_empty());
                }
            }
        }
    }

    proptest! {
        // Each case writes a file and imports it: fewer cases.
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn the_importer_names_the_file_of_damaged_text(text in damaged(valid())) {
            let dir = tempfile::tempdir().expect("tempdir");
            let csv = dir.path().join("fer2013.csv");
            std::fs::write(&csv, &text).expect("write");
            let options = SplitOptions { labeled_fraction: 1.0, ..SplitOptions::default() };
            match import_fer2013(&csv, &dir.path().join("out"), &options, &|_| {}) {
                Ok(report) => prop_assert!(report.rows_read <= ROWS),
                Err(error) => prop_assert!(error.to_string().contains("fer2013.csv") || matches!(error, ImportError::Options { .. }), "{error}"),
            }
        }
    }
}
