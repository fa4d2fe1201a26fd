//! Resuming from a checkpoint: a training task stopped after an epoch, or whose checkpoint
//! write failed half way, and started again as the coordinator starts a new attempt
//! continues the loss curve the uninterrupted task draws, and ends with the same model.
//! (Its own test binary, its tests one at a time: libtorch's random generator and the
//! fail points are process-wide.)

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use feral_common::ids::Attempt;
use feral_common::spec::JobSpec;
use feral_common::task::{CheckpointRef, EpochReport, TaskInputs, TrainedModel};
use feral_worker::artifacts::ArtifactError;
use feral_worker::collective::Single;
use feral_worker::error::TaskError;
use feral_worker::task::TaskContext;
use feral_worker::train::{train, TrainTask};
use tch::{Device, Tensor};

fn task(dataset: &Path, artifacts: &Path) -> TrainTask {
    let mut spec = JobSpec::for_dataset(dataset);
    spec.model.width = 8;
    spec.train.epochs = 4;
    spec.train.batch_size = 32;
    spec.train.steps_per_epoch = Some(12);
    let context = TaskContext { spec, round: 0, attempt: Attempt(1), artifact_dir: artifacts.to_path_buf(), device: Device::Cpu };
    TrainTask { context, inputs: TaskInputs::default() }
}

/// Held by each test: two trainings at once would draw from one generator (and fail
/// points are process-wide).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What the coordinator records of a round's checkpoints: each epoch reported, with the
/// attempt that reported it (`JobRecord::progress`), handed to the next attempt newest first.
#[derive(Default)]
struct Record {
    checkpoints: Vec<CheckpointRef>,
    attempts: u32,
}

/// Runs the task's next attempt as the coordinator would start it (resuming from what the
/// record holds); with `stop_after`, raises the stop flag once that epoch is reported.
fn run(task: &TrainTask, record: &mut Record, stop_after: Option<u32>) -> (Vec<EpochReport>, Result<(PathBuf, TrainedModel), TaskError>) {
    record.attempts += 1;
    let mut task = task.clone();
    task.context.attempt = Attempt(record.attempts);
    task.inputs.resume_from = record.checkpoints.iter().rev().copied().collect();
    let stop = AtomicBool::new(false);
    let mut reports = Vec::new();
    let attempt = record.attempts;
    let mut on_epoch = |report: EpochReport, _epochs: u32| {
        if Some(report.epoch) == stop_after {
            stop.store(true, Ordering::Relaxed);
        }
        record.checkpoints.retain(|c| c.epoch < report.epoch);
        record.checkpoints.push(CheckpointRef { attempt: Attempt(attempt), epoch: report.epoch });
        reports.push(report);
    };
    let outcome = train(&task, &mut Single, &mut on_epoch, &stop, &Default::default()).map(|output| (PathBuf::from(&output.model_path), output));
    (reports, outcome)
}

fn sorted(path: &Path) -> anyhow::Result<Vec<(String, Tensor)>> {
    let mut named = Tensor::read_safetensors(path)?;
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(named)
}

/// The two runs trained the same model: the same loss curve, weights and metrics.
fn assert_same_training(
    straight: &[EpochReport],
    straight_model: &(PathBuf, TrainedModel),
    resumed: &[EpochReport],
    resumed_model: &(PathBuf, TrainedModel),
) -> anyhow::Result<()> {
    for b in resumed {
        let a = straight.iter().find(|a| a.epoch == b.epoch).expect("every epoch");
        let gap = (a.train_loss - b.train_loss).abs();
        assert!(gap < 1e-4 * a.train_loss.abs().max(1.0), "epoch {}: loss {} uninterrupted, {} resumed", a.epoch, a.train_loss, b.train_loss);
    }
    let (x, y) = (sorted(&straight_model.0)?, sorted(&resumed_model.0)?);
    assert_eq!(x.len(), y.len());
    for ((name, a), (other, b)) in x.iter().zip(&y) {
        assert_eq!(name, other);
        let difference = (a - b).abs().max().double_value(&[]);
        assert!(difference < 1e-4, "{name} differs by {difference}");
    }
    assert_eq!(straight_model.1.validation, resumed_model.1.validation, "the same metrics");
    Ok(())
}

#[test]
fn a_resumed_task_continues_the_same_loss_curve() -> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir()?;
    let dataset = feral_tests::synthetic_dataset(&dir.path().join("data"), 600)?;

    let straight = task(&dataset, &dir.path().join("straight"));
    let (all, model) = run(&straight, &mut Record::default(), None);
    let model = model?;

    let interrupted = task(&dataset, &dir.path().join("interrupted"));
    let mut record = Record::default();
    let (first, stopped) = run(&interrupted, &mut record, Some(2));
    assert!(matches!(stopped, Err(TaskError::Stopped)), "the first attempt stops after epoch 2");
    let (rest, resumed_model) = run(&interrupted, &mut record, None);
    let resumed_model = resumed_model?;

    let epochs: Vec<u32> = first.iter().chain(&rest).map(|r| r.epoch).collect();
    assert_eq!(epochs, vec![1, 2, 3, 4], "the second attempt starts at epoch 3");
    assert!(resumed_model.0.starts_with(dir.path().join("interrupted/r0/a2")), "the model is the second attempt's: {:?}", resumed_model.0);
    assert_same_training(&all, &model, &rest, &resumed_model)
}

#[test]
fn a_damaged_recorded_checkpoint_is_passed_over_for_the_one_before() -> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir()?;
    let dataset = feral_tests::synthetic_dataset(&dir.path().join("data"), 600)?;
    let (all, model) = run(&task(&dataset, &dir.path().join("straight")), &mut Record::default(), None);
    let model = model?;

    let damaged = task(&dataset, &dir.path().join("damaged"));
    let mut record = Record::default();
    let (_, stopped) = run(&damaged, &mut record, Some(2));
    assert!(matches!(stopped, Err(TaskError::Stopped)), "the first attempt stops after epoch 2");
    // Half of epoch 2's weights lost after they were written (a disk, a person, a bug).
    let weights = dir.path().join("damaged/r0/a1/checkpoint-e2/weights.safetensors");
    let bytes = std::fs::read(&weights)?;
    std::fs::write(&weights, &bytes[..bytes.len() / 2])?;

    let (reports, resumed_model) = run(&damaged, &mut record, None);
    let resumed_model = resumed_model.map_err(|e| anyhow::anyhow!("the attempt after a damaged checkpoint must succeed: {e}"))?;
    let epochs: Vec<u32> = reports.iter().map(|r| r.epoch).collect();
    assert_eq!(epochs, vec![2, 3, 4], "it resumes from epoch 1's checkpoint, the whole one before");
    assert_same_training(&all, &model, &reports, &resumed_model)?;
    assert!(feral_tests::partial_files(dir.path()).is_empty(), "no temporary file is left: {:?}", feral_tests::partial_files(dir.path()));
    Ok(())
}

/// A checkpoint write that fails after any of its stages (each part, the manifest, the
/// rename), as a full disk or a crash would stop it, leaves the recorded checkpoint whole:
/// the next attempt resumes from it and ends with the uninterrupted run's model.
#[test]
fn a_checkpoint_write_interrupted_at_any_stage_then_resumed_ends_with_the_same_model() -> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir()?;
    let dataset = feral_tests::synthetic_dataset(&dir.path().join("data"), 600)?;
    let (all, model) = run(&task(&dataset, &dir.path().join("straight")), &mut Record::default(), None);
    let model = model?;

    for stage in ["weights.safetensors", "ema.safetensors", "optimizer.safetensors", "manifest.json", "rename"] {
        let artifacts = dir.path().join(format!("torn-{stage}"));
        let torn = task(&dataset, &artifacts);
        let mut record = Record::default();
        let point = format!("checkpoint::{stage}");
        // Epoch 1's checkpoint is written; epoch 2's fails after `stage`.
        fail::cfg(&point, "1*off->return").map_err(anyhow::Error::msg)?;
        let (first, failed) = run(&torn, &mut record, None);
        fail::remove(&point);
        assert!(matches!(failed, Err(TaskError::Artifact(ArtifactError::Write { .. }))), "{stage}: {:?}", failed.map(|m| m.0));
        assert_eq!(first.iter().map(|r| r.epoch).collect::<Vec<_>>(), vec![1], "{stage}: epoch 2 is not reported");
        assert!(feral_tests::partial_files(&artifacts).is_empty(), "{stage}: the failed write leaves nothing: {:?}", feral_tests::partial_files(&artifacts));

        let (rest, resumed_model) = run(&torn, &mut record, None);
        let resumed_model = resumed_model.map_err(|e| anyhow::anyhow!("{stage}: the next attempt must succeed: {e}"))?;
        assert_eq!(rest.iter().map(|r| r.epoch).collect::<Vec<_>>(), vec![2, 3, 4], "{stage}: resumed from epoch 1");
        assert_same_training(&all, &model, &rest, &resumed_model)?;
    }
    Ok(())
}
