//! Pseudo-labelling, step two: from every prediction of the round, the debiased labels
//! (DebiasPL: z − τ·log p̂ with the pool's prior p̂) and class-aware thresholds with a
//! per-class cap choose the pseudo-labels the student trains on. They are written to the
//! round's `selection.safetensors` (sample ids, labels, confidences, and the pool's mean
//! debiased confidence and class probabilities, which seed the student's online
//! thresholds).

use std::path::Path;

use feral_common::dataset::Dataset;
use feral_common::method::{self, Candidate, SelectionParams, SelectionSummary};
use feral_common::spec::DebiasTarget;
use tch::Tensor;

use crate::artifacts::{create_dir, named, read_tensors, write_atomically, ArtifactError};
use crate::error::TaskError;
use crate::selection;
use crate::task::TaskContext;

pub fn select(context: &TaskContext, prediction_files: &[String], prior: &[f64]) -> Result<SelectionSummary, TaskError> {
    let semi = &context.spec.semi_supervised;
    // Debiasing toward the labelled class frequencies π instead of uniform: p̂/π for p̂.
    // (The dataset is opened only then: a uniform target needs nothing from it.)
    let target = match semi.debias_toward {
        DebiasTarget::Uniform => None,
        DebiasTarget::Labelled => selection::labelled_frequencies(Dataset::open(&context.spec.dataset)?.manifest()),
    };
    let prior = target.map_or_else(|| prior.to_vec(), |target| method::prior_toward(prior, &target));
    let (mut candidates, mut hidden, mut sample_ids) = (Vec::new(), Vec::new(), Vec::new());
    let mut classes = 0;
    // Over the whole pool: Σ and Σ² of the max debiased probability and Σ of the debiased
    // probabilities, the exact start of the student's self-adaptive thresholds.
    let (mut confidence_sum, mut confidence_squares, mut probability_sums) = (0.0, 0.0, Vec::new());
    for file in prediction_files {
        let path = Path::new(file);
        let tensors = read_tensors(path, feral_common::files::MAX_TENSORS_BYTES, "prediction file")?;
        let logits = named(&tensors, "logits", path)?;
        let ids = Vec::<i64>::try_from(&named(&tensors, "sample_ids", path)?)?;
        let size = logits.size();
        let (rows, columns) = match size.as_slice() {
            [rows, columns] if *rows as usize == ids.len() => (*rows as usize, *columns as usize),
            _ => return Err(ArtifactError::corrupt(path, format!("`logits` has shape {size:?}")).into()),
        };
        classes = columns;
        let values = Vec::<f32>::try_from(&logits.reshape([-1]))?;
        let uniform = vec![1.0; columns];
        let (prior, tau) = if prior.len() == columns { (prior.as_slice(), semi.tau) } else { (uniform.as_slice(), 0.0) };
        probability_sums.resize(columns, 0.0);
        for (row, id) in values.chunks(columns).zip(&ids).take(rows) {
            let row: Vec<f64> = row.iter().map(|v| f64::from(*v)).collect();
            let (class, confidence) = method::debiased_label(&row, prior, tau);
            confidence_sum += confidence;
            confidence_squares += confidence * confidence;
            probability_sums.iter_mut().zip(method::debiased_probabilities(&row, prior, tau)).for_each(|(sum, p)| *sum += p);
            candidates.push(Candidate { index: sample_ids.len(), class, confidence });
            sample_ids.push(*id);
        }
        match tensors.iter().find(|(n, _)| n == "hidden_labels") {
            Some((_, labels)) => hidden.extend(Vec::<i64>::try_from(labels)?),
            None => hidden.extend(std::iter::repeat_n(-1, ids.len())),
        }
    }
    let params = SelectionParams { threshold: semi.threshold, min_threshold: semi.min_threshold, cap_factor: semi.cap_factor };
    let selection = method::select(&candidates, classes, &params);
    let (correct, with_hidden_label) = method::pseudo_label_precision(&selection.selected, &hidden);

    let pool = candidates.len().max(1) as f64;
    let round_dir = context.round_dir();
    create_dir(&round_dir)?;
    let selection_file = round_dir.join("selection.safetensors");
    let ids: Vec<i64> = selection.selected.iter().map(|c| sample_ids[c.index]).collect();
    let labels: Vec<i64> = selection.selected.iter().map(|c| c.class as i64).collect();
    let confidences: Vec<f32> = selection.selected.iter().map(|c| c.confidence as f32).collect();
    let tensors = [
        ("sample_ids", Tensor::from_slice(&ids)),
        ("labels", Tensor::from_slice(&labels)),
        ("confidences", Tensor::from_slice(&confidences)),
        // Seed the student's online self-adaptive thresholds.
        ("mean_confidence", Tensor::from_slice(&[confidence_sum / pool])),
        ("confidence_variance", Tensor::from_slice(&[(confidence_squares / pool - (confidence_sum / pool).powi(2)).max(0.0)])),
        ("mean_probabilities", Tensor::from_slice(&probability_sums.iter().map(|s| s / pool).collect::<Vec<f64>>())),
    ];
    write_atomically(&selection_file, |p| Tensor::write_safetensors(&tensors, p))?;
    Ok(SelectionSummary {
        selected_per_class: selection.selected_per_class,
        thresholds: selection.thresholds,
        confident_per_class: selection.confident_counts,
        selected: ids.len() as u64,
        pool: candidates.len() as u64,
        correct,
        with_hidden_label,
        selection_file: selection_file.display().to_string(),
        cap: selection.cap.unwrap_or(0),
    })
}
