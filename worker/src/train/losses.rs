//! The supervised losses of `[train.loss]` for imbalanced facial-expression data, each a
//! mean over the batch of a per-sample loss on logits `[N, C]` and class targets `[N]`:
//!
//! - `ce`: cross-entropy, optionally with label smoothing (Szegedy et al., "Rethinking the
//!   Inception Architecture", CVPR 2016): targets (1 − ε)·one-hot + ε/C.
//! - `weighted-ce`: cross-entropy times w_y, w_c ∝ 1/n_c^β normalised to mean 1 over classes.
//! - `focal`: −α_y·(1 − p_y)^γ·log p_y (Lin et al., "Focal Loss for Dense Object
//!   Detection", ICCV 2017).
//! - `ldam`: cross-entropy of s·(z − Δ_y·e_y) with Δ_c = C/n_c^¼, C chosen so the rarest
//!   class gets `ldam_max_margin`, and deferred re-weighting from `drw_epoch` on with
//!   class-balanced weights (1 − β)/(1 − β^n_c) (Cao et al., "Learning Imbalanced Datasets
//!   with Label-Distribution-Aware Margin Loss", NeurIPS 2019; the weights are Cui et al.'s,
//!   "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019). The paper pairs
//!   LDAM with a cosine classifier; on the plain linear head here, s = 30 gives sharp
//!   logits and a smaller `ldam_scale` may train better.
//! - `logit-adjusted`: cross-entropy of z + τ·log π_c with the class priors π from the counts
//!   (Menon et al., "Long-Tail Learning via Logit Adjustment", ICLR 2021); predictions use
//!   the plain logits.
//!
//! Class weights multiply each sample's loss and the batch mean divides by N, not by the sum
//! of the weights as PyTorch's weighted `cross_entropy` does: a rank's share of the loss then
//! does not depend on which samples the other ranks drew, so data-parallel training equals
//! single-rank training. A class with no samples counts as one, so no weight or margin is
//! infinite. These losses correct for natural class frequencies: with the default
//! class-uniform sampling (`train.sampling`) the batches are already balanced.

use feral_common::spec::{LossKind, LossSpec};
use tch::{Kind, Tensor};

/// Why a loss cannot be built for a dataset.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LossError {
    #[error("the loss needs the sample count of at least one class")]
    NoClasses,
    #[error("train.loss.focal_alpha has {given} weights but the dataset has {classes} classes")]
    AlphaLength { given: usize, classes: usize },
}

/// Labelled samples per class: `labels` below 0 (unlabelled) or not below `classes` are not counted.
pub fn class_counts(labels: &[i64], classes: usize) -> Vec<u64> {
    let mut counts = vec![0; classes];
    for &label in labels {
        if let Some(count) = usize::try_from(label).ok().and_then(|l| counts.get_mut(l)) {
            *count += 1;
        }
    }
    counts
}

/// The counts as numbers, a class with no samples counting as one.
fn at_least_one(counts: &[u64]) -> impl Iterator<Item = f64> + '_ {
    counts.iter().map(|&n| n.max(1) as f64)
}

fn normalised_to_mean_one(weights: Vec<f64>) -> Vec<f64> {
    let mean = weights.iter().sum::<f64>() / weights.len().max(1) as f64;
    weights.into_iter().map(|w| w / mean).collect()
}

/// `weighted-ce`'s class weights: 1/n_c^β normalised to mean 1.
pub fn inverse_frequency_weights(counts: &[u64], beta: f64) -> Vec<f64> {
    normalised_to_mean_one(at_least_one(counts).map(|n| n.powf(-beta)).collect())
}

/// Cui et al.'s class-balanced weights (1 − β)/(1 − β^n_c), normalised to mean 1.
pub fn class_balanced_weights(counts: &[u64], beta: f64) -> Vec<f64> {
    normalised_to_mean_one(at_least_one(counts).map(|n| (1.0 - beta) / (1.0 - beta.powf(n))).collect())
}

/// LDAM's margins Δ_c = C/n_c^¼ with C such that the largest (the rarest class's) is `max_margin`.
pub fn ldam_margins(counts: &[u64], max_margin: f64) -> Vec<f64> {
    let raw: Vec<f64> = at_least_one(counts).map(|n| n.powf(-0.25)).collect();
    let largest = raw.iter().copied().fold(0.0, f64::max);
    raw.into_iter().map(|m| m * max_margin / largest).collect()
}

/// log π_c, the class priors π_c = n_c / Σ n.
pub fn log_priors(counts: &[u64]) -> Vec<f64> {
    let total: f64 = at_least_one(counts).sum();
    at_least_one(counts).map(|n| (n / total).ln()).collect()
}

/// Per-sample cross-entropy `[N]` with label smoothing ε: (1 − ε)·(−log p_y) + ε·mean_c(−log p_c).
pub fn cross_entropy_per_sample(logits: &Tensor, targets: &Tensor, smoothing: f64) -> Tensor {
    let log_probs = logits.log_softmax(-1, None);
    let nll = -log_probs.gather(1, &targets.unsqueeze(1), false).squeeze_dim(1);
    if smoothing == 0.0 {
        return nll;
    }
    let uniform = -log_probs.mean_dim(-1, false, None);
    nll * (1.0 - smoothing) + uniform * smoothing
}

fn vector(values: &[f64]) -> Tensor {
    Tensor::from_slice(values).to_kind(Kind::Float)
}

#[derive(Debug)]
enum Rule {
    /// Cross-entropy, times the target's class weight when there are weights.
    CrossEntropy {
        class_weights: Option<Tensor>,
    },
    Focal {
        gamma: f64,
        alpha: Option<Tensor>,
    },
    Ldam {
        margins: Tensor,
        scale: f64,
        reweighting: Option<(u32, Tensor)>,
    },
    /// Cross-entropy of the logits plus τ·log π.
    LogitAdjusted {
        adjustment: Tensor,
    },
}

/// A loss of `[train.loss]` for a dataset's class counts. See the module documentation.
#[derive(Debug)]
pub struct Loss {
    rule: Rule,
    label_smoothing: f64,
    classes: usize,
}

impl Loss {
    /// The loss `spec` describes for classes with `class_counts` labelled samples (in the
    /// dataset's class order; [`class_counts`] computes them). Give it
    /// `TrainSpec::effective_loss()`, which folds in the older `train.label_smoothing`.
    pub fn new(spec: &LossSpec, class_counts: &[u64]) -> Result<Loss, LossError> {
        let classes = class_counts.len();
        if classes == 0 {
            return Err(LossError::NoClasses);
        }
        let rule = match spec.kind {
            LossKind::Ce => Rule::CrossEntropy { class_weights: None },
            LossKind::WeightedCe => Rule::CrossEntropy { class_weights: Some(vector(&inverse_frequency_weights(class_counts, spec.class_weight_beta))) },
            LossKind::Focal => {
                let alpha = match &spec.focal_alpha {
                    Some(alpha) if alpha.len() != classes => return Err(LossError::AlphaLength { given: alpha.len(), classes }),
                    Some(alpha) => Some(vector(alpha)),
                    None => None,
                };
                Rule::Focal { gamma: spec.focal_gamma, alpha }
            }
            LossKind::Ldam => Rule::Ldam {
                margins: vector(&ldam_margins(class_counts, spec.ldam_max_margin)),
                scale: spec.ldam_scale,
                reweighting: (spec.drw_epoch > 0).then(|| (spec.drw_epoch, vector(&class_balanced_weights(class_counts, spec.drw_beta)))),
            },
            LossKind::LogitAdjusted => {
                let adjustment: Vec<f64> = log_priors(class_counts).iter().map(|l| spec.la_tau * l).collect();
                Rule::LogitAdjusted { adjustment: vector(&adjustment) }
            }
        };
        let label_smoothing = if spec.kind == LossKind::Focal { 0.0 } else { spec.label_smoothing };
        Ok(Loss { rule, label_smoothing, classes })
    }

    /// The classes the loss was built for: logits must have this many columns.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Whether `epoch` (counted from 1) uses deferred re-weighting.
    pub fn reweights_at(&self, epoch: u32) -> bool {
        matches!(&self.rule, Rule::Ldam { reweighting: Some((from, _)), .. } if epoch >= *from)
    }

    /// The mean loss over the batch of `logits` `[N, C]` (C = [`Loss::classes`]) for `targets`
    /// `[N]` (Int64) in epoch `epoch`, counted from 1 as the training loop does. Computed in
    /// single precision or better, on the logits' device.
    pub fn compute(&self, logits: &Tensor, targets: &Tensor, epoch: u32) -> Tensor {
        let kind = if logits.kind() == Kind::Double { Kind::Double } else { Kind::Float };
        let logits = logits.to_kind(kind);
        let on_logits = |t: &Tensor| t.to_device(logits.device()).to_kind(kind);
        let weighted = |per_sample: Tensor, weights: Option<&Tensor>| match weights {
            Some(weights) => per_sample * on_logits(weights).index_select(0, targets),
            None => per_sample,
        };
        let per_sample = match &self.rule {
            Rule::CrossEntropy { class_weights } => weighted(cross_entropy_per_sample(&logits, targets, self.label_smoothing), class_weights.as_ref()),
            Rule::Focal { gamma, alpha } => {
                let log_p = logits.log_softmax(-1, None).gather(1, &targets.unsqueeze(1), false).squeeze_dim(1);
                // The clamp keeps the gradient of (1 − p)^γ finite for γ < 1 where p rounds to 1.
                let modulating = (-log_p.exp() + 1.0).clamp_min(1e-12).pow_tensor_scalar(*gamma);
                weighted(-(modulating * log_p), alpha.as_ref())
            }
            Rule::Ldam { margins, scale, reweighting } => {
                let target_margin = on_logits(margins).index_select(0, targets).unsqueeze(1);
                let adjusted = (&logits - targets.one_hot(self.classes as i64).to_kind(kind) * target_margin) * *scale;
                let weights = reweighting.as_ref().filter(|(from, _)| epoch >= *from).map(|(_, weights)| weights);
                weighted(cross_entropy_per_sample(&adjusted, targets, self.label_smoothing), weights)
            }
            Rule::LogitAdjusted { adjustment } => cross_entropy_per_sample(&(&logits + on_logits(adjustment)), targets, self.label_smoothing),
        };
        per_sample.mean(kind)
    }
}

#[cfg(test)]
mod tests;
