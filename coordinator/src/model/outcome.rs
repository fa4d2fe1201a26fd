//! What finished tasks report, in domain terms.

use feral_common::metrics::MetricsSummary;
use serde::{Deserialize, Serialize};

use super::TaskKind;

/// What a `Prepare` task found in the dataset.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetSummary {
    pub class_names: Vec<String>,
    pub train_samples: u64,
    pub val_samples: u64,
    pub unlabeled_shards: Vec<ShardRef>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRef {
    pub file: String,
    pub samples: u64,
}

/// A trained round's model and its validation metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainedModel {
    /// The round's metrics: the temporal encoder's on video datasets.
    pub validation: MetricsSummary,
    pub model_path: String,
    pub class_names: Vec<String>,
    /// Video datasets: the backbone's own frame-by-frame metrics.
    #[serde(default)]
    pub frame_validation: Option<MetricsSummary>,
}

/// One shard's share of the class prior: Σ_i p_i,c over its samples, and how many.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferPartial {
    pub probability_sums: Vec<f64>,
    pub samples: u64,
    pub predictions_file: String,
}

/// The round's pseudo-label selection, as the selection task reports it.
pub use feral_common::method::SelectionSummary;

#[derive(Clone, Debug, PartialEq)]
pub enum TaskOutcome {
    Prepared(DatasetSummary),
    Trained(TrainedModel),
    Inferred(InferPartial),
    Selected(SelectionSummary),
}

impl TaskOutcome {
    pub fn kind(&self) -> TaskKind {
        match self {
            TaskOutcome::Prepared(_) => TaskKind::Prepare,
            TaskOutcome::Trained(_) => TaskKind::Train,
            TaskOutcome::Inferred(_) => TaskKind::Infer,
            TaskOutcome::Selected(_) => TaskKind::Select,
        }
    }
}
