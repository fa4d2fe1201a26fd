//! The pure math of Feral's semi-supervised method (docs/design.md §1): the exact class
//! prior assembled from workers' partial sums, DebiasPL's debiased pseudo-labels and
//! adaptive-margin logits (Wang et al., "Debiased Learning from Naturally Imbalanced
//! Pseudo-Labels", CVPR 2022), FlexMatch-style class-aware thresholds with a per-class cap,
//! the per-class-F1 feedback that reweights class sampling, pseudo-label precision, and the
//! best-round / early-stopping rules. No I/O and no tensors: the coordinator and the workers
//! call these functions, and every formula here is the one the design states.

/// Smallest prior probability used inside a logarithm, so a class never seen gives a large
/// but finite shift instead of infinity.
pub const PRIOR_FLOOR: f64 = 1e-12;

/// Default ε of the feedback weights (1 − F1_c + ε)^γ.
pub const DEFAULT_FEEDBACK_EPSILON: f64 = 1e-3;

/// Why partial sums could not be combined into a class prior.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MethodError {
    #[error("partial sums come from {sums} workers but counts from {counts}")]
    WorkerCountMismatch { sums: usize, counts: usize },
    #[error("partial sums of worker {worker} have {found} classes, expected {expected}")]
    ClassCountMismatch { worker: usize, expected: usize, found: usize },
    #[error("total sample count is 0, the class prior is undefined")]
    NoSamples,
}

/// Constants of docs/design.md §1 (the job spec carries them; this is the math's view).
#[derive(Clone, Debug, PartialEq)]
pub struct SelectionParams {
    /// Confidence t that counts a prediction as confident and is the highest class threshold.
    pub threshold: f64,
    /// Lowest class threshold t_min.
    pub min_threshold: f64,
    /// cap = ceil(cap_factor × median kept count per class); `<= 0` disables the cap.
    pub cap_factor: f64,
}

impl Default for SelectionParams {
    fn default() -> Self {
        Self { threshold: 0.95, min_threshold: 0.5, cap_factor: 4.0 }
    }
}

/// Exact class prior from partial sums: p̂_c = (Σ_workers sums_c) / (Σ_workers counts),
/// where each worker sends Σ_i p_i,c over its samples and its sample count.
pub fn class_prior(partial_sums: &[Vec<f64>], counts: &[u64]) -> Result<Vec<f64>, MethodError> {
    if partial_sums.len() != counts.len() {
        return Err(MethodError::WorkerCountMismatch { sums: partial_sums.len(), counts: counts.len() });
    }
    let total: u64 = counts.iter().fold(0u64, |sum, &count| sum.saturating_add(count));
    if total == 0 {
        return Err(MethodError::NoSamples);
    }
    let classes = partial_sums.first().map_or(0, Vec::len);
    let mut prior = vec![0.0; classes];
    for (worker, sums) in partial_sums.iter().enumerate() {
        if sums.len() != classes {
            return Err(MethodError::ClassCountMismatch { worker, expected: classes, found: sums.len() });
        }
        prior.iter_mut().zip(sums).for_each(|(acc, sum)| *acc += sum);
    }
    prior.iter_mut().for_each(|p| *p /= total as f64);
    Ok(prior)
}

/// Softmax of one logit row, p_c = exp(z_c − max z) / Σ_k exp(z_k − max z). An empty row
/// gives an empty vector; when the maximum is infinite (+∞ entries, or a row of only −∞)
/// the entries equal to it share the mass equally.
pub fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max.is_infinite() {
        let tied = logits.iter().filter(|&&z| z == max).count() as f64;
        return logits.iter().map(|&z| if z == max { 1.0 / tied } else { 0.0 }).collect();
    }
    let exps: Vec<f64> = logits.iter().map(|&z| (z - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// ln(max(p̂_c, 1e-12)); a class missing from the prior counts as uniform (1/C), which
/// shifts every such class equally.
fn log_prior(prior: &[f64], class: usize, classes: usize) -> f64 {
    prior.get(class).copied().unwrap_or(1.0 / classes as f64).max(PRIOR_FLOOR).ln()
}

/// Index of the largest value (first of equals); NaN never wins over a number.
fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (index, &value) in values.iter().enumerate() {
        if values[best].is_nan() || value > values[best] {
            best = index;
        }
    }
    best
}

/// DebiasPL pseudo-label: debiased logits z̃_c = z_c − τ·ln p̂_c (p̂ clamped to >= 1e-12);
/// returns (ŷ = argmax_c z̃_c, confidence = max_c softmax(z̃)_c). An empty row gives (0, 0.0).
pub fn debiased_label(logits: &[f64], prior: &[f64], tau: f64) -> (usize, f64) {
    if logits.is_empty() {
        return (0, 0.0);
    }
    let probabilities = debiased_probabilities(logits, prior, tau);
    let class = argmax(&probabilities);
    (class, probabilities[class])
}

/// softmax(z − τ·ln p̂): the debiased class probabilities of one logit row.
pub fn debiased_probabilities(logits: &[f64], prior: &[f64], tau: f64) -> Vec<f64> {
    // z − τ·ln p̂ is the margin adjustment with −τ.
    softmax(&margin_adjusted_logits(logits, prior, -tau))
}

/// Per-class thresholds t_c = max(t_min, t · p̃_c / max_k p̃_k), where p̃ counts per class
/// the predictions with confidence >= t. If no prediction reaches t, every t_c = t_min:
/// the limit of the formula, where a class with p̃_c = 0 gets t_min whatever the others
/// have (a weak first teacher still yields pseudo-labels; the cap bounds how many).
pub fn class_thresholds(confident_counts: &[u64], params: &SelectionParams) -> Vec<f64> {
    let shares: Vec<f64> = confident_counts.iter().map(|&count| count as f64).collect();
    thresholds_from_shares(&shares, params.threshold, params.min_threshold)
}

/// The class-aware thresholds from per-class confident shares (counts or fractions alike):
/// t_c = max(t_min, t · s_c / max_k s_k); every t_c = t_min when no share is positive.
/// Non-finite or negative shares count as 0.
pub fn thresholds_from_shares(shares: &[f64], threshold: f64, min_threshold: f64) -> Vec<f64> {
    let clean = |s: f64| if s.is_finite() { s.max(0.0) } else { 0.0 };
    let most = shares.iter().copied().map(clean).fold(0.0, f64::max);
    if most <= 0.0 {
        return vec![min_threshold; shares.len()];
    }
    shares.iter().map(|&s| min_threshold.max(threshold * clean(s) / most)).collect()
}

/// One step of an online estimate: `m·state + (1 − m)·observed`, element by element (the
/// online prior q̂ of DebiasPL, and the confident shares behind online thresholds). An
/// `observed` of another length leaves the state as it is.
pub fn momentum_update(state: &mut [f64], observed: &[f64], momentum: f64) {
    if state.len() != observed.len() {
        return;
    }
    for (value, seen) in state.iter_mut().zip(observed) {
        *value = momentum * *value + (1.0 - momentum) * seen;
    }
}

/// One candidate pseudo-label.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub index: usize,
    pub class: usize,
    pub confidence: f64,
}

/// The selection result.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    /// Kept candidates, sorted by index.
    pub selected: Vec<Candidate>,
    pub thresholds: Vec<f64>,
    /// p̃: per class, candidates with confidence >= t.
    pub confident_counts: Vec<u64>,
    /// Kept candidates per class, after the cap.
    pub selected_per_class: Vec<u64>,
    pub cap: Option<u64>,
}

/// Median of counts (mean of the two middle values for an even length; 0 when empty).
fn median(counts: &[u64]) -> f64 {
    let mut sorted = counts.to_vec();
    sorted.sort_unstable();
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2] as f64,
        n => (sorted[n / 2 - 1] as f64 + sorted[n / 2] as f64) / 2.0,
    }
}

/// Class-aware selection over all candidates of the pool:
/// 1. p̃_c = #{candidates of class c with confidence >= t};
/// 2. t_c from [`class_thresholds`]; keep candidates with confidence >= t_class;
/// 3. cap = ceil(cap_factor × median_c kept_c) (median over all classes, zeros included;
///    applies whenever cap_factor > 0: when fewer than half the classes have a candidate,
///    the median is 0 and nothing is selected, since any selection would let a few classes
///    flood the pool, which is how a weak teacher collapses its student); each class keeps its `cap` most
///    confident candidates, ties broken by lower index.
///
/// Candidates whose class is not below `classes`, or whose confidence is NaN, are never kept.
pub fn select(candidates: &[Candidate], classes: usize, params: &SelectionParams) -> Selection {
    let valid = candidates.iter().filter(|c| c.class < classes);
    let mut confident_counts = vec![0u64; classes];
    for candidate in valid.clone().filter(|c| c.confidence >= params.threshold) {
        confident_counts[candidate.class] += 1;
    }
    let thresholds = class_thresholds(&confident_counts, params);
    let mut kept_by_class: Vec<Vec<Candidate>> = vec![Vec::new(); classes];
    for candidate in valid.filter(|c| c.confidence >= thresholds[c.class]) {
        kept_by_class[candidate.class].push(*candidate);
    }
    let kept_counts: Vec<u64> = kept_by_class.iter().map(|kept| kept.len() as u64).collect();
    let median_kept = median(&kept_counts);
    let cap = (params.cap_factor > 0.0).then(|| (params.cap_factor * median_kept).ceil() as u64);
    let mut selected = Vec::new();
    let mut selected_per_class = vec![0u64; classes];
    for (class, mut kept) in kept_by_class.into_iter().enumerate() {
        kept.sort_by(|a, b| b.confidence.total_cmp(&a.confidence).then(a.index.cmp(&b.index)));
        kept.truncate(cap.map_or(usize::MAX, |cap| usize::try_from(cap).unwrap_or(usize::MAX)));
        selected_per_class[class] = kept.len() as u64;
        selected.extend(kept);
    }
    selected.sort_by_key(|candidate| candidate.index);
    Selection { selected, thresholds, confident_counts, selected_per_class, cap }
}

/// Feedback sampling weights from per-class validation F1: w_c = (1 − F1_c + ε)^γ / Σ_k
/// (1 − F1_k + ε)^γ and s_c = (1 − λ)/C + λ·w_c, so Σ s_c = 1.
/// F1 is clamped to [0, 1] (a non-finite F1 counts as 0) and λ to [0, 1]; if every w is 0
/// the w are taken uniform. An empty input gives an empty vector.
pub fn feedback_weights(per_class_f1: &[f64], lambda: f64, gamma: f64, epsilon: f64) -> Vec<f64> {
    let classes = per_class_f1.len() as f64;
    let lambda = if lambda.is_nan() { 0.0 } else { lambda.clamp(0.0, 1.0) };
    let raw: Vec<f64> = per_class_f1
        .iter()
        .map(|&f1| {
            let f1 = if f1.is_finite() { f1.clamp(0.0, 1.0) } else { 0.0 };
            (1.0 - f1 + epsilon).max(0.0).powf(gamma)
        })
        .collect();
    let sum: f64 = raw.iter().sum();
    raw.iter()
        .map(|&w| {
            let normalised = if sum > 0.0 && sum.is_finite() { w / sum } else { 1.0 / classes };
            (1.0 - lambda) / classes + lambda * normalised
        })
        .collect()
}

/// DebiasPL adaptive margin for the student's pseudo-label loss CE(z + τ·ln p̂, ŷ): returns
/// z_c + τ·ln max(p̂_c, 1e-12) for one row (frequent classes get a larger logit, so the loss
/// demands a wider margin for rare pseudo-labels).
pub fn margin_adjusted_logits(logits: &[f64], prior: &[f64], tau: f64) -> Vec<f64> {
    logits.iter().enumerate().map(|(class, &z)| z + tau * log_prior(prior, class, logits.len())).collect()
}

/// The class frequencies π of `counts` with one extra sample per class (so no class is
/// impossible): (n_c + 1) / (N + C).
pub fn smoothed_frequencies(counts: &[u64]) -> Vec<f64> {
    let total = counts.iter().sum::<u64>() as f64 + counts.len() as f64;
    counts.iter().map(|&n| (n as f64 + 1.0) / total).collect()
}

/// The prior that debiases toward `target` instead of toward uniform: p̂_c / π_c, so that
/// z − τ·ln(p̂_c/π_c) moves the labels' distribution from p̂ to π (distribution
/// alignment) and z + τ·ln(p̂_c/π_c) is the margin that goes with it. Its scale does not
/// matter: a constant shift of every logit changes no softmax. A `target` of another
/// length leaves `prior` as it is.
pub fn prior_toward(prior: &[f64], target: &[f64]) -> Vec<f64> {
    if target.len() != prior.len() {
        return prior.to_vec();
    }
    prior.iter().zip(target).map(|(p, t)| p.max(PRIOR_FLOOR) / t.max(PRIOR_FLOOR)).collect()
}

/// Precision of pseudo-labels against hidden true labels where known: returns
/// (correct, counted), counting a candidate only when `hidden_labels[index] >= 0`.
pub fn pseudo_label_precision(selected: &[Candidate], hidden_labels: &[i64]) -> (u64, u64) {
    selected.iter().fold((0, 0), |(correct, counted), candidate| match hidden_labels.get(candidate.index) {
        Some(&truth) if truth >= 0 => (correct + u64::from(truth as u64 == candidate.class as u64), counted + 1),
        _ => (correct, counted),
    })
}

/// Index of the best round by macro-F1 (first of equals; NaN rounds never count); `None`
/// when there is no round with a number.
pub fn best_round(macro_f1_by_round: &[f64]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (round, &f1) in macro_f1_by_round.iter().enumerate() {
        if !f1.is_nan() && best.is_none_or(|b| f1 > macro_f1_by_round[b]) {
            best = Some(round);
        }
    }
    best
}

/// Early stopping: true when there are more than `patience` rounds and none of the last
/// `patience` rounds beats (strictly) the best macro-F1 of the rounds before them.
/// `patience == 0` disables early stopping.
pub fn should_stop(macro_f1_by_round: &[f64], patience: usize) -> bool {
    if patience == 0 || macro_f1_by_round.len() <= patience {
        return false;
    }
    let (before, recent) = macro_f1_by_round.split_at(macro_f1_by_round.len() - patience);
    let best_before = before.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    !recent.iter().any(|&f1| f1 > best_before)
}

/// What a round's selection task reports: per-class counts and thresholds, how many of the
/// pool were selected, their precision against hidden labels where known, and the file
/// holding the pseudo-labels. The worker sends it, the coordinator keeps it in the round.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SelectionSummary {
    pub selected_per_class: Vec<u64>,
    pub thresholds: Vec<f64>,
    pub confident_per_class: Vec<u64>,
    pub selected: u64,
    pub pool: u64,
    pub correct: u64,
    pub with_hidden_label: u64,
    pub selection_file: String,
    pub cap: u64,
}

impl SelectionSummary {
    /// Precision of the selected pseudo-labels where true labels are known.
    pub fn precision(&self) -> Option<f64> {
        (self.with_hidden_label > 0).then(|| self.correct as f64 / self.with_hidden_label as f64)
    }
}

/// What a student round's online labeller did: pool samples labelled, how many passed the
/// thresholds, and of those with a hidden true label how many were right. The worker
/// counts, the coordinator keeps it in the round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MaskAudit {
    pub seen: u64,
    pub masked_in: u64,
    pub with_hidden_label: u64,
    pub correct: u64,
}

impl MaskAudit {
    /// The share of labelled pool samples that passed the thresholds.
    pub fn rate(&self) -> f64 {
        self.masked_in as f64 / self.seen.max(1) as f64
    }

    /// Precision of the passed labels where true labels are known.
    pub fn precision(&self) -> Option<f64> {
        (self.with_hidden_label > 0).then(|| self.correct as f64 / self.with_hidden_label as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn assert_near(got: &[f64], expected: &[f64], tolerance: f64) {
        let near = got.iter().zip(expected).all(|(g, e)| (g - e).abs() < tolerance);
        assert!(near && got.len() == expected.len(), "{got:?} != {expected:?}");
    }

    fn candidate(index: usize, class: usize, confidence: f64) -> Candidate {
        Candidate { index, class, confidence }
    }

    #[test]
    fn debiasing_toward_a_target_aligns_labels_with_it() {
        // Counts (7, 1) smoothed: (8/10, 2/10).
        assert_near(&smoothed_frequencies(&[7, 1]), &[0.8, 0.2], 1e-12);
        assert_near(&smoothed_frequencies(&[0, 0]), &[0.5, 0.5], 1e-12);
        // p̂ = (0.5, 0.5), π = (0.8, 0.2): p̂/π = (0.625, 2.5).
        let prior = prior_toward(&[0.5, 0.5], &[0.8, 0.2]);
        assert_near(&prior, &[0.625, 2.5], 1e-12);
        // Logits (0, 0.5): toward uniform class 1 wins; toward π, with τ = 1, class 0 does
        // (0 − ln 0.625 = 0.470 against 0.5 − ln 2.5 = −0.416).
        assert_eq!(debiased_label(&[0.0, 0.5], &[0.5, 0.5], 1.0).0, 1);
        let (class, confidence) = debiased_label(&[0.0, 0.5], &prior, 1.0);
        assert_eq!(class, 0);
        assert!((confidence - 1.0 / (1.0 + (-0.886_294f64).exp())).abs() < 1e-5, "{confidence}");
        // A target of the wrong length changes nothing.
        assert_eq!(prior_toward(&[0.5, 0.5], &[1.0]), [0.5, 0.5]);
    }

    #[test]
    fn prior_from_two_workers_equals_prior_over_all_samples() {
        let rows = vec![vec![0.7, 0.2, 0.1], vec![0.1, 0.8, 0.1], vec![0.4, 0.4, 0.2]];
        // Worker A holds rows 0 and 1: sums [0.8, 1.0, 0.2], count 2. Worker B row 2, count 1.
        // Total [1.2, 1.4, 0.4] / 3 = [0.4, 0.466667, 0.133333].
        let prior = class_prior(&[vec![0.8, 1.0, 0.2], vec![0.4, 0.4, 0.2]], &[2, 1]).expect("prior");
        assert_near(&prior, &[0.4, 1.4 / 3.0, 0.4 / 3.0], 1e-12);
        let all_at_once: Vec<f64> = partial_sums(&rows, 3).iter().map(|sum| sum / 3.0).collect();
        assert_near(&prior, &all_at_once, 1e-12);
    }

    #[test]
    fn prior_rejects_mismatched_or_empty_inputs() {
        assert_eq!(class_prior(&[vec![1.0]], &[1, 2]), Err(MethodError::WorkerCountMismatch { sums: 1, counts: 2 }));
        assert_eq!(class_prior(&[vec![1.0, 0.0], vec![1.0]], &[1, 1]), Err(MethodError::ClassCountMismatch { worker: 1, expected: 2, found: 1 }));
        assert_eq!(class_prior(&[vec![0.0, 0.0]], &[0]), Err(MethodError::NoSamples));
        assert_eq!(class_prior(&[], &[]), Err(MethodError::NoSamples));
    }

    #[test]
    fn softmax_is_stable_and_handles_edges() {
        // softmax([1000, 1000 + ln 3]) = [1/4, 3/4] without overflow.
        assert_near(&softmax(&[1000.0, 1000.0 + 3f64.ln()]), &[0.25, 0.75], 1e-12);
        assert!(softmax(&[]).is_empty());
        assert_eq!(softmax(&[f64::NEG_INFINITY; 2]), vec![0.5, 0.5]);
        assert_eq!(softmax(&[f64::INFINITY, 0.0]), vec![1.0, 0.0]);
    }

    #[test]
    fn debiasing_flips_the_argmax_toward_a_rare_class_and_margins_go_the_other_way() {
        // z = [2.0, 1.5], p̂ = [0.9, 0.1], τ = 0.4:
        // z̃0 = 2.0 − 0.4·ln 0.9 = 2.0 + 0.4·0.1053605 = 2.0421442
        // z̃1 = 1.5 − 0.4·ln 0.1 = 1.5 + 0.4·2.3025851 = 2.4210340
        // class 1 wins; confidence = 1 / (1 + e^(2.0421442 − 2.4210340)) = 0.5936053.
        let (class, confidence) = debiased_label(&[2.0, 1.5], &[0.9, 0.1], 0.4);
        assert_eq!(class, 1);
        assert!((confidence - 0.5936053).abs() < 1e-6, "{confidence}");
        // Without debiasing (τ = 0) class 0 wins with 1 / (1 + e^−0.5) = 0.6224593.
        let (class, confidence) = debiased_label(&[2.0, 1.5], &[0.9, 0.1], 0.0);
        assert_eq!(class, 0);
        assert!((confidence - 0.6224593).abs() < 1e-6, "{confidence}");
        assert_eq!(debiased_label(&[], &[], 0.4), (0, 0.0));
        // Student margin: z + τ·ln p̂ with p̂ floored at 1e-12:
        // [2 + 0.4·ln 0.9, 1.5 + 0.4·ln 0.1] = [1.9578558, 0.5789660]; p̂ = 0 → 0.4·ln 1e-12.
        let adjusted = margin_adjusted_logits(&[2.0, 1.5, 0.0], &[0.9, 0.1, 0.0], 0.4);
        assert_near(&adjusted, &[1.9578558, 0.5789660, 0.4 * 1e-12f64.ln()], 1e-6);
    }

    #[test]
    fn thresholds_scale_with_the_confident_histogram() {
        // max = 10: [0.95·10/10, 0.95·5/10 = 0.475 → 0.5, 0 → 0.5].
        let params = SelectionParams::default();
        assert_eq!(class_thresholds(&[10, 5, 0], &params), vec![0.95, 0.5, 0.5]);
        // 0.95·8/10 = 0.76 stays above t_min.
        assert_near(&class_thresholds(&[10, 8], &params), &[0.95, 0.76], 1e-12);
        assert_eq!(class_thresholds(&[0, 0], &params), vec![0.5, 0.5]);
        assert!(class_thresholds(&[], &params).is_empty());
        // Shares as fractions: t = 0.8, t_min = 0.7; shares 0.4, 0.3, 0.05 -> 0.8, 0.7 (0.6
        // floored), 0.7 (0.1 floored).
        assert_near(&thresholds_from_shares(&[0.4, 0.35, 0.05], 0.8, 0.7), &[0.8, 0.7, 0.7], 1e-12);
        assert_near(&thresholds_from_shares(&[0.4, 0.36, f64::NAN], 0.8, 0.5), &[0.8, 0.72, 0.5], 1e-12);
        assert_eq!(thresholds_from_shares(&[0.0, -1.0], 0.8, 0.6), vec![0.6, 0.6]);
    }

    #[test]
    fn momentum_update_moves_towards_what_is_observed() {
        // q = 0.9·[0.5, 0.3, 0.2] + 0.1·[0.1, 0.1, 0.8] = [0.46, 0.28, 0.26].
        let mut prior = vec![0.5, 0.3, 0.2];
        momentum_update(&mut prior, &[0.1, 0.1, 0.8], 0.9);
        assert_near(&prior, &[0.46, 0.28, 0.26], 1e-12);
        assert!((prior.iter().sum::<f64>() - 1.0).abs() < 1e-12, "a distribution stays one");
        momentum_update(&mut prior, &[1.0], 0.5);
        assert_near(&prior, &[0.46, 0.28, 0.26], 1e-12);
    }

    #[test]
    fn cap_stops_one_class_from_flooding() {
        // Class 0: 20 candidates (index i, confidence 0.96 + 0.0015·i); class 1: three at 0.97;
        // class 2: two at 0.6 (below t); class 3: one at 0.4 (below t_min).
        let mut candidates: Vec<Candidate> = (0..20).map(|i| candidate(i, 0, 0.96 + 0.0015 * i as f64)).collect();
        candidates.extend([candidate(20, 1, 0.97), candidate(21, 1, 0.97), candidate(22, 1, 0.97)]);
        candidates.extend([candidate(23, 2, 0.6), candidate(24, 2, 0.6), candidate(25, 3, 0.4)]);
        let selection = select(&candidates, 4, &SelectionParams::default());
        // p̃ = [20, 3, 0, 0]; t = [0.95, max(0.5, 0.95·3/20 = 0.1425), 0.5, 0.5].
        assert_eq!(selection.confident_counts, vec![20, 3, 0, 0]);
        assert_eq!(selection.thresholds, vec![0.95, 0.5, 0.5, 0.5]);
        // Kept [20, 3, 2, 0], sorted [0, 2, 3, 20]: median (2 + 3)/2 = 2.5, cap ⌈4·2.5⌉ = 10.
        assert_eq!(selection.cap, Some(10));
        assert_eq!(selection.selected_per_class, vec![10, 3, 2, 0]);
        // Class 0 keeps its ten most confident: indices 10..20.
        let indices: Vec<usize> = selection.selected.iter().map(|c| c.index).collect();
        assert_eq!(indices, (10..25).collect::<Vec<_>>());
    }

    #[test]
    fn cap_breaks_ties_by_lower_index_and_can_be_disabled() {
        // Kept [6, 1, 1] → median 1, cap ceil(1.5·1) = 2: class 0 keeps indices 0 and 1.
        let mut candidates: Vec<Candidate> = (0..6).rev().map(|i| candidate(i, 0, 0.99)).collect();
        candidates.extend([candidate(6, 1, 0.99), candidate(7, 2, 0.99), candidate(8, 7, 0.99)]);
        let params = SelectionParams { cap_factor: 1.5, ..SelectionParams::default() };
        let selection = select(&candidates, 3, &params);
        assert_eq!(selection.cap, Some(2));
        let indices: Vec<usize> = selection.selected.iter().map(|c| c.index).collect();
        assert_eq!(indices, vec![0, 1, 6, 7]);
        let uncapped = select(&candidates, 3, &SelectionParams { cap_factor: 0.0, ..params });
        assert_eq!((uncapped.cap, uncapped.selected.len()), (None, 8));
    }

    #[test]
    fn one_class_alone_cannot_flood_the_pool() {
        // Only class 2 of 4 has confident candidates: kept [0, 0, 5, 0], median 0, cap 0.
        let candidates: Vec<Candidate> = (0..5).map(|index| Candidate { index, class: 2, confidence: 0.99 }).collect();
        let selection = select(&candidates, 4, &SelectionParams::default());
        assert_eq!(selection.cap, Some(0));
        assert!(selection.selected.is_empty());
        assert_eq!(selection.selected_per_class, vec![0, 0, 0, 0]);
        assert_eq!(select(&candidates, 0, &SelectionParams::default()).selected, vec![]);
    }

    #[test]
    fn feedback_favours_classes_with_low_f1() {
        // F1 [0.9, 0.5, 0.1], ε = 1e-3, γ = 1: raw [0.101, 0.501, 0.901], sum 1.503;
        // s = 1/6 + 0.5·raw/1.503 = [0.2002661, 0.3333333, 0.4664005].
        let s = feedback_weights(&[0.9, 0.5, 0.1], 0.5, 1.0, DEFAULT_FEEDBACK_EPSILON);
        assert_near(&s, &[0.2002661, 0.3333333, 0.4664005], 1e-6);
        assert!((s.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // λ = 0 gives the uniform 1/3.
        let uniform = feedback_weights(&[0.9, 0.5, 0.1], 0.0, 1.0, 1e-3);
        assert_near(&uniform, &[1.0 / 3.0; 3], 1e-12);
        // Every F1 = 1 with ε = 0: all raw weights 0, so uniform.
        assert_eq!(feedback_weights(&[1.0, 1.0], 0.5, 1.0, 0.0), vec![0.5, 0.5]);
        assert!(feedback_weights(&[], 0.5, 1.0, 1e-3).is_empty());
    }

    #[test]
    fn precision_counts_only_known_labels() {
        // idx 0: truth 1 = class 1 (correct); idx 1: truth 0 ≠ 2 (wrong); idx 2: −1 (unknown);
        // idx 5: no label (not counted). Precision 1/2.
        let selected = [(0, 1), (1, 2), (2, 0), (5, 0)].map(|(i, c)| candidate(i, c, 0.9));
        assert_eq!(pseudo_label_precision(&selected, &[1, 0, -1]), (1, 2));
        assert_eq!(pseudo_label_precision(&[], &[]), (0, 0));
    }

    #[test]
    fn best_round_and_early_stopping() {
        assert_eq!(best_round(&[0.3, 0.5, 0.5, 0.4]), Some(1));
        assert_eq!(best_round(&[]), None);
        assert_eq!(best_round(&[f64::NAN, 0.2]), Some(1));
        let history = [0.5, 0.6, 0.55, 0.58];
        // patience 2: best before the last two is 0.6; 0.55 and 0.58 do not beat it → stop.
        assert!(should_stop(&history, 2));
        // patience 3: best before is 0.5; 0.6 beats it → continue.
        assert!(!should_stop(&history, 3));
        // Not enough rounds, or patience 0 → never stop.
        assert!(!should_stop(&history, 4) && !should_stop(&history, 0) && !should_stop(&[], 1));
        // An equal score is not an improvement.
        assert!(should_stop(&[0.5, 0.5], 1));
    }

    /// Softmax rows (2 to 7 classes, 1 to 9 rows) and where to split them between two workers.
    fn split_softmax_rows() -> impl Strategy<Value = (Vec<Vec<f64>>, usize)> {
        let logits = (2usize..8).prop_flat_map(|c| prop::collection::vec(prop::collection::vec(-20.0..20.0f64, c), 1..10));
        logits.prop_flat_map(|rows| {
            let len = rows.len();
            (Just(rows.iter().map(|row| softmax(row)).collect::<Vec<_>>()), 0..=len)
        })
    }

    /// Per-class sums of some softmax rows, as a worker sends them.
    fn partial_sums(rows: &[Vec<f64>], classes: usize) -> Vec<f64> {
        (0..classes).map(|c| rows.iter().map(|r| r[c]).sum()).collect()
    }

    proptest! {
        #[test]
        fn prior_of_softmax_rows_sums_to_one_and_ignores_the_split(
            (rows, split) in split_softmax_rows(),
        ) {
            let classes = rows[0].len();
            let (a, b) = rows.split_at(split);
            let sums = [partial_sums(a, classes), partial_sums(b, classes)];
            let split_prior = class_prior(&sums, &[a.len() as u64, b.len() as u64]).expect("prior");
            let whole_prior =
                class_prior(&[partial_sums(&rows, classes)], &[rows.len() as u64]).expect("prior");
            prop_assert!((split_prior.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            for (x, y) in split_prior.iter().zip(&whole_prior) {
                prop_assert!((x - y).abs() < 1e-9);
            }
        }

        #[test]
        fn feedback_weights_are_a_distribution(
            f1 in prop::collection::vec(0.0..=1.0f64, 2..10),
            lambda in 0.0..=1.0f64, gamma in 0.0..4.0f64, epsilon in 1e-3..0.1f64,
        ) {
            let s = feedback_weights(&f1, lambda, gamma, epsilon);
            prop_assert!(s.iter().all(|&w| w > 0.0 && w < 1.0), "{:?}", s);
            prop_assert!((s.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        }

        #[test]
        fn selection_respects_thresholds_and_cap(
            raw in prop::collection::vec((0usize..6, 0.3..=1.0f64), 0..80),
            classes in 1usize..6, cap_factor in -1.0..5.0f64,
        ) {
            let candidates: Vec<Candidate> =
                raw.iter().enumerate().map(|(i, &(c, p))| candidate(i, c, p)).collect();
            let params = SelectionParams { cap_factor, ..SelectionParams::default() };
            let selection = select(&candidates, classes, &params);
            let mut per_class = vec![0u64; classes];
            let thresholds = &selection.thresholds;
            let passes = |c: &Candidate| c.class < classes && c.confidence >= thresholds[c.class];
            for kept in &selection.selected {
                prop_assert!(passes(kept), "{:?} is below its class threshold", kept);
                per_class[kept.class] += 1;
            }
            prop_assert_eq!(&per_class, &selection.selected_per_class);
            if let Some(cap) = selection.cap {
                prop_assert!(per_class.iter().all(|&n| n <= cap));
            }
            prop_assert!(selection.selected.windows(2).all(|w| w[0].index < w[1].index));
            // Nothing confident enough for its class is dropped unless its class hit the cap.
            for c in candidates.iter().filter(|c| passes(c)) {
                let kept = selection.selected.iter().any(|s| s.index == c.index);
                prop_assert!(kept || selection.cap == Some(per_class[c.class]), "{:?} dropped", c);
            }
        }
    }
}
