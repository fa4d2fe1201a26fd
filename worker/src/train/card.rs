//! The model card, `model.json`, written beside the final model: what a user needs to load
//! the model elsewhere, and what it scored.

use feral_common::metrics::MetricsSummary;
use serde::{Deserialize, Serialize};

/// Written beside the final model: what a user needs to load it elsewhere.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ModelCard {
    pub arch: String,
    pub cbam: bool,
    /// The same model as TorchScript, beside this file.
    pub torchscript: String,
    pub width: u16,
    pub classes: Vec<String>,
    pub image: feral_common::dataset::ImageShape,
    pub normalisation: String,
    pub round: u32,
    /// The temporal encoder's metrics on video datasets, the backbone's otherwise.
    pub validation: MetricsSummary,
    /// The `test` split's metrics, where the dataset has one: reported, never used to choose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<MetricsSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temporal: Option<TemporalCard>,
    /// Student rounds trained online: how many pool labels passed the thresholds, and
    /// their precision against hidden labels where the dataset keeps them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online: Option<OnlineCard>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct OnlineCard {
    pub mask_rate: f64,
    pub mask_precision: Option<f64>,
    pub prior: Vec<f64>,
    pub thresholds: Vec<f64>,
}

/// The temporal encoder beside a model: its file, window, and the backbone's own metrics.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TemporalCard {
    pub file: String,
    pub window: usize,
    pub frame_validation: MetricsSummary,
}
