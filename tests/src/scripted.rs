//! A scripted task runner: every kind of task answers at once with plausible numbers, and
//! chosen kinds can be made slow, so coordinator behaviour can be tested without training.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use feral_common::ids::Round;
use feral_common::metrics::MetricsSummary;
use feral_common::task::{Assignment, DatasetSummary, EpochReport, InferPartial, SelectionSummary, ShardRef, TaskKind, TaskOutcome, TrainedModel};
use feral_worker::collective::Collective;
use feral_worker::error::TaskError;
use feral_worker::runner::TaskRunner;

/// Answers every task; `slow` kinds take `delay` per step (and honour `stop`).
pub struct ScriptedRunner {
    /// Epochs a training task reports.
    pub epochs: u32,
    /// Unlabelled shards the prepared dataset has.
    pub shards: usize,
    pub slow: Vec<TaskKind>,
    pub delay: Duration,
    /// The validation macro-F1 a round-0 model reports (0.1 more per round).
    pub macro_f1: f64,
    /// Training tasks of jobs whose spec has this name panic (as a bug or libtorch
    /// refusing a size would).
    pub panic_for: Option<String>,
}

impl ScriptedRunner {
    pub fn fast(shards: usize) -> Self {
        Self { epochs: 2, shards, slow: Vec::new(), delay: Duration::ZERO, macro_f1: 0.5, panic_for: None }
    }

    fn pause(&self, kind: TaskKind, stop: &AtomicBool) -> Result<(), TaskError> {
        if self.slow.contains(&kind) {
            std::thread::sleep(self.delay);
        }
        if stop.load(Ordering::Relaxed) {
            return Err(TaskError::Stopped);
        }
        Ok(())
    }
}

impl TaskRunner for ScriptedRunner {
    fn run(&self, task: &Assignment, _: &mut dyn Collective, on_epoch: &mut dyn FnMut(EpochReport, u32), stop: &AtomicBool) -> Result<TaskOutcome, TaskError> {
        let metrics = |f1: f64| MetricsSummary { accuracy: f1, macro_f1: f1, per_class_f1: vec![f1, f1], ..MetricsSummary::default() };
        self.pause(task.key.kind, stop)?;
        Ok(match task.key.kind {
            TaskKind::Prepare => TaskOutcome::Prepared(DatasetSummary {
                class_names: vec!["a".into(), "b".into()],
                train_samples: 10,
                val_samples: 10,
                unlabeled_shards: (0..self.shards).map(|i| ShardRef { file: format!("unlabeled-{i:05}.safetensors"), samples: 10 }).collect(),
            }),
            TaskKind::Train => {
                if let Some(name) = &self.panic_for {
                    if task.spec_toml.contains(&format!("name = {name:?}")) {
                        panic!("scripted panic in a training task of {name}");
                    }
                }
                for epoch in 1..=self.epochs {
                    self.pause(TaskKind::Train, stop)?;
                    let report = EpochReport {
                        round: task.key.round,
                        epoch,
                        train_loss: 1.0 / f64::from(epoch),
                        train_accuracy: 0.5,
                        validation: metrics(0.5),
                        seconds: 0.0,
                        images_per_second: 0.0,
                    };
                    on_epoch(report, self.epochs);
                }
                let Round(round) = task.key.round;
                let validation = metrics(self.macro_f1 + 0.1 * f64::from(round));
                let model_path = task.artifact_dir.join(format!("r{round}/model.safetensors")).display().to_string();
                TaskOutcome::Trained(TrainedModel {
                    validation,
                    frame_validation: None,
                    test: None,
                    online: None,
                    model_path,
                    class_names: vec!["a".into(), "b".into()],
                })
            }
            TaskKind::Infer => TaskOutcome::Inferred(InferPartial {
                probability_sums: vec![7.0, 3.0],
                samples: 10,
                predictions_file: task.artifact_dir.join(format!("r{}/pred-{}", task.key.round, task.inputs.shards.join(","))).display().to_string(),
            }),
            TaskKind::Select => TaskOutcome::Selected(SelectionSummary {
                selected_per_class: vec![3, 2],
                thresholds: vec![0.9, 0.6],
                confident_per_class: vec![3, 1],
                selected: 5,
                pool: 10 * self.shards as u64,
                correct: 4,
                with_hidden_label: 5,
                selection_file: task.artifact_dir.join(format!("r{}/selection.safetensors", task.key.round)).display().to_string(),
                cap: 0,
            }),
        })
    }
}
