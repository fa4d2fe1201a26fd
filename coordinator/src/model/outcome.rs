//! What finished tasks report, in domain terms.

use feral_common::method::MaskAudit;
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

/// A trained round's model, its validation (and test) metrics, and for online student
/// rounds what the online pseudo-labeller passed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainedModel {
    /// The round's metrics: the temporal encoder's on video datasets.
    pub validation: MetricsSummary,
    pub model_path: String,
    pub class_names: Vec<String>,
    /// Video datasets: the backbone's own frame-by-frame metrics.
    #[serde(default)]
    pub frame_validation: Option<MetricsSummary>,
    /// The same model's metrics on the dataset's test split: only reported, never used to
    /// choose a round. `None` without a test split, and in records stored before it existed.
    #[serde(default)]
    pub test: Option<MetricsSummary>,
    /// Student rounds trained with online pseudo-labels: pool samples the EMA model labelled,
    /// how many passed the thresholds, and their precision where hidden labels are known.
    /// `None` for the teacher, offline rounds, and records stored before it existed.
    #[serde(default)]
    pub online: Option<MaskAudit>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobResult, RoundRecord};

    const METRICS: &str = r#"{ "accuracy": 0.5, "macro_f1": 0.4, "per_class_f1": [0.3, 0.5], "confusion": [2, 1, 1, 2], "samples": 6 }"#;

    #[test]
    fn records_stored_before_test_metrics_and_online_masks_load_without_them() {
        let old_model = format!(r#"{{ "validation": {METRICS}, "model_path": "/a/r0/model.safetensors", "class_names": ["a", "b"] }}"#);
        let model: TrainedModel = serde_json::from_str(&old_model).expect("an old trained model loads");
        assert_eq!((model.test, model.frame_validation, model.validation.samples), (None, None, 6));
        let old_round = format!(r#"{{ "round": 0, "class_weights": [], "partials": {{}}, "class_prior": [], "selection": null, "model": {old_model} }}"#);
        let round: RoundRecord = serde_json::from_str(&old_round).expect("an old round loads");
        assert_eq!(round.model.as_ref().and_then(|m| m.test.as_ref()), None);
        assert_eq!(round.model.and_then(|m| m.online), None, "no online mask in an old round");
        let old_result = format!(r#"{{ "validation": {METRICS}, "model_path": "/a/r0/model.safetensors", "class_names": ["a", "b"], "best_round": 0 }}"#);
        let result: JobResult = serde_json::from_str(&old_result).expect("an old job result loads");
        assert_eq!(result.test, None);

        let with_test = old_model.replacen('{', &format!(r#"{{ "test": {METRICS},"#), 1);
        let model: TrainedModel = serde_json::from_str(&with_test).expect("a model with test metrics loads");
        assert_eq!(model.test.map(|t| t.macro_f1), Some(0.4));
        assert_eq!(model.online, None);

        let online = r#"{ "seen": 100, "masked_in": 40, "with_hidden_label": 30, "correct": 27 }"#;
        let with_online = old_model.replacen('{', &format!(r#"{{ "online": {online},"#), 1);
        let model: TrainedModel = serde_json::from_str(&with_online).expect("a model with an online mask loads");
        assert_eq!(model.online, Some(MaskAudit { seen: 100, masked_in: 40, with_hidden_label: 30, correct: 27 }));
        let stored = serde_json::to_string(&model).expect("a model serialises");
        assert_eq!(serde_json::from_str::<TrainedModel>(&stored).expect("and loads back"), model);
    }
}
