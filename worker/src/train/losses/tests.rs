//! Every loss against a value computed by hand on two samples of three classes:
//! sample 1 has logits [2, 1, 0] and target 0, sample 2 logits [0, 0, 0] and target 2;
//! the class counts are [4, 2, 1].
//!
//! Shared arithmetic: e² = 7.3890561, e = 2.7182818, e² + e + 1 = 11.1073379, so
//! sample 1's −log p_0 = ln 11.1073379 − 2 = 0.40760596 and p_0 = 0.66524096; sample 2's
//! −log p_2 = ln 3 = 1.09861229.

use super::*;
use feral_common::spec::{LossKind, LossSpec};
use tch::{Device, Kind, Tensor};

const COUNTS: [u64; 3] = [4, 2, 1];

fn batch() -> (Tensor, Tensor) {
    let logits = Tensor::from_slice(&[2.0f32, 1.0, 0.0, 0.0, 0.0, 0.0]).view([2, 3]);
    (logits, Tensor::from_slice(&[0i64, 2]))
}

fn loss(spec: LossSpec) -> Loss {
    Loss::new(&spec, &COUNTS).expect("valid loss")
}

fn value(loss: &Loss, epoch: u32) -> f64 {
    let (logits, targets) = batch();
    loss.compute(&logits, &targets, epoch).double_value(&[])
}

fn assert_close(actual: f64, expected: f64) {
    assert!((actual - expected).abs() < 1e-6, "{actual} != {expected}");
}

fn random_batch(seed: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    let logits = Tensor::randn([16, 5], (Kind::Float, Device::Cpu)) * 3.0;
    (logits, Tensor::randint(5, [16], (Kind::Int64, Device::Cpu)))
}

#[test]
fn cross_entropy_by_hand() {
    // (0.40760596 + 1.09861229) / 2 = 0.75310913.
    assert_close(value(&loss(LossSpec::default()), 1), 0.753_109_13);
    // ε = 0.1: sample 1's −log p is [0.40760596, 1.40760596, 2.40760596], mean 1.40760596,
    // so 0.9·0.40760596 + 0.1·1.40760596 = 0.50760596; sample 2 is uniform and stays
    // ln 3. (0.50760596 + 1.09861229) / 2 = 0.80310913.
    let smoothed = loss(LossSpec { label_smoothing: 0.1, ..LossSpec::default() });
    assert_close(value(&smoothed, 1), 0.803_109_13);
    // The same as libtorch's own cross-entropy, which the training loop used before.
    let (logits, targets) = random_batch(1);
    let reference = logits.cross_entropy_loss::<Tensor>(&targets, None, tch::Reduction::Mean, -100, 0.1);
    let ours = Loss::new(&LossSpec { label_smoothing: 0.1, ..LossSpec::default() }, &[3; 5]).expect("valid loss");
    assert_close(ours.compute(&logits, &targets, 1).double_value(&[]), reference.double_value(&[]));
}

#[test]
fn weighted_cross_entropy_by_hand() {
    // β = 1: 1/n = [1/4, 1/2, 1], mean 7/12, so w = [3/7, 6/7, 12/7].
    let weights = inverse_frequency_weights(&COUNTS, 1.0);
    for (w, expected) in weights.iter().zip([3.0 / 7.0, 6.0 / 7.0, 12.0 / 7.0]) {
        assert_close(*w, expected);
    }
    // (3/7·0.40760596 + 12/7·1.09861229) / 2 = (0.17468827 + 1.88333536) / 2 = 1.02901181.
    let weighted = loss(LossSpec { kind: LossKind::WeightedCe, ..LossSpec::default() });
    assert_close(value(&weighted, 1), 1.029_011_81);
    // β = 0 weighs every class 1: plain cross-entropy.
    let flat = loss(LossSpec { kind: LossKind::WeightedCe, class_weight_beta: 0.0, ..LossSpec::default() });
    assert_close(value(&flat, 1), 0.753_109_13);
}

#[test]
fn focal_loss_by_hand() {
    // γ = 2: sample 1: (1 − 0.66524096)²·0.40760596 = 0.11206162·0.40760596 = 0.04567780;
    // sample 2: (2/3)²·ln 3 = 4/9·1.09861229 = 0.48827213. Mean 0.26697496.
    let focal = loss(LossSpec { kind: LossKind::Focal, ..LossSpec::default() });
    assert_close(value(&focal, 1), 0.266_974_96);
    // α = [0.25, 1, 2]: (0.25·0.04567780 + 2·0.48827213) / 2 = 0.49398185.
    let alpha = loss(LossSpec { kind: LossKind::Focal, focal_alpha: Some(vec![0.25, 1.0, 2.0]), ..LossSpec::default() });
    assert_close(value(&alpha, 1), 0.493_981_85);
}

#[test]
fn focal_loss_with_gamma_zero_is_cross_entropy() {
    let (logits, targets) = random_batch(2);
    let counts = [10, 5, 3, 2, 1];
    let focal = Loss::new(&LossSpec { kind: LossKind::Focal, focal_gamma: 0.0, ..LossSpec::default() }, &counts).expect("valid loss");
    let ce = Loss::new(&LossSpec::default(), &counts).expect("valid loss");
    assert_close(focal.compute(&logits, &targets, 1).double_value(&[]), ce.compute(&logits, &targets, 1).double_value(&[]));
}

#[test]
fn ldam_by_hand() {
    // Δ_c = 0.5·(n_min/n_c)^¼: [0.5/√2, 0.5/2^¼, 0.5] = [0.35355339, 0.42044821, 0.5].
    let margins = ldam_margins(&COUNTS, 0.5);
    for (m, expected) in margins.iter().zip([0.353_553_39, 0.420_448_21, 0.5]) {
        assert_close(*m, expected);
    }
    // s = 2. Sample 1: 2·[2 − 0.35355339, 1, 0] = [3.29289322, 2, 0]:
    // ln(e^3.29289322 + e² + 1) − 3.29289322 = ln(26.9213 + 7.3891 + 1) − 3.29289322 = 0.27126434.
    // Sample 2: 2·[0, 0, 0 − 0.5] = [0, 0, −1]: ln(1 + 1 + e^−1) + 1 = 0.86199480 + 1 = 1.86199480.
    // Mean (0.27126434 + 1.86199480) / 2 = 1.06662957.
    let ldam = loss(LossSpec { kind: LossKind::Ldam, ldam_scale: 2.0, ..LossSpec::default() });
    assert_close(value(&ldam, 1), 1.066_629_57);
    assert_close(value(&ldam, 50), 1.066_629_57);
    assert!(!ldam.reweights_at(50), "drw_epoch = 0 never re-weights");
}

#[test]
fn ldam_margins_shrink_as_classes_grow() {
    let margins = ldam_margins(&[5000, 1000, 200, 40, 8], 0.5);
    assert!(margins.windows(2).all(|pair| pair[0] < pair[1]), "{margins:?}");
    assert_close(margins[4], 0.5);
    // n^¼ scaling: 625 times the samples, a fifth of the margin.
    assert_close(ldam_margins(&[625, 1], 0.5)[0], 0.1);
}

#[test]
fn deferred_reweighting_switches_on_at_its_epoch() {
    // β = 0.5: (1 − β)/(1 − β^n) = [0.5/0.9375, 0.5/0.75, 0.5/0.5] = [8/15, 2/3, 1],
    // sum 33/15 = 2.2, so normalised to mean 1: [8/11, 10/11, 15/11].
    let weights = class_balanced_weights(&COUNTS, 0.5);
    for (w, expected) in weights.iter().zip([8.0 / 11.0, 10.0 / 11.0, 15.0 / 11.0]) {
        assert_close(*w, expected);
    }
    // From epoch 3: (8/11·0.27126434 + 15/11·1.86199480) / 2 = (0.19728316 + 2.53908382) / 2 = 1.36818349.
    let spec = LossSpec { kind: LossKind::Ldam, ldam_scale: 2.0, drw_epoch: 3, drw_beta: 0.5, ..LossSpec::default() };
    let ldam = loss(spec);
    assert_close(value(&ldam, 1), 1.066_629_57);
    assert_close(value(&ldam, 2), 1.066_629_57);
    assert!(!ldam.reweights_at(2) && ldam.reweights_at(3));
    assert_close(value(&ldam, 3), 1.368_183_49);
    assert_close(value(&ldam, 10), 1.368_183_49);
    // The default β = 0.9999 is close to inverse frequency on small counts: ≈ [3/7, 6/7, 12/7].
    let default_beta = class_balanced_weights(&COUNTS, 0.9999);
    assert!((default_beta[0] - 3.0 / 7.0).abs() < 1e-3 && (default_beta[2] - 12.0 / 7.0).abs() < 1e-3, "{default_beta:?}");
}

#[test]
fn logit_adjusted_by_hand() {
    // π = [4/7, 2/7, 1/7]; softmax(z + log π)_y = π_y·e^z_y / Σ_j π_j·e^z_j.
    // Sample 1: −ln(4e² / (4e² + 2e + 1)) = ln 35.99278851 − ln 29.55622440 = 0.19702423.
    // Sample 2: −ln(1 / (4 + 2 + 1)) = ln 7 = 1.94591015. Mean 1.07146719.
    let adjusted = loss(LossSpec { kind: LossKind::LogitAdjusted, ..LossSpec::default() });
    assert_close(value(&adjusted, 1), 1.071_467_19);
}

#[test]
fn logit_adjusted_with_tau_zero_is_cross_entropy() {
    let (logits, targets) = random_batch(3);
    let counts = [10, 5, 3, 2, 1];
    let adjusted = Loss::new(&LossSpec { kind: LossKind::LogitAdjusted, la_tau: 0.0, ..LossSpec::default() }, &counts).expect("valid loss");
    let ce = Loss::new(&LossSpec::default(), &counts).expect("valid loss");
    assert_close(adjusted.compute(&logits, &targets, 1).double_value(&[]), ce.compute(&logits, &targets, 1).double_value(&[]));
}

#[test]
fn every_loss_has_a_gradient() {
    let kinds = [LossKind::Ce, LossKind::WeightedCe, LossKind::Focal, LossKind::Ldam, LossKind::LogitAdjusted];
    for kind in kinds {
        let (logits, targets) = random_batch(4);
        let logits = logits.set_requires_grad(true);
        let spec = LossSpec { kind, drw_epoch: if kind == LossKind::Ldam { 1 } else { 0 }, ..LossSpec::default() };
        let loss = Loss::new(&spec, &[10, 5, 3, 2, 1]).expect("valid loss");
        loss.compute(&logits, &targets, 1).backward();
        let gradient = logits.grad();
        assert_eq!(gradient.isfinite().all().int64_value(&[]), 1, "{kind:?}");
        assert!(gradient.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{kind:?}");
    }
}

#[test]
fn counts_and_errors() {
    assert_eq!(class_counts(&[0, 2, 2, -1, 1, 2, 7], 3), [1, 1, 3]);
    assert_eq!(Loss::new(&LossSpec::default(), &[]).expect_err("no classes"), LossError::NoClasses);
    let alpha = LossSpec { kind: LossKind::Focal, focal_alpha: Some(vec![1.0, 2.0]), ..LossSpec::default() };
    let error = Loss::new(&alpha, &COUNTS).expect_err("two weights for three classes");
    assert_eq!(error, LossError::AlphaLength { given: 2, classes: 3 });
    assert!(error.to_string().contains("train.loss.focal_alpha"));
    // A class without samples gets finite weights, margins and priors.
    for values in [inverse_frequency_weights(&[5, 0], 1.0), class_balanced_weights(&[5, 0], 0.9999), ldam_margins(&[5, 0], 0.5), log_priors(&[5, 0])] {
        assert!(values.iter().all(|v| v.is_finite()), "{values:?}");
    }
}
