//! What a worker reports is checked against what the job can produce before it changes
//! the job (docs/design.md §2, Reports): every number finite and in its range, epochs
//! within the plan, files inside the job's own directory. A report that fails a check is
//! refused, and its task fails with the check's words: the store never holds a value it
//! cannot read back (serde_json writes NaN as `null`), and no job shows what it did not
//! train.

use std::path::{Component, Path};

use feral_common::metrics::MetricsSummary;
use feral_common::task::{EpochReport, TaskOutcome};

use super::JobRecord;

/// The most unlabelled shards a dataset may list (a prepare report with more is refused).
pub const MAX_SHARDS: usize = 65_536;

impl JobRecord {
    /// Whether `epoch` (of `epochs_total`) could be this job's: the error says which field is not.
    pub fn check_progress(&self, epoch: &EpochReport, epochs_total: u32) -> Result<(), String> {
        let planned = self.spec.train.epochs;
        if epochs_total == 0 || epochs_total > planned {
            return Err(format!("epochs_total {epochs_total} outside 1..={planned}, the epochs the job plans a round"));
        }
        if epoch.epoch == 0 || epoch.epoch > planned {
            return Err(format!("epoch {} outside 1..={planned}", epoch.epoch));
        }
        if !epoch.train_loss.is_finite() {
            return Err(format!("a non-finite training loss ({}) in epoch {}: training diverged", epoch.train_loss, epoch.epoch));
        }
        if !(epoch.train_accuracy.is_finite() && (0.0..=1.0).contains(&epoch.train_accuracy)) {
            return Err(format!("train_accuracy {} is not in [0, 1]", epoch.train_accuracy));
        }
        for (name, value) in [("seconds", epoch.seconds), ("images_per_second", epoch.images_per_second)] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(format!("{name} {value} is not a finite number of at least 0"));
            }
        }
        self.check_metrics("validation", &epoch.validation)
    }

    /// Whether `outcome` could be this job's: metrics in range, files in its directory,
    /// shards that are plain file names.
    pub fn check_outcome(&self, outcome: &TaskOutcome) -> Result<(), String> {
        match outcome {
            TaskOutcome::Prepared(summary) => {
                if summary.class_names.is_empty() {
                    return Err("a dataset without classes".to_owned());
                }
                if summary.unlabeled_shards.len() > MAX_SHARDS {
                    return Err(format!("{} unlabelled shards, more than {MAX_SHARDS}", summary.unlabeled_shards.len()));
                }
                let mut seen = std::collections::HashSet::new();
                for shard in &summary.unlabeled_shards {
                    let plain = Path::new(&shard.file).components().collect::<Vec<_>>();
                    if !matches!(plain.as_slice(), [Component::Normal(_)]) || !shard.file.ends_with(".safetensors") {
                        return Err(format!("unlabelled shard {:?} is not a shard file name of the dataset", shard.file));
                    }
                    if !seen.insert(&shard.file) {
                        return Err(format!("unlabelled shard {:?} listed twice", shard.file));
                    }
                }
                Ok(())
            }
            TaskOutcome::Trained(model) => {
                self.check_metrics("validation", &model.validation)?;
                for (name, metrics) in [("test", &model.test), ("frame_validation", &model.frame_validation)] {
                    if let Some(metrics) = metrics {
                        self.check_metrics(name, metrics)?;
                    }
                }
                self.check_path("model_path", &model.model_path)
            }
            TaskOutcome::Inferred(partial) => {
                if let Some(bad) = partial.probability_sums.iter().find(|s| !(s.is_finite() && **s >= 0.0)) {
                    return Err(format!("probability sum {bad} is not a finite number of at least 0"));
                }
                self.check_path("predictions_file", &partial.predictions_file)
            }
            TaskOutcome::Selected(selection) => {
                if let Some(bad) = selection.thresholds.iter().find(|t| !(t.is_finite() && (0.0..=1.0).contains(*t))) {
                    return Err(format!("threshold {bad} is not in [0, 1]"));
                }
                self.check_path("selection_file", &selection.selection_file)
            }
        }
    }

    fn check_metrics(&self, name: &str, metrics: &MetricsSummary) -> Result<(), String> {
        let classes = self.dataset.as_ref().map(|d| d.class_names.len());
        metrics.check(classes).map_err(|problem| format!("{name} metrics: {problem}"))
    }

    /// A file the job wrote: under its artifact directory, with no `..` on the way.
    fn check_path(&self, name: &str, path: &str) -> Result<(), String> {
        let path = Path::new(path);
        let inside = path.starts_with(&self.artifact_dir) && path.components().all(|c| !matches!(c, Component::ParentDir));
        if inside {
            Ok(())
        } else {
            Err(format!("{name} {} outside the job's directory {}", path.display(), self.artifact_dir.display()))
        }
    }
}
