//! Opening a job's dataset before anything is trained: every shard is read and checked
//! against its checksum, so a bad dataset fails the job at once with the file named, and
//! a `[model] init` file that does not fit the model is refused before training.

use feral_common::dataset::{Dataset, Split};
use feral_common::task::{DatasetSummary, ShardRef};

use crate::error::TaskError;
use crate::task::TaskContext;

pub fn prepare(context: &TaskContext) -> Result<DatasetSummary, TaskError> {
    let dataset = Dataset::open(&context.spec.dataset)?;
    dataset.verify()?;
    let manifest = dataset.manifest();
    let count = |split| manifest.splits.get(&split).map_or(0, |s| s.samples);
    let unusable = |problem: &str| TaskError::UnusableDataset { dir: context.spec.dataset.clone(), problem: problem.to_owned() };
    if count(Split::Train) == 0 {
        return Err(unusable("its train split is empty"));
    }
    if count(Split::Val) == 0 {
        return Err(unusable("its val split is empty"));
    }
    // A `[model] init` that cannot start this model fails the job here, before any training.
    let image = [manifest.image.channels, manifest.image.height, manifest.image.width].map(i64::from);
    crate::train::check_initial_weights(&context.spec.model, image, manifest.classes.len() as i64)?;
    let unlabeled_shards = manifest
        .splits
        .get(&Split::Unlabeled)
        .map(|s| s.shards.iter().map(|shard| ShardRef { file: shard.file.clone(), samples: shard.samples }).collect())
        .unwrap_or_default();
    Ok(DatasetSummary { class_names: manifest.classes.clone(), train_samples: count(Split::Train), val_samples: count(Split::Val), unlabeled_shards })
}
