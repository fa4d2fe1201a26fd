//! What a round reads besides its dataset: the teacher's files a student continues, the
//! round's selected pseudo-labels, the pool statistics that seed the online thresholds, and
//! the strong view the spec asks for.

use std::path::{Path, PathBuf};

use feral_common::dataset::{Dataset, ShardData, Split};
use feral_common::files::MAX_TENSORS_BYTES;

use super::consistency::ThresholdSeed;
use super::strong::StrongAugmentation;
use crate::artifacts::{read_tensors, ArtifactError};
use crate::error::TaskError;
use crate::selection::read_selection;

/// Selected pseudo-labelled samples: their images and labels, and per-sample confidences.
pub(crate) struct PseudoSet {
    pub data: ShardData,
    pub confidences: Vec<f32>,
}

/// `name` beside the teacher's saved model (its last raw weights, its optimiser state), or
/// the model itself where the teacher left no such file.
pub(crate) fn teacher_file(teacher: &Path, name: &str) -> PathBuf {
    let beside = teacher.with_file_name(name);
    if beside.exists() {
        beside
    } else {
        teacher.to_path_buf()
    }
}

/// The strong view the spec asks for.
pub(crate) fn strong_view(spec: &feral_common::spec::StrongViewSpec) -> StrongAugmentation {
    StrongAugmentation { ops: u32::from(spec.ops), magnitude: u32::from(spec.magnitude), cutout: spec.cutout as f32 }
}

/// The pool's mean debiased confidence and class probabilities from the round's selection,
/// which start the online thresholds; none when the file has them not (an older selection)
/// or cannot be read.
pub(crate) fn read_threshold_seed(selection_file: &Path) -> Option<ThresholdSeed> {
    let tensors = read_tensors(selection_file, MAX_TENSORS_BYTES, "selection").ok()?;
    let values = |name: &str| tensors.iter().find(|(n, _)| n == name).and_then(|(_, t)| Vec::<f64>::try_from(t).ok());
    Some(ThresholdSeed {
        mean_confidence: *values("mean_confidence")?.first()?,
        confidence_variance: *values("confidence_variance")?.first()?,
        mean_probabilities: values("mean_probabilities")?,
    })
}

/// The selected pseudo-labelled samples of the unlabelled split, with their labels.
pub(crate) fn load_pseudo_set(dataset: &Dataset, selection_file: &Path) -> Result<PseudoSet, TaskError> {
    let selection = read_selection(selection_file)?;
    let pool = dataset.read_split(Split::Unlabeled)?;
    let position: std::collections::HashMap<i64, usize> = pool.sample_ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut data = ShardData::empty(pool.shape);
    let mut confidences = Vec::with_capacity(selection.sample_ids.len());
    for ((id, label), confidence) in selection.sample_ids.iter().zip(&selection.labels).zip(&selection.confidences) {
        let Some(&index) = position.get(id) else {
            return Err(ArtifactError::corrupt(selection_file, format!("sample {id} is not in the unlabeled split")).into());
        };
        data.images.extend_from_slice(pool.image(index));
        data.labels.push(*label);
        data.sample_ids.push(*id);
        confidences.push(*confidence);
    }
    Ok(PseudoSet { data, confidences })
}
