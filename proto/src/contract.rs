//! The task contract on the wire, both ways, in one place: assignments, task references,
//! outcomes and epoch reports, and the summaries they carry (metrics, selections, online
//! masks).

use std::path::PathBuf;

use feral_common::ids::{Attempt, JobId, Rank, Round, ShardId};
use feral_common::method::{MaskAudit, SelectionSummary};
use feral_common::metrics::MetricsSummary;
use feral_common::task::{
    Assignment, CheckpointRef, DatasetSummary, EpochReport, InferPartial, ShardRef, TaskInputs, TaskKey, TaskKind, TaskOutcome, TrainedModel,
};

use crate::v1 as pb;
use pb::finish_task_request::Outcome;

/// A message that does not hold what the contract needs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error("field `{0}` is required")]
    Required(&'static str),
    #[error("field `{field}` {problem}")]
    Invalid { field: &'static str, problem: String },
}

/// `text`, the value of a required string field: empty or only whitespace is missing.
pub fn required<'a>(text: &'a str, field: &'static str) -> Result<&'a str, ContractError> {
    if text.trim().is_empty() {
        Err(ContractError::Required(field))
    } else {
        Ok(text)
    }
}

fn path(text: String) -> Option<PathBuf> {
    (!text.is_empty()).then(|| PathBuf::from(text))
}

fn text(path: &Option<PathBuf>) -> String {
    path.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
}

impl From<&TaskKey> for pb::TaskKey {
    fn from(key: &TaskKey) -> Self {
        pb::TaskKey {
            job_id: key.job.to_string(),
            round: key.round.0,
            kind: pb::TaskKind::from(key.kind) as i32,
            shard: key.shard.as_ref().map(ToString::to_string).unwrap_or_default(),
            attempt: key.attempt.0,
            rank: key.rank.0,
        }
    }
}

/// The task a message names, field by field: its job is required, its attempt at least 1,
/// and a shard given for an infer task and for no other.
impl TryFrom<pb::TaskKey> for TaskKey {
    type Error = ContractError;

    fn try_from(key: pb::TaskKey) -> Result<Self, ContractError> {
        let kind = task_kind(key.kind)?;
        let shard = match (kind, key.shard.is_empty()) {
            (TaskKind::Infer, true) => return Err(ContractError::Required("shard")),
            (TaskKind::Infer, false) => Some(ShardId::new(key.shard)),
            (_, true) => None,
            (_, false) => {
                return Err(ContractError::Invalid { field: "shard", problem: format!("is only for an infer task, got one for a {} task", kind.name()) })
            }
        };
        if key.attempt == 0 {
            return Err(ContractError::Required("attempt"));
        }
        Ok(TaskKey {
            job: JobId::new(required(&key.job_id, "job_id")?),
            round: Round(key.round),
            kind,
            shard,
            attempt: Attempt(key.attempt),
            rank: Rank(key.rank),
        })
    }
}

/// The key of a report's required `task` field.
pub fn task_key(key: Option<pb::TaskKey>) -> Result<TaskKey, ContractError> {
    key.ok_or(ContractError::Required("task"))?.try_into()
}

impl From<TaskKind> for pb::TaskKind {
    fn from(kind: TaskKind) -> Self {
        match kind {
            TaskKind::Prepare => pb::TaskKind::Prepare,
            TaskKind::Train => pb::TaskKind::Train,
            TaskKind::Infer => pb::TaskKind::Infer,
            TaskKind::Select => pb::TaskKind::Select,
        }
    }
}

/// The task kind a message's `kind` field holds.
pub fn task_kind(kind: i32) -> Result<TaskKind, ContractError> {
    {
        match pb::TaskKind::try_from(kind) {
            Ok(pb::TaskKind::Prepare) => Ok(TaskKind::Prepare),
            Ok(pb::TaskKind::Train) => Ok(TaskKind::Train),
            Ok(pb::TaskKind::Infer) => Ok(TaskKind::Infer),
            Ok(pb::TaskKind::Select) => Ok(TaskKind::Select),
            Ok(pb::TaskKind::Unspecified) => Err(ContractError::Required("kind")),
            Err(_) => Err(ContractError::Invalid { field: "kind", problem: format!("is not a task kind this worker knows: {kind}") }),
        }
    }
}

impl From<&Assignment> for pb::TaskAssignment {
    fn from(a: &Assignment) -> Self {
        pb::TaskAssignment {
            key: Some(pb::TaskKey::from(&a.key)),
            spec_toml: a.spec_toml.clone(),
            artifact_dir: a.artifact_dir.display().to_string(),
            owner: a.owner.clone(),
            device: a.device.to_string(),
            init_model: text(&a.inputs.init_model),
            class_weights: a.inputs.class_weights.clone(),
            class_prior: a.inputs.class_prior.clone(),
            shards: a.inputs.shards.clone(),
            selection_file: text(&a.inputs.selection_file),
            world_size: a.world_size,
            resume_from: a.inputs.resume_from.iter().map(|c| pb::CheckpointRef { attempt: c.attempt.0, epoch: c.epoch }).collect(),
        }
    }
}

impl TryFrom<pb::TaskAssignment> for Assignment {
    type Error = ContractError;

    fn try_from(a: pb::TaskAssignment) -> Result<Self, ContractError> {
        let key = TaskKey::try_from(a.key.ok_or(ContractError::Required("key"))?)?;
        if a.world_size == 0 {
            return Err(ContractError::Required("world_size"));
        }
        if key.rank.0 >= a.world_size {
            return Err(ContractError::Invalid { field: "rank", problem: format!("must be below world_size {}, got {}", a.world_size, key.rank) });
        }
        let device = required(&a.device, "device")?
            .parse()
            .map_err(|problem: feral_common::task::DeviceError| ContractError::Invalid { field: "device", problem: problem.to_string() })?;
        Ok(Assignment {
            key,
            world_size: a.world_size,
            spec_toml: required(&a.spec_toml, "spec_toml")?.to_owned(),
            artifact_dir: PathBuf::from(required(&a.artifact_dir, "artifact_dir")?),
            owner: a.owner,
            device,
            inputs: TaskInputs {
                init_model: path(a.init_model),
                class_weights: a.class_weights,
                class_prior: a.class_prior,
                shards: a.shards,
                selection_file: path(a.selection_file),
                resume_from: a.resume_from.into_iter().map(|c| CheckpointRef { attempt: Attempt(c.attempt), epoch: c.epoch }).collect(),
            },
        })
    }
}

impl From<&EpochReport> for pb::EpochMetrics {
    fn from(e: &EpochReport) -> Self {
        pb::EpochMetrics {
            round: e.round.0,
            epoch: e.epoch,
            train_loss: e.train_loss,
            train_accuracy: e.train_accuracy,
            validation: Some(pb::Metrics::from(&e.validation)),
            seconds: e.seconds,
            images_per_second: e.images_per_second,
        }
    }
}

impl TryFrom<pb::EpochMetrics> for EpochReport {
    type Error = ContractError;

    fn try_from(e: pb::EpochMetrics) -> Result<Self, ContractError> {
        let validation = e.validation.ok_or(ContractError::Required("epoch.validation"))?;
        if e.epoch == 0 {
            return Err(ContractError::Invalid { field: "epoch.epoch", problem: "must be at least 1".into() });
        }
        if !(e.images_per_second.is_finite() && e.images_per_second >= 0.0) {
            return Err(ContractError::Invalid {
                field: "epoch.images_per_second",
                problem: format!("must be a finite number of at least 0, got {}", e.images_per_second),
            });
        }
        Ok(EpochReport {
            round: Round(e.round),
            epoch: e.epoch,
            train_loss: e.train_loss,
            train_accuracy: e.train_accuracy,
            validation: validation.into(),
            seconds: e.seconds,
            images_per_second: e.images_per_second,
        })
    }
}

impl From<&TaskOutcome> for Outcome {
    fn from(outcome: &TaskOutcome) -> Self {
        match outcome {
            TaskOutcome::Trained(t) => Outcome::Train(pb::TrainOutcome {
                validation: Some(pb::Metrics::from(&t.validation)),
                model_path: t.model_path.clone(),
                class_names: t.class_names.clone(),
                frame_validation: t.frame_validation.as_ref().map(pb::Metrics::from),
                test: t.test.as_ref().map(pb::Metrics::from),
                online: t.online.as_ref().map(pb::OnlineMask::from),
            }),
            TaskOutcome::Prepared(p) => Outcome::Prepare(pb::PrepareOutcome {
                class_names: p.class_names.clone(),
                train_samples: p.train_samples,
                val_samples: p.val_samples,
                unlabeled_shards: p.unlabeled_shards.iter().map(|s| pb::ShardRef { file: s.file.clone(), samples: s.samples }).collect(),
            }),
            TaskOutcome::Inferred(i) => Outcome::Infer(pb::InferOutcome {
                probability_sums: i.probability_sums.clone(),
                samples: i.samples,
                predictions_file: i.predictions_file.clone(),
            }),
            TaskOutcome::Selected(s) => Outcome::Select(pb::SelectOutcome::from(s)),
        }
    }
}

impl TryFrom<Outcome> for TaskOutcome {
    type Error = ContractError;

    fn try_from(outcome: Outcome) -> Result<Self, ContractError> {
        Ok(match outcome {
            Outcome::Train(t) => TaskOutcome::Trained(TrainedModel {
                validation: t.validation.ok_or(ContractError::Required("train.validation"))?.into(),
                model_path: required(&t.model_path, "train.model_path")?.to_owned(),
                class_names: t.class_names,
                frame_validation: t.frame_validation.map(Into::into),
                test: t.test.map(Into::into),
                online: t.online.map(Into::into),
            }),
            Outcome::Prepare(p) => TaskOutcome::Prepared(DatasetSummary {
                class_names: p.class_names,
                train_samples: p.train_samples,
                val_samples: p.val_samples,
                unlabeled_shards: p.unlabeled_shards.into_iter().map(|s| ShardRef { file: s.file, samples: s.samples }).collect(),
            }),
            Outcome::Infer(i) => {
                if i.probability_sums.is_empty() {
                    return Err(ContractError::Required("infer.probability_sums"));
                }
                TaskOutcome::Inferred(InferPartial {
                    probability_sums: i.probability_sums,
                    samples: i.samples,
                    predictions_file: required(&i.predictions_file, "infer.predictions_file")?.to_owned(),
                })
            }
            Outcome::Select(s) => {
                required(&s.selection_file, "select.selection_file")?;
                TaskOutcome::Selected(s.into())
            }
        })
    }
}

// The shared summaries (metrics, selections, online masks), both ways.

impl From<&MetricsSummary> for pb::Metrics {
    fn from(m: &MetricsSummary) -> Self {
        pb::Metrics { accuracy: m.accuracy, macro_f1: m.macro_f1, per_class_f1: m.per_class_f1.clone(), confusion: m.confusion.clone(), samples: m.samples }
    }
}

impl From<pb::Metrics> for MetricsSummary {
    fn from(m: pb::Metrics) -> Self {
        MetricsSummary { accuracy: m.accuracy, macro_f1: m.macro_f1, per_class_f1: m.per_class_f1, confusion: m.confusion, samples: m.samples }
    }
}

impl From<&SelectionSummary> for pb::SelectOutcome {
    fn from(s: &SelectionSummary) -> Self {
        pb::SelectOutcome {
            selected_per_class: s.selected_per_class.clone(),
            thresholds: s.thresholds.clone(),
            confident_per_class: s.confident_per_class.clone(),
            selected: s.selected,
            pool: s.pool,
            correct: s.correct,
            with_hidden_label: s.with_hidden_label,
            selection_file: s.selection_file.clone(),
            cap: s.cap,
        }
    }
}

impl From<pb::SelectOutcome> for SelectionSummary {
    fn from(s: pb::SelectOutcome) -> Self {
        SelectionSummary {
            selected_per_class: s.selected_per_class,
            thresholds: s.thresholds,
            confident_per_class: s.confident_per_class,
            selected: s.selected,
            pool: s.pool,
            correct: s.correct,
            with_hidden_label: s.with_hidden_label,
            selection_file: s.selection_file,
            cap: s.cap,
        }
    }
}

impl From<&MaskAudit> for pb::OnlineMask {
    fn from(a: &MaskAudit) -> Self {
        pb::OnlineMask { seen: a.seen, masked_in: a.masked_in, with_hidden_label: a.with_hidden_label, correct: a.correct }
    }
}

impl From<pb::OnlineMask> for MaskAudit {
    fn from(m: pb::OnlineMask) -> Self {
        MaskAudit { seen: m.seen, masked_in: m.masked_in, with_hidden_label: m.with_hidden_label, correct: m.correct }
    }
}

#[cfg(test)]
mod tests {
    use feral_common::metrics::MetricsSummary;
    use feral_common::task::{Device, MaskAudit};

    use super::*;

    fn assignment() -> Assignment {
        Assignment {
            key: TaskKey { job: JobId::new("job-1"), round: Round(1), kind: TaskKind::Train, shard: None, attempt: Attempt(2), rank: Rank(1) },
            world_size: 2,
            spec_toml: "version = 1\n".into(),
            artifact_dir: "/a/job-1".into(),
            owner: "alice".into(),
            device: Device::Cuda(3),
            inputs: TaskInputs {
                init_model: Some("/a/job-1/r0/model.safetensors".into()),
                class_weights: vec![0.5, 1.5],
                class_prior: vec![0.25, 0.75],
                shards: vec![],
                selection_file: Some("/a/job-1/r1/selection.safetensors".into()),
                resume_from: vec![CheckpointRef { attempt: Attempt(1), epoch: 4 }, CheckpointRef { attempt: Attempt(1), epoch: 3 }],
            },
        }
    }

    #[test]
    fn an_assignment_crosses_the_wire_whole() {
        let sent = assignment();
        assert_eq!(Assignment::try_from(pb::TaskAssignment::from(&sent)), Ok(sent.clone()));
        let key = TaskKey { rank: Rank(0), ..sent.key.clone() };
        let lone = Assignment { key, inputs: TaskInputs::default(), world_size: 1, device: Device::Cpu, ..sent.clone() };
        assert_eq!(Assignment::try_from(pb::TaskAssignment::from(&lone)), Ok(lone), "empty paths stay absent");
        let key = TaskKey { kind: TaskKind::Infer, shard: Some(ShardId::new("unlabeled-00003.safetensors")), rank: Rank(0), ..sent.key.clone() };
        let infer = Assignment { key, world_size: 1, ..sent };
        assert_eq!(Assignment::try_from(pb::TaskAssignment::from(&infer)), Ok(infer), "an infer task's shard is part of its key");
    }

    #[test]
    fn an_assignment_missing_what_a_task_needs_names_the_field() {
        let wire = pb::TaskAssignment::from(&assignment());
        let key = |change: fn(&mut pb::TaskKey)| -> Box<dyn Fn(&mut pb::TaskAssignment)> { Box::new(move |a| a.key.as_mut().map_or((), change)) };
        let cases: [(&str, Box<dyn Fn(&mut pb::TaskAssignment)>); 11] = [
            ("field `key` is required", Box::new(|a| a.key = None)),
            ("field `job_id` is required", key(|k| k.job_id = " ".into())),
            ("field `attempt` is required", key(|k| k.attempt = 0)),
            ("field `kind` is required", key(|k| k.kind = 0)),
            ("field `kind` is not a task kind", key(|k| k.kind = 99)),
            ("field `shard` is only for an infer task", key(|k| k.shard = "unlabeled-00000.safetensors".into())),
            ("field `shard` is required", key(|k| k.kind = pb::TaskKind::Infer as i32)),
            ("field `device` must be `cpu` or `cuda:N`", Box::new(|a| a.device = "tpu".into())),
            ("field `world_size` is required", Box::new(|a| a.world_size = 0)),
            ("field `rank` must be below world_size 2, got 2", key(|k| k.rank = 2)),
            ("field `spec_toml` is required", Box::new(|a| a.spec_toml.clear())),
        ];
        for (expected, change) in cases {
            let mut bad = wire.clone();
            change(&mut bad);
            let error = Assignment::try_from(bad).expect_err(expected).to_string();
            assert!(error.starts_with(expected), "{error} (expected {expected})");
        }
    }

    #[test]
    fn outcomes_and_epochs_cross_the_wire_whole() {
        let metrics = MetricsSummary { accuracy: 0.7, macro_f1: 0.6, per_class_f1: vec![0.5, 0.7], confusion: vec![3, 1, 1, 3], samples: 8 };
        let outcomes = [
            TaskOutcome::Trained(TrainedModel {
                validation: metrics.clone(),
                model_path: "/a/r1/model.safetensors".into(),
                class_names: vec!["a".into(), "b".into()],
                frame_validation: Some(metrics.clone()),
                test: Some(metrics.clone()),
                online: Some(MaskAudit { seen: 100, masked_in: 40, with_hidden_label: 30, correct: 27 }),
            }),
            TaskOutcome::Prepared(DatasetSummary {
                class_names: vec!["a".into()],
                train_samples: 9,
                val_samples: 3,
                unlabeled_shards: vec![ShardRef { file: "unlabeled-00000.safetensors".into(), samples: 5 }],
            }),
            TaskOutcome::Inferred(InferPartial { probability_sums: vec![1.5, 3.5], samples: 5, predictions_file: "/a/r1/pred-u".into() }),
        ];
        for outcome in outcomes {
            assert_eq!(TaskOutcome::try_from(Outcome::from(&outcome)), Ok(outcome));
        }
        let epoch =
            EpochReport { round: Round(2), epoch: 3, train_loss: 0.5, train_accuracy: 0.8, validation: metrics, seconds: 1.5, images_per_second: 420.0 };
        assert_eq!(EpochReport::try_from(pb::EpochMetrics::from(&epoch)), Ok(epoch));
        let error = EpochReport::try_from(pb::EpochMetrics { validation: None, ..Default::default() }).expect_err("no metrics");
        assert_eq!(error, ContractError::Required("epoch.validation"));
    }

    /// Whatever a peer sends: arbitrary messages convert, or are refused naming a field;
    /// arbitrary bytes never panic the decoder or the conversions.
    mod arbitrary {
        use proptest::prelude::*;
        use prost::Message;

        use super::*;

        /// Ids as peers send them: well formed, empty, or any text.
        fn id() -> impl Strategy<Value = String> {
            prop_oneof!["job-1", "job-2", Just(String::new()), "\\PC{0,12}"]
        }

        fn device() -> impl Strategy<Value = String> {
            prop_oneof![
                "cpu",
                "cuda:[0-9]{1,3}".prop_filter("canonical", |d| !d.starts_with("cuda:0") || d == "cuda:0"),
                "cuda:-1",
                "cuda:99999999999",
                Just(String::new()),
                "\\PC{0,8}"
            ]
        }

        prop_compose! {
            fn assignment_message()(
                job_id in id(),
                kind in prop_oneof![0..6i32, any::<i32>()],
                shard in prop_oneof![Just(String::new()), "unlabeled-0000[0-9].safetensors"],
                (round, attempt, rank, world_size) in (any::<u32>(), 0u32..3, 0u32..5, 0u32..5),
                device in device(),
                (spec_toml, artifact_dir, init_model, selection_file) in ("\\PC{0,6}", "\\PC{0,6}", "\\PC{0,6}", "\\PC{0,6}"),
                (class_weights, class_prior) in (prop::collection::vec(any::<f64>(), 0..4), prop::collection::vec(any::<f64>(), 0..4)),
                shards in prop::collection::vec("\\PC{0,6}", 0..3),
                resume in prop::collection::vec((any::<u32>(), any::<u32>()), 0..3),
            ) -> pb::TaskAssignment {
                let resume_from = resume.into_iter().map(|(attempt, epoch)| pb::CheckpointRef { attempt, epoch }).collect();
                let key = Some(pb::TaskKey { job_id, round, kind, shard, attempt, rank });
                pb::TaskAssignment { key, device, spec_toml, artifact_dir, init_model, class_weights, class_prior, shards, selection_file, world_size, resume_from, owner: "alice".into() }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

            #[test]
            fn an_assignment_converts_back_to_itself_or_names_its_field(message in assignment_message()) {
                match Assignment::try_from(message.clone()) {
                    Ok(assignment) => {
                        prop_assert!(assignment.key.rank.0 < assignment.world_size);
                        prop_assert_eq!(assignment.key.shard.is_some(), assignment.key.kind == TaskKind::Infer);
                        // Nothing is lost or changed on the way in (floats bit for bit).
                        let back = pb::TaskAssignment::from(&assignment);
                        prop_assert_eq!(back.encode_to_vec(), message.encode_to_vec());
                    }
                    Err(error) => prop_assert!(error.to_string().starts_with("field `"), "{}", error),
                }
            }

            #[test]
            fn arbitrary_bytes_decode_and_convert_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                if let Ok(message) = pb::TaskAssignment::decode(bytes.as_slice()) {
                    let _ = Assignment::try_from(message);
                }
                if let Ok(message) = pb::EpochMetrics::decode(bytes.as_slice()) {
                    if let Err(error) = EpochReport::try_from(message) {
                        prop_assert!(error.to_string().starts_with("field `"), "{}", error);
                    }
                }
                if let Ok(pb::FinishTaskRequest { outcome: Some(outcome), .. }) = pb::FinishTaskRequest::decode(bytes.as_slice()) {
                    if let Err(error) = TaskOutcome::try_from(outcome) {
                        prop_assert!(error.to_string().starts_with("field `"), "{}", error);
                    }
                }
            }
        }
    }
}
