//! Online debiased consistency, the student's unlabelled loss in every round (docs/design.md
//! §1, step 6): FixMatch (Sohn et al., NeurIPS 2020) with DebiasPL's online prior
//! and adaptive margin (Wang et al., CVPR 2022) and FreeMatch's self-adaptive class-aware
//! thresholds (Wang et al., ICLR 2023). Each step the EMA model labels a weak view of μ·B
//! pool images without gradients; the labels are debiased with the online prior,
//! ŷ = argmax softmax(z_w − τ·log q̂), kept where their confidence reaches ŷ's threshold,
//! and learnt on the strong view as CE(z_s + τ·log q̂, ŷ). With a target temperature T
//! the strong view learns the whole debiased distribution sharpened by T instead
//! (UDA's and MixMatch's soft targets), −Σ_c softmax((z_w − τ·log q̂)/T)_c ·
//! log softmax(z_s + τ·log q̂)_c, under the same mask.
//!
//! The thresholds follow the model's own confidence: t_c = max(t_min, t̄ · p̃_c / max_k p̃_k)
//! with t̄ the running mean of the debiased confidence and p̃ the running mean of the
//! debiased probabilities, so a teacher that is still unsure gets low thresholds and
//! classes the model finds hard get lower ones. With the soft mask (SoftMatch, Chen et al.,
//! ICLR 2023) a label below its threshold t still counts, with weight
//! exp(−(t − p)² / (2·(σ/2)²)), σ² the running variance of the confidence: near misses
//! teach a little instead of nothing. The round's selection pass over the whole pool starts
//! t̄, σ² and p̃ exactly. The prior, t̄, σ² and p̃ are running averages over every rank's
//! samples, all-reduced once a step, so every rank holds the same numbers.

pub use feral_common::method::MaskAudit;
use feral_common::method::{self, PRIOR_FLOOR};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

use crate::collective::{Collective, CollectiveError};

/// The constants of the online labeller (the job spec's `[semi_supervised]`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OnlineParams {
    /// τ: debiasing strength (0: neither debiased labels nor margins).
    pub tau: f64,
    /// m of every running average.
    pub momentum: f64,
    /// t_min: no class threshold goes below this.
    pub min_threshold: f64,
    /// Weigh labels below their threshold by SoftMatch's Gaussian instead of dropping them.
    pub soft: bool,
    /// T of soft targets; 0: hard labels.
    pub temperature: f64,
}

/// Where the running averages start: the pool's mean debiased confidence t̄ and mean
/// debiased class probabilities p̃ under the round's teacher.
#[derive(Clone, Debug, PartialEq)]
pub struct ThresholdSeed {
    pub mean_confidence: f64,
    pub confidence_variance: f64,
    pub mean_probabilities: Vec<f64>,
}

/// The online state: q̂, t̄ and p̃, identical on every rank.
#[derive(Clone, Debug, PartialEq)]
pub struct OnlineLabeller {
    params: OnlineParams,
    /// q̂_c: the running class prior of the pool under the EMA model (raw probabilities).
    prior: Vec<f64>,
    /// t̄: the running mean of the highest debiased probability.
    confidence: f64,
    /// σ²: its running variance.
    confidence_variance: f64,
    /// p̃_c: the running mean of the debiased probability of class c.
    class_confidence: Vec<f64>,
    /// π: the class distribution the labels are debiased toward; `None`: uniform (the
    /// margin τ·log q̂ then, exactly as DebiasPL's).
    target: Option<Vec<f64>>,
}

/// One step's labels for the pool samples, on the model's device.
#[derive(Debug)]
pub struct PseudoTargets {
    /// ŷ, `[N]` i64.
    pub labels: Tensor,
    /// 1 where the confidence reaches ŷ's threshold, else 0 (or, soft, the Gaussian
    /// weight); `[N]` f32.
    pub mask: Tensor,
    /// Whether each confidence reached ŷ's threshold, `[N]` bool: what the audit counts.
    pub passed: Tensor,
    /// τ·log q̂ with the q̂ the labels were made with, `[C]`: the margin of their loss.
    pub margin: Tensor,
    /// With a target temperature T, the soft targets softmax((z_w − τ·log q̂)/T), `[N, C]`.
    pub soft: Option<Tensor>,
}

/// The labeller's state, as a checkpoint keeps it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OnlineState {
    pub prior: Vec<f64>,
    pub confidence: f64,
    #[serde(default)]
    pub confidence_variance: f64,
    pub class_confidence: Vec<f64>,
}

/// What an epoch's checkpoint keeps of online consistency: the labeller's state, and the
/// round's mask audit so far (so that a resumed round reports the whole round's mask rate).
/// Files written before the audit was kept read with an empty audit.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OnlineCheckpoint {
    #[serde(flatten)]
    pub labeller: OnlineState,
    #[serde(default)]
    pub audit: MaskAudit,
}

impl OnlineLabeller {
    /// Starts from the round's exact pool prior (uniform when absent) and the selection's
    /// seed. Without a seed (a teacher learning online from its first step) t̄ and p̃ start
    /// at FreeMatch's 1/C and σ² at 0: the soft mask is then hard until the running
    /// variance has been learnt. (SoftMatch's σ² = 1 would give every label of a model that
    /// has learnt nothing yet most of a full weight, and such a teacher collapses onto the
    /// classes its first confident guesses named.)
    pub fn new(params: OnlineParams, classes: usize, prior: &[f64], seed: Option<ThresholdSeed>) -> Self {
        let uniform = vec![1.0 / classes as f64; classes];
        let prior = if prior.len() == classes { prior.to_vec() } else { uniform.clone() };
        let (confidence, confidence_variance, class_confidence) = match seed {
            Some(seed) if seed.mean_probabilities.len() == classes => (seed.mean_confidence, seed.confidence_variance, seed.mean_probabilities),
            _ => (1.0 / classes as f64, 0.0, uniform),
        };
        Self { params, prior, confidence, confidence_variance, class_confidence, target: None }
    }

    /// Debiases toward the class distribution `target` (`[semi_supervised] debias_toward =
    /// "labelled"`): labels from z − τ·log(q̂/π), margin τ·log(q̂/π). One of another class
    /// count is ignored.
    pub fn toward(mut self, target: Vec<f64>) -> Self {
        if target.len() == self.prior.len() {
            self.target = Some(target);
        }
        self
    }

    pub fn prior(&self) -> &[f64] {
        &self.prior
    }

    pub fn state(&self) -> OnlineState {
        OnlineState {
            prior: self.prior.clone(),
            confidence: self.confidence,
            confidence_variance: self.confidence_variance,
            class_confidence: self.class_confidence.clone(),
        }
    }

    /// Restores a saved state; one of another class count is ignored.
    pub fn restore(&mut self, state: OnlineState) {
        if state.prior.len() == self.prior.len() && state.class_confidence.len() == self.class_confidence.len() {
            (self.prior, self.confidence, self.class_confidence) = (state.prior, state.confidence, state.class_confidence);
            self.confidence_variance = state.confidence_variance;
        }
    }

    /// The class thresholds now: t_c = max(t_min, t̄ · p̃_c / max_k p̃_k).
    pub fn thresholds(&self) -> Vec<f64> {
        method::thresholds_from_shares(&self.class_confidence, self.confidence, self.params.min_threshold)
    }

    /// τ·log(q̂/π) as a `[C]` f32 tensor (τ·log q̂ for the uniform π):
    /// subtracted from the weak logits to debias the labels, added to the strong logits as
    /// the adaptive margin.
    fn margin(&self, device: Device) -> Tensor {
        let prior = match &self.target {
            Some(target) => method::prior_toward(&self.prior, target),
            None => self.prior.clone(),
        };
        let values: Vec<f32> = prior.iter().map(|p| (self.params.tau * p.max(PRIOR_FLOOR).ln()) as f32).collect();
        Tensor::from_slice(&values).to_device(device)
    }

    /// Labels the weak views (`[N, C]` logits of the EMA model) with the state as it is,
    /// then folds this step's samples of every rank into q̂, t̄ and p̃ (one all-reduce), so
    /// the next step labels with them.
    pub fn label(&mut self, weak_logits: &Tensor, collective: &mut dyn Collective) -> Result<PseudoTargets, CollectiveError> {
        let device = weak_logits.device();
        let weak_logits = weak_logits.detach().to_kind(Kind::Float);
        let margin = self.margin(device);
        let debiased_logits = &weak_logits - &margin;
        let debiased = debiased_logits.softmax(-1, Kind::Float);
        let soft = (self.params.temperature > 0.0).then(|| (&debiased_logits / self.params.temperature).softmax(-1, Kind::Float));
        let (confidence, labels) = debiased.max_dim(-1, false);
        let thresholds: Vec<f32> = self.thresholds().iter().map(|&t| t as f32).collect();
        let threshold_of_label = Tensor::from_slice(&thresholds).to_device(device).index_select(0, &labels);
        let passed = confidence.ge_tensor(&threshold_of_label);
        let mask = if self.params.soft {
            // SoftMatch's truncated Gaussian, with σ/2 as USB's reference code uses.
            let shortfall = (&threshold_of_label - &confidence).clamp_min(0.0);
            let spread = 2.0 * self.confidence_variance.max(1e-6) / 4.0;
            (-(&shortfall * &shortfall) / spread).exp()
        } else {
            passed.to_kind(Kind::Float)
        };

        // Global sums: Σ softmax(z_w) (the prior's evidence: raw, not debiased), Σ of the
        // debiased probabilities, Σ of the highest debiased probability, and the count.
        let sums = [
            weak_logits.softmax(-1, Kind::Float).sum_dim_intlist(0, false, Kind::Float),
            debiased.sum_dim_intlist(0, false, Kind::Float),
            confidence.sum(Kind::Float).view([1]),
            (&confidence * &confidence).sum(Kind::Float).view([1]),
            Tensor::from_slice(&[weak_logits.size()[0] as f32]).to_device(device),
        ];
        let mut sums = Tensor::cat(&sums, 0);
        collective.all_reduce_sum(&mut sums)?;
        let sums: Vec<f64> = Vec::<f32>::try_from(&sums.to_device(Device::Cpu)).map_err(torch)?.into_iter().map(f64::from).collect();
        let classes = self.prior.len();
        let total = sums[2 * classes + 2].max(1.0);
        let mean = |range: std::ops::Range<usize>| sums[range].iter().map(|s| s / total).collect::<Vec<f64>>();
        let m = self.params.momentum;
        method::momentum_update(&mut self.prior, &mean(0..classes), m);
        method::momentum_update(&mut self.class_confidence, &mean(classes..2 * classes), m);
        let batch_mean = sums[2 * classes] / total;
        let batch_variance = (sums[2 * classes + 1] / total - batch_mean * batch_mean).max(0.0);
        self.confidence = m * self.confidence + (1.0 - m) * batch_mean;
        self.confidence_variance = m * self.confidence_variance + (1.0 - m) * batch_variance;
        Ok(PseudoTargets { labels, mask, passed, margin, soft })
    }
}

/// What the EMA model `net` says about the weak views `[N, C, H, W]`, without gradients:
/// its logits, or with `mirrored` (`online_flip_labels`) the mean of its log-probabilities
/// for each view and its mirror image (one pass over both), so an image and its mirror
/// image get the same label.
pub fn weak_view_logits(net: &dyn ModuleT, weak: &Tensor, mirrored: bool) -> Tensor {
    tch::no_grad(|| {
        if !mirrored {
            return net.forward_t(weak, false);
        }
        let both = net.forward_t(&Tensor::cat(&[weak.shallow_clone(), weak.flip([3])], 0), false);
        let halves = both.log_softmax(-1, Kind::Float).chunk(2, 0);
        (&halves[0] + &halves[1]) / 2.0
    })
}

fn torch(error: tch::TchError) -> CollectiveError {
    CollectiveError::Mismatch(format!("online prior: {error}"))
}

/// The masked adaptive-margin loss mean_i mask_i · CE(z_s,i + τ·log q̂, ŷ_i), over every
/// sample of the batch (masked-out samples count as zero, as in FixMatch); with soft
/// targets q_i, the cross-entropy −Σ_c q_ic · log softmax(z_s,i + τ·log q̂)_c instead.
pub fn consistency_loss(strong_logits: &Tensor, targets: &PseudoTargets) -> Tensor {
    let with_margin = strong_logits + &targets.margin;
    let per_sample = match &targets.soft {
        Some(soft) => -(soft * with_margin.log_softmax(-1, Kind::Float)).sum_dim_intlist(-1, false, Kind::Float),
        None => with_margin.cross_entropy_loss::<Tensor>(&targets.labels, None, tch::Reduction::None, -100, 0.0),
    };
    (per_sample * &targets.mask).mean(Kind::Float)
}

/// Adds one step's masks to `audit`, with the pool samples' hidden labels (-1: unknown).
pub fn audit(audit: &mut MaskAudit, targets: &PseudoTargets, hidden_labels: &[i64]) -> Result<(), tch::TchError> {
    let labels = Vec::<i64>::try_from(&targets.labels.to_device(Device::Cpu))?;
    let passed = Vec::<bool>::try_from(&targets.passed.to_device(Device::Cpu))?;
    for ((label, kept), truth) in labels.iter().zip(&passed).zip(hidden_labels) {
        audit.seen += 1;
        if *kept {
            audit.masked_in += 1;
            if *truth >= 0 {
                audit.with_hidden_label += 1;
                audit.correct += u64::from(truth == label);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::Single;

    const PARAMS: OnlineParams = OnlineParams { tau: 1.0, momentum: 0.5, min_threshold: 0.5, soft: false, temperature: 0.0 };

    fn near(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    }

    fn softmax(row: &[f64]) -> Vec<f64> {
        let e: Vec<f64> = row.iter().map(|z| z.exp()).collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|v| v / s).collect()
    }

    fn seed() -> Option<ThresholdSeed> {
        Some(ThresholdSeed { mean_confidence: 0.8, confidence_variance: 0.01, mean_probabilities: vec![0.4, 0.3, 0.3] })
    }

    #[test]
    fn without_a_seed_the_soft_mask_starts_hard() {
        let params = OnlineParams { soft: true, ..PARAMS };
        let mut labeller = OnlineLabeller::new(params, 3, &[], None);
        // A uniform prior and t̄ = 1/3 put every threshold at the floor t_min.
        assert!(near(&labeller.thresholds(), &[PARAMS.min_threshold; 3]), "{:?}", labeller.thresholds());
        // One confident row (p = 0.94) and two unsure ones (p ≈ 0.5 and 0.33).
        let logits = Tensor::from_slice(&[4.0f32, 0.5, 0.0, 1.0, 0.8, 0.0, 0.0, 0.0, 0.0]).view([3, 3]);
        let targets = labeller.label(&logits, &mut Single).expect("label");
        assert_eq!(Vec::<f32>::try_from(&targets.mask).expect("mask"), vec![1.0, 0.0, 0.0]);
    }

    #[test]
    fn labels_are_debiased_thresholded_and_the_state_moves_with_the_batch() {
        // Prior [0.5, 0.25, 0.25]: with τ = 1 the debiased logits are z − ln q̂.
        let mut labeller = OnlineLabeller::new(PARAMS, 3, &[0.5, 0.25, 0.25], seed());
        // t̄ · p̃ / max p̃ = 0.8 · [1, 0.75, 0.75] = [0.8, 0.6, 0.6].
        assert!(near(&labeller.thresholds(), &[0.8, 0.6, 0.6]), "{:?}", labeller.thresholds());
        // Row 0: z = [ln 2 + 2, 0, 0] → debiased [2 + ln 4, ln 4, ln 4]: class 0 with
        //   p = e²/(e² + 2) = 0.787 < t_0 = 0.8: masked out.
        // Row 1: z = [ln 2, 3, 0] → [ln 4, 3 + ln 4, ln 4]: class 1, p = e³/(e³ + 2) = 0.909: kept.
        // Row 2: z = [ln 2 + 1, 1.5, 0] → [1 + ln 4, 1.5 + ln 4, ln 4]: class 1 (the raw
        //   argmax is 0), p = e^1.5/(e + e^1.5 + 1) = 0.547 < t_1 = 0.6: masked out.
        let ln2 = 2f64.ln();
        let rows = [[ln2 + 2.0, 0.0, 0.0], [ln2, 3.0, 0.0], [ln2 + 1.0, 1.5, 0.0]];
        let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
        let logits = Tensor::from_slice(&flat).view([3, 3]);
        let targets = labeller.label(&logits, &mut Single).expect("label");
        assert_eq!(Vec::<i64>::try_from(&targets.labels).expect("labels"), vec![0, 1, 1]);
        assert_eq!(Vec::<f32>::try_from(&targets.mask).expect("mask"), vec![0.0, 1.0, 0.0]);

        // q̂ ← 0.5·q̂ + 0.5·mean softmax(z) (raw logits, not debiased).
        let mean_of = |rows: &[Vec<f64>]| (0..3).map(|c| rows.iter().map(|r| r[c]).sum::<f64>() / 3.0).collect::<Vec<f64>>();
        let raw: Vec<Vec<f64>> = rows.iter().map(|r| softmax(r)).collect();
        let want: Vec<f64> = [0.5, 0.25, 0.25].iter().zip(mean_of(&raw)).map(|(q, m)| 0.5 * q + 0.5 * m).collect();
        assert!(near(labeller.prior(), &want), "{:?} vs {want:?}", labeller.prior());
        // p̃ ← 0.5·p̃ + 0.5·mean softmax(z − ln q̂), t̄ ← 0.5·t̄ + 0.5·mean max of it.
        let prior_ln = [0.5f64.ln(), 0.25f64.ln(), 0.25f64.ln()];
        let debiased: Vec<Vec<f64>> = rows.iter().map(|r| softmax(&[r[0] - prior_ln[0], r[1] - prior_ln[1], r[2] - prior_ln[2]])).collect();
        let class_confidence: Vec<f64> = [0.4, 0.3, 0.3].iter().zip(mean_of(&debiased)).map(|(p, m)| 0.5 * p + 0.5 * m).collect();
        let top = debiased.iter().map(|p| p.iter().copied().fold(0.0, f64::max)).sum::<f64>() / 3.0;
        let state = labeller.state();
        assert!(near(&state.class_confidence, &class_confidence), "{:?} vs {class_confidence:?}", state.class_confidence);
        assert!((state.confidence - (0.4 + 0.5 * top)).abs() < 1e-5, "t̄ {} vs {}", state.confidence, 0.4 + 0.5 * top);
        // σ² ← 0.5·σ² + 0.5·(mean of the squared top probabilities − their mean squared).
        let tops: Vec<f64> = debiased.iter().map(|p| p.iter().copied().fold(0.0, f64::max)).collect();
        let variance = tops.iter().map(|t| t * t).sum::<f64>() / 3.0 - top * top;
        assert!((state.confidence_variance - (0.005 + 0.5 * variance)).abs() < 1e-5, "σ² {}", state.confidence_variance);
    }

    #[test]
    fn a_checkpoint_restores_the_labeller_and_the_audit_bit_for_bit() {
        // A state after a few steps: its numbers have every bit of an f64 in use, as the
        // running means of a real round do (about one in ten such numbers read back one bit
        // off without serde_json's `float_roundtrip`, and a resumed round then drifts).
        let mut labeller = OnlineLabeller::new(PARAMS, 3, &[0.5, 0.25, 0.25], seed());
        for step in 0..5 {
            let flat: Vec<f32> = (0..12).map(|i| ((i * 7 + step * 3) % 11) as f32 / 3.7 - 1.3).collect();
            labeller.label(&Tensor::from_slice(&flat).view([4, 3]), &mut Single).expect("label");
        }
        let audit = MaskAudit { seen: 640, masked_in: 97, with_hidden_label: 640, correct: 88 };
        let written = serde_json::to_string(&OnlineCheckpoint { labeller: labeller.state(), audit }).expect("json");
        let read: OnlineCheckpoint = serde_json::from_str(&written).expect("read back");
        assert_eq!(read.audit, audit);
        let mut resumed = OnlineLabeller::new(PARAMS, 3, &[0.5, 0.25, 0.25], seed());
        resumed.restore(read.labeller);
        let bits = |state: OnlineState| -> Vec<u64> {
            let scalars = [state.confidence, state.confidence_variance];
            state.prior.iter().chain(&state.class_confidence).chain(&scalars).map(|v| v.to_bits()).collect()
        };
        assert_eq!(bits(resumed.state()), bits(labeller.state()), "{written}");

        // A file from before the audit was kept still restores the labeller.
        let old = serde_json::to_string(&labeller.state()).expect("json");
        let read: OnlineCheckpoint = serde_json::from_str(&old).expect("an older checkpoint reads");
        assert_eq!((read.labeller, read.audit), (labeller.state(), MaskAudit::default()));
    }

    #[test]
    fn the_soft_mask_weighs_near_misses_by_a_gaussian() {
        // The same rows as above, soft: σ² = 0.01, so a label short of its threshold by d
        // weighs exp(−d² / (2·0.01/4)) = exp(−200·d²).
        let mut labeller = OnlineLabeller::new(OnlineParams { soft: true, ..PARAMS }, 3, &[0.5, 0.25, 0.25], seed());
        let ln2 = 2f64.ln();
        let flat: Vec<f32> = [ln2 + 2.0, 0.0, 0.0, ln2, 3.0, 0.0, ln2 + 1.0, 1.5, 0.0].iter().map(|&v| v as f32).collect();
        let targets = labeller.label(&Tensor::from_slice(&flat).view([3, 3]), &mut Single).expect("label");
        let weights = Vec::<f32>::try_from(&targets.mask).expect("mask");
        let e2 = 2f64.exp();
        let row0 = e2 / (e2 + 2.0); // 0.787, threshold 0.8
        let e15 = 1.5f64.exp();
        let row2 = e15 / (1f64.exp() + e15 + 1.0); // 0.547, threshold 0.6
        let want = [(-200.0 * (0.8 - row0).powi(2)).exp(), 1.0, (-200.0 * (0.6 - row2).powi(2)).exp()];
        for (got, want) in weights.iter().zip(want) {
            assert!((f64::from(*got) - want).abs() < 1e-4, "weights {weights:?}, want {want:?}");
        }
        assert_eq!(Vec::<bool>::try_from(&targets.passed).expect("passed"), vec![false, true, false], "the audit counts passes only");
    }

    #[test]
    fn masked_margin_loss_matches_hand_computed_values() {
        // z_s = [[0, 0], [2, 0]], margin = [ln 0.8, ln 0.2] (τ = 1, q̂ = [0.8, 0.2]).
        // Row 0, ŷ = 1: z + m = [ln 0.8, ln 0.2] → CE = −ln 0.2 = 1.6094, kept.
        // Row 1, ŷ = 0: masked out. Mean over both rows: 1.6094 / 2.
        let logits = Tensor::from_slice(&[0.0f32, 0.0, 2.0, 0.0]).view([2, 2]);
        let margin = Tensor::from_slice(&[0.8f32.ln(), 0.2f32.ln()]);
        let targets = |margin: Tensor| {
            let mask = Tensor::from_slice(&[1.0f32, 0.0]);
            PseudoTargets { labels: Tensor::from_slice(&[1i64, 0]), passed: mask.gt(0.5), mask, margin, soft: None }
        };
        let loss = consistency_loss(&logits, &targets(margin)).double_value(&[]);
        assert!((loss - (-(0.2f64.ln())) / 2.0).abs() < 1e-5, "loss {loss}");
        // With no margin (τ = 0) row 0 is CE([0, 0], 1) = ln 2.
        let zero = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        let plain = consistency_loss(&logits, &targets(zero)).double_value(&[]);
        assert!((plain - 2f64.ln() / 2.0).abs() < 1e-5, "loss {plain}");
    }

    #[test]
    fn a_labeller_without_a_prior_starts_uniform_and_the_audit_counts_masks() {
        // FreeMatch's start: t̄ = 1/C = 0.5 and p̃ uniform, so every threshold is 0.5.
        let mut labeller = OnlineLabeller::new(OnlineParams { tau: 0.0, ..PARAMS }, 2, &[], None);
        assert_eq!(labeller.prior(), [0.5, 0.5]);
        assert_eq!(labeller.thresholds(), [0.5, 0.5]);
        // Confidences: 0.953 (class 0), 0.953 (class 1), 0.525 (class 0): all pass 0.5.
        let logits = Tensor::from_slice(&[3.0f32, 0.0, 0.0, 3.0, 0.1, 0.0]).view([3, 2]);
        let targets = labeller.label(&logits, &mut Single).expect("label");
        let mut counts = MaskAudit::default();
        audit(&mut counts, &targets, &[0, 0, -1]).expect("audit");
        assert_eq!(counts, MaskAudit { seen: 3, masked_in: 3, with_hidden_label: 2, correct: 1 });
        assert_eq!(counts.precision(), Some(0.5));
        // t̄ rose towards the batch's mean confidence: the thresholds follow the model.
        assert!(labeller.thresholds()[0] > 0.6, "{:?}", labeller.thresholds());
    }

    #[test]
    fn ranks_of_a_gang_hold_identical_priors_and_thresholds() {
        // Two ranks label different halves of a global batch; after every step both hold
        // the same state, and it is the state one rank reaches on the whole batch.
        let batch = |rank: usize, step: usize| {
            let values: Vec<f32> = (0..12).map(|i| ((i * 7 + rank * 5 + step * 3) % 11) as f32 / 3.0).collect();
            Tensor::from_slice(&values).view([4, 3])
        };
        let states = crate::collective::tests::with_ring(2, crate::collective::tests::LIMIT, move |rank, ring| {
            let mut labeller = OnlineLabeller::new(PARAMS, 3, &[0.6, 0.3, 0.1], seed());
            for step in 0..5 {
                labeller.label(&batch(rank, step), ring).expect("label");
            }
            labeller
        });
        assert_eq!(states[0], states[1], "ranks hold the same prior and shares");
        let mut alone = OnlineLabeller::new(PARAMS, 3, &[0.6, 0.3, 0.1], seed());
        for step in 0..5 {
            alone.label(&Tensor::cat(&[batch(0, step), batch(1, step)], 0), &mut Single).expect("label");
        }
        let (a, b) = (alone.state(), states[0].state());
        assert!(near(&a.prior, &b.prior) && near(&a.class_confidence, &b.class_confidence) && (a.confidence - b.confidence).abs() < 1e-5);
        assert!(alone.prior() != [0.6, 0.3, 0.1], "the prior moved");
    }

    #[test]
    fn a_labeller_debiased_toward_the_labelled_frequencies_keeps_their_imbalance() {
        // q̂ = (0.5, 0.5) and π = (0.8, 0.2), τ = 1: toward uniform the logits (0, 0.5)
        // label class 1; toward π they become (0 − ln(0.5/0.8), 0.5 − ln(0.5/0.2)) =
        // (0.470, −0.416): class 0, with confidence σ(0.886) = 0.708, and the margin for the
        // strong logits is ln(q̂/π) = (−0.470, 0.916).
        let logits = Tensor::from_slice(&[0.0f32, 0.5]).view([1, 2]);
        let params = OnlineParams { momentum: 1.0, ..PARAMS };
        let uniform = OnlineLabeller::new(params, 2, &[0.5, 0.5], None).label(&logits, &mut Single).expect("label");
        assert_eq!(Vec::<i64>::try_from(&uniform.labels).expect("labels"), [1]);
        let mut labeller = OnlineLabeller::new(params, 2, &[0.5, 0.5], None).toward(vec![0.8, 0.2]);
        let targets = labeller.label(&logits, &mut Single).expect("label");
        assert_eq!(Vec::<i64>::try_from(&targets.labels).expect("labels"), [0]);
        let margin: Vec<f64> = Vec::<f32>::try_from(&targets.margin).expect("margin").into_iter().map(f64::from).collect();
        assert!(near(&margin, &[(0.5f64 / 0.8).ln(), (0.5f64 / 0.2).ln()]), "{margin:?}");
        assert!(Vec::<bool>::try_from(&targets.passed).expect("passed")[0], "0.708 passes 0.5");
        // A target of another class count is ignored.
        let mut ignored = OnlineLabeller::new(params, 2, &[0.5, 0.5], None).toward(vec![1.0]);
        let targets = ignored.label(&logits, &mut Single).expect("label");
        assert_eq!(Vec::<i64>::try_from(&targets.labels).expect("labels"), [1]);
    }

    #[test]
    fn mirrored_labelling_gives_an_image_and_its_mirror_the_same_label() {
        // A linear model over the pixels: not symmetric, so alone it tells the two apart.
        let vs = tch::nn::VarStore::new(Device::Cpu);
        tch::manual_seed(3);
        let linear = tch::nn::linear(vs.root(), 6, 3, Default::default());
        let net = tch::nn::func_t(move |x, _train| x.flatten(1, -1).apply(&linear));
        let images = Tensor::randn([4, 1, 2, 3], (Kind::Float, Device::Cpu));
        let mirrors = images.flip([3]);
        let plain = (weak_view_logits(&net, &images, false), weak_view_logits(&net, &mirrors, false));
        assert!(
            !plain.0.log_softmax(-1, Kind::Float).allclose(&plain.1.log_softmax(-1, Kind::Float), 1e-4, 1e-4, false),
            "the model tells mirror images apart"
        );
        let (a, b) = (weak_view_logits(&net, &images, true), weak_view_logits(&net, &mirrors, true));
        assert!(a.allclose(&b, 1e-5, 1e-5, false), "{a} != {b}");
        // Each row is the mean of the two views' log-probabilities.
        let expected = (plain.0.log_softmax(-1, Kind::Float) + plain.1.log_softmax(-1, Kind::Float)) / 2.0;
        assert!(a.allclose(&expected, 1e-5, 1e-5, false));
        assert!(!a.requires_grad(), "labels carry no gradient");
    }

    #[test]
    fn soft_targets_are_the_sharpened_debiased_distribution_and_their_loss_matches_by_hand() {
        // Prior (0.5, 0.5), τ = 1: the debiased logits are z + ln 2, so softmax(z/T)
        // itself. z_w = (ln 3, 0) → p = (0.75, 0.25); T = 0.5 squares it: (9, 1)/10.
        let params = OnlineParams { temperature: 0.5, ..PARAMS };
        let weak = Tensor::from_slice(&[3f32.ln(), 0.0]).view([1, 2]);
        let targets = OnlineLabeller::new(params, 2, &[0.5, 0.5], None).label(&weak, &mut Single).expect("label");
        let soft: Vec<f32> = Vec::<f32>::try_from(&targets.soft.as_ref().expect("soft targets").view([-1])).expect("soft");
        assert!((soft[0] - 0.9).abs() < 1e-5 && (soft[1] - 0.1).abs() < 1e-5, "{soft:?}");
        assert_eq!(Vec::<i64>::try_from(&targets.labels).expect("labels"), [0], "the label stays the argmax");
        // z_s = (0, 0) plus the margin ln(0.5) on both: log softmax = (ln 0.5, ln 0.5), so the
        // loss is −(0.9 + 0.1)·ln 0.5 = ln 2 (0.75 passes the 0.5 threshold: mask 1).
        let strong = Tensor::from_slice(&[0.0f32, 0.0]).view([1, 2]);
        let loss = consistency_loss(&strong, &targets).double_value(&[]);
        assert!((loss - 2f64.ln()).abs() < 1e-5, "loss {loss}");
        // z_s = (ln 9, 0): log softmax = (ln 0.9, ln 0.1): the loss is the targets' entropy,
        // lower than the hard label's CE would leave for the 10% it puts on class 1.
        let strong = Tensor::from_slice(&[9f32.ln(), 0.0]).view([1, 2]);
        let loss = consistency_loss(&strong, &targets).double_value(&[]);
        let entropy = -(0.9 * 0.9f64.ln() + 0.1 * 0.1f64.ln());
        assert!((loss - entropy).abs() < 1e-5, "loss {loss}, entropy {entropy}");
        // Without a temperature the targets are hard.
        let hard = OnlineLabeller::new(PARAMS, 2, &[0.5, 0.5], None).label(&weak, &mut Single).expect("label");
        assert!(hard.soft.is_none());
        let loss = consistency_loss(&strong, &hard).double_value(&[]);
        assert!((loss + 0.9f64.ln()).abs() < 1e-5, "hard loss {loss}");
    }
}
