//! What a worker reports is checked against what the job can produce before it changes
//! the job (docs/design.md §2, Reports): every number finite and in its range, epochs
//! within the plan, files inside the job's own directory. A report that fails a check is
//! refused, and its task fails with the check's words: the store never holds a value it
//! cannot read back (serde_json writes NaN as `null`), and no job shows what it did not
//! train. (Here too: [`ResumeError`], why [`JobRecord::resumed`] refuses a job.)

use std::path::{Component, Path, PathBuf};

use feral_common::ids::JobId;
use feral_common::metrics::{MetricsError, MetricsSummary};
use feral_common::task::{EpochReport, TaskOutcome};

use super::JobRecord;

/// The most unlabelled shards a dataset may list (a prepare report with more is refused).
pub const MAX_SHARDS: usize = 65_536;

/// The range a reported number must be in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// Finite and in `[0, 1]`: a rate or a threshold.
    Unit,
    /// Finite and at least 0: a duration, a speed, a sum of probabilities.
    NonNegative,
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Bound::Unit => "in [0, 1]",
            Bound::NonNegative => "a finite number of at least 0",
        })
    }
}

/// Why a worker's report cannot be the job's: each names the field and the value that is
/// wrong, and the text is the reason the refused task fails with.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// `epoch` or `epochs_total` is 0 or more than the epochs the job plans a round.
    #[error("{field} {value} outside 1..={planned}, the epochs the job plans a round")]
    EpochOutOfPlan { field: &'static str, value: u32, planned: u32 },
    #[error("a non-finite training loss ({loss}) in epoch {epoch}: training diverged")]
    Diverged { loss: f64, epoch: u32 },
    #[error("{field} {value} is not {bound}")]
    OutOfRange { field: &'static str, value: f64, bound: Bound },
    /// The metrics of one evaluation (`validation`, `test`, `frame_validation`).
    #[error("{name} metrics: {source}")]
    Metrics { name: &'static str, source: MetricsError },
    #[error("a dataset without classes")]
    NoClasses,
    #[error("{shards} unlabelled shards, more than {MAX_SHARDS}")]
    TooManyShards { shards: usize },
    #[error("unlabelled shard {file:?} is not a shard file name of the dataset")]
    ShardName { file: String },
    #[error("unlabelled shard {file:?} listed twice")]
    ShardTwice { file: String },
    #[error("{field} {} outside the job's directory {}", .path.display(), .dir.display())]
    OutsideJob { field: &'static str, path: PathBuf, dir: PathBuf },
}

/// Why a job cannot be resumed (see [`JobRecord::resumed`]).
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The job is live or succeeded; `state` is its state's name.
    #[error("job {job} is {state}: only a failed or cancelled job can be resumed")]
    NotStopped { job: JobId, state: &'static str },
    /// Every task of the job finished: it stopped between phases, with `reason`.
    #[error("job {job} stopped between its tasks ({reason}): there is no task to resume; submit it again")]
    NothingToResume { job: JobId, reason: String },
}

impl JobRecord {
    /// Whether `epoch` (of `epochs_total`) could be this job's: the error says which field is not.
    pub fn check_progress(&self, epoch: &EpochReport, epochs_total: u32) -> Result<(), ReportError> {
        let planned = self.spec.train.epochs;
        for (field, value) in [("epochs_total", epochs_total), ("epoch", epoch.epoch)] {
            if value == 0 || value > planned {
                return Err(ReportError::EpochOutOfPlan { field, value, planned });
            }
        }
        if !epoch.train_loss.is_finite() {
            return Err(ReportError::Diverged { loss: epoch.train_loss, epoch: epoch.epoch });
        }
        check_number("train_accuracy", epoch.train_accuracy, Bound::Unit)?;
        check_number("seconds", epoch.seconds, Bound::NonNegative)?;
        check_number("images_per_second", epoch.images_per_second, Bound::NonNegative)?;
        self.check_metrics("validation", &epoch.validation)
    }

    /// Whether `outcome` could be this job's: metrics in range, files in its directory,
    /// shards that are plain file names.
    pub fn check_outcome(&self, outcome: &TaskOutcome) -> Result<(), ReportError> {
        match outcome {
            TaskOutcome::Prepared(summary) => {
                if summary.class_names.is_empty() {
                    return Err(ReportError::NoClasses);
                }
                if summary.unlabeled_shards.len() > MAX_SHARDS {
                    return Err(ReportError::TooManyShards { shards: summary.unlabeled_shards.len() });
                }
                let mut seen = std::collections::HashSet::new();
                for shard in &summary.unlabeled_shards {
                    let plain = Path::new(&shard.file).components().collect::<Vec<_>>();
                    if !matches!(plain.as_slice(), [Component::Normal(_)]) || !shard.file.ends_with(".safetensors") {
                        return Err(ReportError::ShardName { file: shard.file.clone() });
                    }
                    if !seen.insert(&shard.file) {
                        return Err(ReportError::ShardTwice { file: shard.file.clone() });
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
                for sum in &partial.probability_sums {
                    check_number("probability sum", *sum, Bound::NonNegative)?;
                }
                self.check_path("predictions_file", &partial.predictions_file)
            }
            TaskOutcome::Selected(selection) => {
                for threshold in &selection.thresholds {
                    check_number("threshold", *threshold, Bound::Unit)?;
                }
                self.check_path("selection_file", &selection.selection_file)
            }
        }
    }

    fn check_metrics(&self, name: &'static str, metrics: &MetricsSummary) -> Result<(), ReportError> {
        let classes = self.dataset.as_ref().map(|d| d.class_names.len());
        metrics.check(classes).map_err(|source| ReportError::Metrics { name, source })
    }

    /// A file the job wrote: under its artifact directory, with no `..` on the way.
    fn check_path(&self, field: &'static str, path: &str) -> Result<(), ReportError> {
        let path = Path::new(path);
        let inside = path.starts_with(&self.artifact_dir) && path.components().all(|c| !matches!(c, Component::ParentDir));
        if inside {
            Ok(())
        } else {
            Err(ReportError::OutsideJob { field, path: path.to_path_buf(), dir: self.artifact_dir.clone() })
        }
    }
}

/// `value` of `field`, if it is within `bound`.
fn check_number(field: &'static str, value: f64, bound: Bound) -> Result<(), ReportError> {
    let within = value.is_finite()
        && match bound {
            Bound::Unit => (0.0..=1.0).contains(&value),
            Bound::NonNegative => value >= 0.0,
        };
    if within {
        Ok(())
    } else {
        Err(ReportError::OutOfRange { field, value, bound })
    }
}

#[cfg(test)]
mod tests {
    use feral_common::ids::Round;
    use feral_common::spec::JobSpec;
    use feral_common::task::{DatasetSummary, InferPartial, ShardRef};

    use super::*;

    fn job() -> JobRecord {
        let text = "version = 1\ndataset = \"/d\"\n[train]\nepochs = 3\n";
        let spec = JobSpec::from_toml(text).expect("spec");
        JobRecord::submitted(JobId::new("job-1"), spec, text.into(), "/art/job-1".into(), 0)
    }

    fn epoch(number: u32, loss: f64, accuracy: f64) -> EpochReport {
        let validation = MetricsSummary { accuracy: 0.5, macro_f1: 0.5, per_class_f1: vec![0.5, 0.5], confusion: vec![1, 1, 1, 1], samples: 4 };
        EpochReport { round: Round(0), epoch: number, train_loss: loss, train_accuracy: accuracy, validation, seconds: 1.0, images_per_second: 10.0 }
    }

    #[test]
    fn a_report_unlike_the_job_names_its_field_and_value() {
        let job = job();
        assert!(job.check_progress(&epoch(1, 0.5, 0.5), 3).is_ok());
        let text = |error: ReportError| error.to_string();
        let error = job.check_progress(&epoch(4_294_967_295, 0.5, 0.5), 3).expect_err("epoch");
        assert!(matches!(error, ReportError::EpochOutOfPlan { field: "epoch", value: 4_294_967_295, planned: 3 }));
        assert!(text(error).contains("epoch 4294967295 outside 1..=3"));
        assert!(text(job.check_progress(&epoch(1, 0.5, 0.5), 4).expect_err("total")).starts_with("epochs_total 4 outside 1..=3"));
        let error = job.check_progress(&epoch(2, f64::NAN, 0.5), 3).expect_err("nan");
        assert!(matches!(error, ReportError::Diverged { epoch: 2, .. }));
        assert!(text(error).contains("non-finite training loss"));
        assert_eq!(text(job.check_progress(&epoch(1, 0.5, 2.5), 3).expect_err("accuracy")), "train_accuracy 2.5 is not in [0, 1]");
        let slow = EpochReport { seconds: -1.0, ..epoch(1, 0.5, 0.5) };
        assert_eq!(text(job.check_progress(&slow, 3).expect_err("seconds")), "seconds -1 is not a finite number of at least 0");
        let f1 = EpochReport { validation: MetricsSummary { macro_f1: -3.0, ..Default::default() }, ..epoch(1, 0.5, 0.5) };
        let error = job.check_progress(&f1, 3).expect_err("f1");
        assert!(matches!(&error, ReportError::Metrics { name: "validation", source: MetricsError::OutOfRange { .. } }));
        assert_eq!(text(error), "validation metrics: macro_f1 -3 is not in [0, 1]");
    }

    #[test]
    fn an_outcome_unlike_the_job_names_its_field_and_value() {
        let job = job();
        let shard = |file: &str| ShardRef { file: file.into(), samples: 1 };
        let prepared =
            |shards: Vec<ShardRef>| TaskOutcome::Prepared(DatasetSummary { class_names: vec!["a".into()], unlabeled_shards: shards, ..Default::default() });
        assert!(job.check_outcome(&prepared(vec![shard("u-0.safetensors")])).is_ok());
        assert!(matches!(job.check_outcome(&TaskOutcome::Prepared(DatasetSummary::default())), Err(ReportError::NoClasses)));
        let error = job.check_outcome(&prepared(vec![shard("../u.safetensors")])).expect_err("path");
        assert_eq!(error.to_string(), "unlabelled shard \"../u.safetensors\" is not a shard file name of the dataset");
        let twice = job.check_outcome(&prepared(vec![shard("u.safetensors"), shard("u.safetensors")])).expect_err("twice");
        assert!(matches!(&twice, ReportError::ShardTwice { file } if file == "u.safetensors"), "{twice}");
        let many = job.check_outcome(&prepared(vec![shard("u.safetensors"); MAX_SHARDS + 1])).expect_err("many");
        assert!(matches!(many, ReportError::TooManyShards { shards } if shards == MAX_SHARDS + 1));
        let inferred = |sums: Vec<f64>, file: &str| TaskOutcome::Inferred(InferPartial { probability_sums: sums, samples: 1, predictions_file: file.into() });
        assert!(job.check_outcome(&inferred(vec![0.5], "/art/job-1/r1/p.bin")).is_ok());
        let error = job.check_outcome(&inferred(vec![0.5], "/art/job-1/../../etc/shadow")).expect_err("outside");
        assert!(matches!(&error, ReportError::OutsideJob { field: "predictions_file", .. }));
        assert_eq!(error.to_string(), "predictions_file /art/job-1/../../etc/shadow outside the job's directory /art/job-1");
        let error = job.check_outcome(&inferred(vec![f64::INFINITY], "/art/job-1/p.bin")).expect_err("sum");
        assert_eq!(error.to_string(), "probability sum inf is not a finite number of at least 0");
    }
}
