//! Resuming from a checkpoint: a training task stopped after an epoch and started again
//! continues the loss curve the uninterrupted task draws, and ends with the same model.
//! (Its own test binary, its tests one at a time: libtorch's random generator is
//! process-wide.)

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use feral_common::spec::JobSpec;
use feral_common::task::{EpochReport, TaskInputs};
use feral_worker::collective::Single;
use feral_worker::task::{TaskContext, TaskError};
use feral_worker::train::{train, TrainTask};
use tch::{Device, Tensor};

fn task(dataset: &Path, artifacts: &Path) -> TrainTask {
    let mut spec = JobSpec::for_dataset(dataset);
    spec.model.width = 8;
    spec.train.epochs = 4;
    spec.train.batch_size = 32;
    spec.train.steps_per_epoch = Some(12);
    let context = TaskContext { spec, round: 0, artifact_dir: artifacts.to_path_buf(), device: Device::Cpu };
    TrainTask { context, inputs: TaskInputs::default() }
}

/// Held by each test: two trainings at once would draw from one generator.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Trains; with `stop_after`, raises the stop flag once that epoch is reported.
fn run(task: &TrainTask, stop_after: Option<u32>) -> (Vec<EpochReport>, Result<std::path::PathBuf, TaskError>) {
    let stop = AtomicBool::new(false);
    let mut reports = Vec::new();
    let mut on_epoch = |report: EpochReport, _epochs: u32| {
        if Some(report.epoch) == stop_after {
            stop.store(true, Ordering::Relaxed);
        }
        reports.push(report);
    };
    let outcome = train(task, &mut Single, &mut on_epoch, &stop, &Default::default()).map(|output| std::path::PathBuf::from(output.model_path));
    (reports, outcome)
}

#[test]
fn a_resumed_task_continues_the_same_loss_curve() -> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir()?;
    let dataset = feral_tests::synthetic_dataset(&dir.path().join("data"), 600)?;

    let straight = task(&dataset, &dir.path().join("straight"));
    let (all, model) = run(&straight, None);
    let model = model?;

    let interrupted = task(&dataset, &dir.path().join("interrupted"));
    let (first, stopped) = run(&interrupted, Some(2));
    assert!(matches!(stopped, Err(TaskError::Stopped)), "the first attempt stops after epoch 2");
    let (rest, resumed_model) = run(&interrupted, None);
    let resumed_model = resumed_model?;

    let epochs: Vec<u32> = first.iter().chain(&rest).map(|r| r.epoch).collect();
    assert_eq!(epochs, vec![1, 2, 3, 4], "the second attempt starts at epoch 3");
    for (a, b) in all.iter().zip(first.iter().chain(&rest)) {
        let gap = (a.train_loss - b.train_loss).abs();
        assert!(gap < 1e-4 * a.train_loss.abs().max(1.0), "epoch {}: loss {} uninterrupted, {} resumed", a.epoch, a.train_loss, b.train_loss);
    }
    let sorted = |path: &Path| -> anyhow::Result<Vec<(String, Tensor)>> {
        let mut named = Tensor::read_safetensors(path)?;
        named.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(named)
    };
    let (x, y) = (sorted(&model)?, sorted(&resumed_model)?);
    assert_eq!(x.len(), y.len());
    for ((name, a), (other, b)) in x.iter().zip(&y) {
        assert_eq!(name, other);
        let difference = (a - b).abs().max().double_value(&[]);
        assert!(difference < 1e-4, "{name} differs by {difference}");
    }
    Ok(())
}

#[test]
fn a_torn_checkpoint_is_set_aside_and_the_round_starts_again() -> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir()?;
    let dataset = feral_tests::synthetic_dataset(&dir.path().join("data"), 600)?;
    let torn = task(&dataset, &dir.path().join("torn"));
    let (_, stopped) = run(&torn, Some(2));
    assert!(matches!(stopped, Err(TaskError::Stopped)), "the first attempt stops after epoch 2");
    // What a crash in the middle of a write would have left, had it not been renamed into place.
    let checkpoint = dir.path().join("torn/r0/checkpoint.safetensors");
    let bytes = std::fs::read(&checkpoint)?;
    std::fs::write(&checkpoint, &bytes[..bytes.len() / 2])?;

    let (reports, model) = run(&torn, None);
    let model = model.map_err(|e| anyhow::anyhow!("the attempt after a torn checkpoint must succeed: {e}"))?;
    let epochs: Vec<u32> = reports.iter().map(|r| r.epoch).collect();
    assert_eq!(epochs, vec![1, 2, 3, 4], "the round starts again from its first epoch");
    assert!(checkpoint.with_file_name("checkpoint.safetensors.corrupt").is_file(), "the torn file is kept aside for a person to look at");
    assert!(Tensor::read_safetensors(&model).is_ok(), "the model loads");
    assert!(reports[3].train_accuracy > reports[0].train_accuracy, "it trained: {reports:?}");
    let partial: Vec<_> = std::fs::read_dir(dir.path().join("torn/r0"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".partial-"))
        .collect();
    assert!(partial.is_empty(), "no temporary file is left: {partial:?}");
    Ok(())
}
