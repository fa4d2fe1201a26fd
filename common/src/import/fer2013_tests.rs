//! Tests of the FER2013 importer on small CSV files the tests write: counts, stratification,
//! no leakage, exact pixels, gzip, and errors that name their line.

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
    assert_eq!(report.ignored, 3, "PrivateTest rows are counted and left out");
    assert!(report.skipped.is_empty());
    assert_eq!(report.manifest.source, "fer2013");
    assert_eq!(report.manifest.source_sha256, hex(&Sha256::digest(csv_text.as_bytes())));
    assert_eq!(report.manifest.classes.len(), 7);
    assert_no_staging_left(&out);

    let splits = read_splits(&out);
    let (train, val, pool) = (&splits[&Split::Train], &splits[&Split::Val], &splits[&Split::Unlabeled]);
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
    let mut all_ids: Vec<i64> = train.sample_ids.iter().chain(&val.sample_ids).chain(&pool.sample_ids).copied().collect();
    all_ids.sort_unstable();
    all_ids.dedup();
    assert_eq!(all_ids.len(), 200, "no sample is in two splits");

    for data in [train, val, pool] {
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
    let csv = dir.path().join("some-bad.csv");
    std::fs::write(&csv, text).expect("write");
    let options = SplitOptions { skip_bad: true, val_fraction: 0.0, ..SplitOptions::default() };
    let report = import_fer2013(&csv, &dir.path().join("out"), &options, &|_| {}).expect("import");
    assert_eq!(report.skipped, vec!["line 5: pixels has 3 values, expected 2304".to_owned(), "line 10: emotion 9 is outside 0..7".to_owned()]);
    assert_eq!(report.rows_read, 9, "bad rows are read and counted; the blank last line is not a row");
    assert_eq!(report.manifest.splits[&Split::Train].samples, 7);
    let ids = &read_splits(&dir.path().join("out"))[&Split::Train].sample_ids;
    assert_eq!(ids, &vec![0, 1, 2, 4, 5, 6, 7], "sample ids stay the rows' positions");
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
