//! The round's selection file, `selection.safetensors`: what the selection task writes
//! and the student reads (sample ids, labels, confidences, and the pool's statistics that
//! seed the student's online thresholds).

use std::path::Path;

use feral_common::dataset::{Manifest, Split};
use feral_common::method;

use crate::artifacts::{named, read_tensors, ArtifactError};

/// Selected pseudo-labels, as the student reads them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PseudoLabels {
    pub sample_ids: Vec<i64>,
    pub labels: Vec<i64>,
    pub confidences: Vec<f32>,
}

/// The selected pseudo-labels of the file at `path`.
pub fn read_selection(path: &Path) -> Result<PseudoLabels, ArtifactError> {
    let tensors = read_tensors(path, feral_common::files::MAX_TENSORS_BYTES, "selection")?;
    let labels = PseudoLabels {
        sample_ids: Vec::<i64>::try_from(&named(&tensors, "sample_ids", path)?)?,
        labels: Vec::<i64>::try_from(&named(&tensors, "labels", path)?)?,
        confidences: Vec::<f32>::try_from(&named(&tensors, "confidences", path)?)?,
    };
    if labels.labels.len() != labels.sample_ids.len() || labels.confidences.len() != labels.sample_ids.len() {
        return Err(ArtifactError::corrupt(path, "its tensors have different lengths"));
    }
    Ok(labels)
}

/// The labelled (`train`) split's class frequencies, one extra sample per class: what
/// `[semi_supervised] debias_toward = "labelled"` debiases toward.
pub fn labelled_frequencies(manifest: &Manifest) -> Option<Vec<f64>> {
    manifest.splits.get(&Split::Train).map(|split| method::smoothed_frequencies(&split.class_counts))
}
