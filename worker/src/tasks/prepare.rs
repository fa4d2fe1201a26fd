//! Opening a job's dataset before anything is trained: every shard is read and checked
//! against its checksum, so a bad dataset fails the job at once with the file named.

use feral_common::dataset::{Dataset, Split};

use super::TaskContext;
use crate::train::TrainError;

#[derive(Clone, Debug, PartialEq)]
pub struct PrepareOutput {
    pub class_names: Vec<String>,
    pub train_samples: u64,
    pub val_samples: u64,
    /// Unlabelled shard files with their sample counts, in manifest order.
    pub unlabeled_shards: Vec<(String, u64)>,
}

pub fn prepare(context: &TaskContext) -> Result<PrepareOutput, TrainError> {
    let dataset = Dataset::open(&context.spec.dataset)?;
    dataset.verify()?;
    let manifest = dataset.manifest();
    let count = |split| manifest.splits.get(&split).map_or(0, |s| s.samples);
    let unusable = |problem: &str| TrainError::UnusableDataset { dir: context.spec.dataset.clone(), problem: problem.to_owned() };
    if count(Split::Train) == 0 {
        return Err(unusable("its train split is empty"));
    }
    if count(Split::Val) == 0 {
        return Err(unusable("its val split is empty"));
    }
    let unlabeled_shards = manifest
        .splits
        .get(&Split::Unlabeled)
        .map(|s| s.shards.iter().map(|shard| (shard.file.clone(), shard.samples)).collect())
        .unwrap_or_default();
    Ok(PrepareOutput {
        class_names: manifest.classes.clone(),
        train_samples: count(Split::Train),
        val_samples: count(Split::Val),
        unlabeled_shards,
    })
}
