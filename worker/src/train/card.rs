//! The model card, `model.json`, written beside the final model: what a user needs to load
//! the model elsewhere, and what it scored.

use feral_common::metrics::MetricsSummary;
use serde::{Deserialize, Serialize};

/// The version of `model.json`'s layout that this code writes and reads.
pub const CARD_FORMAT: u32 = 1;

/// Written beside the final model: what a user needs to load it elsewhere. The one
/// description of a model: its files, its input, its classes in output order, its scores.
#[derive(Debug, Serialize, Deserialize)]
pub struct ModelCard {
    pub format: u32,
    pub files: FilesCard,
    pub input: InputCard,
    /// What the model returns: one logit per class, in the order of `classes`.
    pub output: String,
    /// Class names, in the order of the model's outputs.
    pub classes: Vec<String>,
    pub arch: String,
    pub cbam: bool,
    pub width: u16,
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

/// The files beside `model.json`, by use.
#[derive(Debug, Serialize, Deserialize)]
pub struct FilesCard {
    /// TorchScript of the evaluation-mode model, for inference anywhere libtorch or
    /// PyTorch runs (`torch.jit.load`).
    pub torchscript: String,
    /// Feral's variables (safetensors), for `[model] init` of another job.
    pub weights: String,
}

/// The input the model takes: `[N, channels, height, width]` float32 (NCHW), each value
/// `pixel × scale + offset` for pixels 0..=255 (grayscale, or R, G, B).
#[derive(Debug, Serialize, Deserialize)]
pub struct InputCard {
    pub layout: String,
    pub dtype: String,
    pub channels: u32,
    pub height: u32,
    pub width: u32,
    pub colour: String,
    pub scale: f64,
    pub offset: f64,
    pub normalisation: String,
}

impl InputCard {
    /// Feral's input for images of `shape`: `pixels / 127.5 − 1`, NCHW.
    pub fn of(shape: feral_common::dataset::ImageShape) -> Self {
        Self {
            layout: "NCHW".into(),
            dtype: "float32".into(),
            channels: shape.channels,
            height: shape.height,
            width: shape.width,
            colour: if shape.channels == 1 { "grayscale" } else { "rgb" }.into(),
            scale: 1.0 / 127.5,
            offset: -1.0,
            normalisation: "pixels / 127.5 - 1".into(),
        }
    }

    pub fn shape(&self) -> feral_common::dataset::ImageShape {
        feral_common::dataset::ImageShape { height: self.height, width: self.width, channels: self.channels }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct OnlineCard {
    pub mask_rate: f64,
    pub mask_precision: Option<f64>,
    pub prior: Vec<f64>,
    pub thresholds: Vec<f64>,
}

/// The temporal encoder beside a model: its file, window, and the backbone's own metrics.
#[derive(Debug, Serialize, Deserialize)]
pub struct TemporalCard {
    pub file: String,
    pub window: usize,
    pub frame_validation: MetricsSummary,
}
