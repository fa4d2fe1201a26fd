//! What a prepared dataset holds, as `feral prepare` and the demo print it.

use feral_common::dataset::Manifest;
use feral_common::text::printable;

use crate::table::{Align, Table};

/// Per-split sample counts and per-class counts, by class name.
pub fn describe_manifest(manifest: &Manifest) -> String {
    let mut headers = vec![("SPLIT", Align::Left), ("SAMPLES", Align::Right)];
    headers.extend(manifest.classes.iter().map(|name| (name.as_str(), Align::Right)));
    let mut table = Table::new(&headers);
    for (split, info) in &manifest.splits {
        let mut row = vec![split.to_string(), info.samples.to_string()];
        row.extend(info.class_counts.iter().map(u64::to_string));
        table.push(row);
    }
    let image = manifest.image;
    let total: u64 = manifest.splits.values().map(|info| info.samples).sum();
    format!(
        "dataset {}: {total} images of {}x{}x{}, {} classes\n{}",
        printable(&manifest.name),
        image.height,
        image.width,
        image.channels,
        manifest.classes.len(),
        table.render()
    )
}
