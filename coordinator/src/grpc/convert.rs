//! Conversions between `feral.v1` messages and domain types. Proto types stay at the edge.

use feral_common::metrics::MetricsSummary;
use feral_common::task::Device;
use feral_proto::v1 as pb;

use crate::control::WorkerView;
use crate::error::CoordinatorError;
use crate::model::{JobRecord, JobState, RoundRecord, Slot, WorkerState};

pub fn metrics_to_proto(m: &MetricsSummary) -> pb::Metrics {
    pb::Metrics::from(m)
}

#[cfg(test)]
fn metrics_from_proto(m: pb::Metrics) -> MetricsSummary {
    MetricsSummary::from(m)
}

fn round_to_proto(r: &RoundRecord, shards_total: usize) -> pb::RoundSummary {
    pb::RoundSummary {
        round: r.round,
        validation: r.model.as_ref().map(|m| metrics_to_proto(&m.validation)),
        model_path: r.model.as_ref().map(|m| m.model_path.clone()).unwrap_or_default(),
        class_prior: r.class_prior.clone(),
        class_weights: r.class_weights.clone(),
        shards_predicted: r.partials.len() as u32,
        shards_total: if r.round == 0 { 0 } else { shards_total as u32 },
        selection: r.selection.as_ref().map(pb::SelectOutcome::from),
        frame_validation: r.model.as_ref().and_then(|m| m.frame_validation.as_ref()).map(metrics_to_proto),
        test: r.model.as_ref().and_then(|m| m.test.as_ref()).map(metrics_to_proto),
        online: r.model.as_ref().and_then(|m| m.online.as_ref()).map(pb::OnlineMask::from),
    }
}

pub fn job_to_proto(job: &JobRecord) -> pb::Job {
    let (state, reason) = match &job.state {
        JobState::Queued => (pb::JobState::Queued, String::new()),
        JobState::Preparing => (pb::JobState::Preparing, String::new()),
        JobState::Training => (pb::JobState::Training, String::new()),
        JobState::PseudoLabeling => (pb::JobState::PseudoLabeling, String::new()),
        JobState::Selecting => (pb::JobState::Selecting, String::new()),
        JobState::Succeeded => (pb::JobState::Succeeded, String::new()),
        JobState::Failed { reason } => (pb::JobState::Failed, reason.clone()),
        JobState::Cancelled { reason } => (pb::JobState::Cancelled, reason.clone()),
    };
    let round_epochs = job.epochs.iter().filter(|e| e.round == job.round).map(|e| e.epoch).max().unwrap_or(0);
    let shards_total = job.dataset.as_ref().map_or(0, |d| d.unlabeled_shards.len());
    pb::Job {
        id: job.id.to_string(),
        name: job.spec.name.clone(),
        state: state as i32,
        state_reason: reason,
        round: job.round.0,
        created_at_ms: job.created_at_ms,
        updated_at_ms: job.updated_at_ms,
        spec_toml: job.spec_toml.clone(),
        epochs_done: round_epochs,
        epochs_total: job.epochs_total,
        epochs: job.epochs.iter().map(pb::EpochMetrics::from).collect(),
        result: job.result.as_ref().map(|r| pb::JobResult {
            validation: Some(metrics_to_proto(&r.validation)),
            model_path: r.model_path.clone(),
            class_names: r.class_names.clone(),
            best_round: r.best_round,
            test: r.test.as_ref().map(metrics_to_proto),
            warnings: r.warnings(),
        }),
        worker_ids: job.workers().iter().map(ToString::to_string).collect(),
        rounds: job.rounds.iter().map(|r| round_to_proto(r, shards_total)).collect(),
        rounds_planned: job.rounds_planned(),
        best_macro_f1: job.epochs.iter().map(|e| e.validation.macro_f1).reduce(f64::max),
        last_macro_f1: job.epochs.last().map(|e| e.validation.macro_f1),
        gang_ranks: job.gang_ranks(),
        gang_size: u32::from(job.spec.resources.full_gang()),
        last_failure: job.last_failure.clone().unwrap_or_default(),
        retry_at_ms: job.retry_at_ms().unwrap_or(0),
        owner: job.owner.clone().unwrap_or_default(),
        model_macro_f1: job.result.as_ref().map(|r| r.validation.macro_f1),
    }
}

/// The job as a listing shows it: what [`job_to_proto`] gives, less the spec, the epochs
/// and the rounds, whose size grows with the job (`GetJob` has them).
pub fn job_summary_to_proto(job: &JobRecord) -> pb::Job {
    pb::Job { spec_toml: String::new(), epochs: Vec::new(), rounds: Vec::new(), ..job_to_proto(job) }
}

pub fn worker_to_proto(w: &WorkerView) -> pb::Worker {
    let state = match w.record.state {
        WorkerState::Live => pb::WorkerState::Live,
        WorkerState::Lost => pb::WorkerState::Lost,
    };
    pb::Worker {
        id: w.record.id.to_string(),
        hostname: w.record.hostname.clone(),
        state: state as i32,
        slots: w.record.slots.iter().map(|s| pb::Slot { device: s.device.to_string(), name: s.name.clone() }).collect(),
        registered_at_ms: w.record.registered_at_ms,
        last_heartbeat_ms: w.last_heartbeat_ms,
        tasks: w.running.iter().map(pb::TaskKey::from).collect(),
    }
}

impl TryFrom<pb::Slot> for Slot {
    type Error = CoordinatorError;

    fn try_from(s: pb::Slot) -> Result<Self, Self::Error> {
        let device = s.device.parse::<Device>().map_err(|problem| CoordinatorError::InvalidArgument(format!("field `slots.device` {problem}")))?;
        if s.name.chars().count() > 128 || s.name.chars().any(char::is_control) {
            return Err(CoordinatorError::InvalidArgument("field `slots.name` must be at most 128 characters, none of them control characters".into()));
        }
        Ok(Slot { device, name: s.name })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use feral_common::ids::JobId;
    use feral_common::spec::JobSpec;

    use super::*;
    use crate::model::JobResult;
    use feral_common::task::{MaskAudit, TaskOutcome};

    fn metrics(macro_f1: f64) -> MetricsSummary {
        MetricsSummary { accuracy: macro_f1 + 0.1, macro_f1, per_class_f1: vec![macro_f1, macro_f1], confusion: vec![3, 1, 0, 4], samples: 8 }
    }

    fn train_outcome(test: Option<&MetricsSummary>) -> pb::finish_task_request::Outcome {
        pb::finish_task_request::Outcome::Train(pb::TrainOutcome {
            validation: Some(metrics_to_proto(&metrics(0.6))),
            model_path: "/a/r0/model.safetensors".into(),
            class_names: vec!["a".into(), "b".into()],
            frame_validation: None,
            test: test.map(metrics_to_proto),
            online: None,
        })
    }

    #[test]
    fn test_metrics_travel_from_the_worker_to_the_round_and_the_result() {
        let test = metrics(0.45);
        let model = match TaskOutcome::try_from(train_outcome(Some(&test))).expect("a valid outcome") {
            TaskOutcome::Trained(model) => model,
            other => panic!("expected a trained model, got {other:?}"),
        };
        assert_eq!(model.test.as_ref(), Some(&test), "test metrics arrive whole");
        assert_eq!(model.validation, metrics(0.6), "beside the validation metrics, not instead of them");
        match TaskOutcome::try_from(train_outcome(None)).expect("a valid outcome") {
            TaskOutcome::Trained(without) => assert_eq!(without.test, None),
            other => panic!("expected a trained model, got {other:?}"),
        }

        let mut job = JobRecord::submitted(JobId::new("j"), JobSpec::for_dataset("/d"), String::new(), PathBuf::from("/a"), 0);
        job.rounds.push(RoundRecord { round: 0, model: Some(model.clone()), ..RoundRecord::default() });
        job.rounds.push(RoundRecord { round: 1, ..RoundRecord::default() });
        job.state = JobState::Succeeded;
        job.result = Some(JobResult {
            validation: model.validation.clone(),
            model_path: model.model_path.clone(),
            class_names: model.class_names.clone(),
            best_round: 0,
            test: model.test.clone(),
        });
        let proto = job_to_proto(&job);
        assert_eq!(proto.rounds[0].test.clone().map(metrics_from_proto), Some(test.clone()));
        assert_eq!(proto.rounds[1].test, None, "an untrained round has no test metrics");
        assert_eq!(proto.result.and_then(|r| r.test).map(metrics_from_proto), Some(test));
    }

    #[test]
    fn online_masks_travel_from_the_worker_to_the_round_summary() {
        let mask = MaskAudit { seen: 100_000, masked_in: 41_230, with_hidden_label: 30_000, correct: 27_000 };
        assert_eq!(MaskAudit::from(pb::OnlineMask::from(&mask)), mask, "the proto round trip keeps every count");

        let mut outcome = train_outcome(None);
        if let pb::finish_task_request::Outcome::Train(t) = &mut outcome {
            t.online = Some(pb::OnlineMask::from(&mask));
        }
        let student = match TaskOutcome::try_from(outcome).expect("a valid outcome") {
            TaskOutcome::Trained(model) => model,
            other => panic!("expected a trained model, got {other:?}"),
        };
        assert_eq!(student.online, Some(mask), "the mask arrives whole");
        let teacher = match TaskOutcome::try_from(train_outcome(None)).expect("a valid outcome") {
            TaskOutcome::Trained(model) => model,
            other => panic!("expected a trained model, got {other:?}"),
        };
        assert_eq!(teacher.online, None, "no mask when the worker sends none");

        let mut job = JobRecord::submitted(JobId::new("j"), JobSpec::for_dataset("/d"), String::new(), PathBuf::from("/a"), 0);
        job.rounds.push(RoundRecord { round: 0, model: Some(teacher), ..RoundRecord::default() });
        job.rounds.push(RoundRecord { round: 1, model: Some(student), ..RoundRecord::default() });
        job.rounds.push(RoundRecord { round: 2, ..RoundRecord::default() });
        let proto = job_to_proto(&job);
        assert_eq!(proto.rounds[0].online, None, "the teacher has no online mask");
        assert_eq!(proto.rounds[1].online.map(MaskAudit::from), Some(mask), "the student round reports its mask");
        assert_eq!(proto.rounds[2].online, None, "an untrained round has no online mask");
    }
}
