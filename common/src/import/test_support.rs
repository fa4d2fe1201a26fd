//! Helpers the importer tests share: FER2013-format files, tiny images, reading splits back.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use crate::dataset::{Dataset, ShardData, Split};

/// One FER2013 row.
#[derive(Clone, Debug)]
pub struct FerRow {
    pub emotion: i64,
    pub usage: &'static str,
    pub pixels: Vec<u8>,
}

/// Deterministic, distinct pixels for row `index`.
pub fn fer_pixels(index: usize) -> Vec<u8> {
    (0..2304).map(|i| ((index * 131 + i * 7 + i / 48) % 256) as u8).collect()
}

/// Rows with `counts[c]` rows of class `c` for each usage, classes interleaved.
pub fn fer_rows(usage_counts: &[(&'static str, [usize; 7])]) -> Vec<FerRow> {
    let mut rows = Vec::new();
    for (usage, counts) in usage_counts {
        let mut left = *counts;
        while left.iter().any(|&c| c > 0) {
            for (class, count) in left.iter_mut().enumerate() {
                if *count > 0 {
                    *count -= 1;
                    rows.push(FerRow { emotion: class as i64, usage, pixels: fer_pixels(rows.len()) });
                }
            }
        }
    }
    rows
}

pub fn fer_line(row: &FerRow) -> String {
    let pixels: Vec<String> = row.pixels.iter().map(|p| p.to_string()).collect();
    format!("{},{},{}", row.emotion, pixels.join(" "), row.usage)
}

/// The CSV text of `rows`, with the header.
pub fn fer_csv(rows: &[FerRow]) -> String {
    let mut text = String::from("emotion,pixels,Usage\n");
    for row in rows {
        text.push_str(&fer_line(row));
        text.push('\n');
    }
    text
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

/// Every split of the dataset at `dir`, read with checksums verified.
pub fn read_splits(dir: &Path) -> BTreeMap<Split, ShardData> {
    let dataset = Dataset::open(dir).expect("open dataset");
    dataset.manifest().splits.keys().map(|split| (*split, dataset.read_split(*split).expect("read split"))).collect()
}

/// How many samples of `data` have visible label `class`.
pub fn count_label(data: &ShardData, class: i64) -> usize {
    data.labels.iter().filter(|l| **l == class).count()
}

/// No leftover staging files in `dir`.
pub fn assert_no_staging_left(dir: &Path) {
    let left: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("staging"))
        .collect();
    assert!(left.is_empty(), "staging files left behind: {left:?}");
}
