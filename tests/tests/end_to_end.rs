//! A coordinator and two workers in one process train a real model on generated data.

use std::time::Duration;

use feral_proto::v1 as pb;
use feral_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_train_jobs_that_learn() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let dataset = synthetic_dataset(&dir.path().join("data"), 2400)?;
    let coordinator = RunningCoordinator::in_memory(dir.path()).await?;
    let workers = coordinator.tch_workers(2);
    let mut jobs = coordinator.jobs().await?;
    wait_until("two live workers", Duration::from_secs(20), || {
        let mut jobs = jobs.clone();
        async move {
            let workers = jobs.list_workers(pb::ListWorkersRequest::default()).await?.into_inner().workers;
            Ok((workers.iter().filter(|w| w.state == pb::WorkerState::Live as i32).count() == 2).then_some(()))
        }
    })
    .await?;

    // Two jobs at once: one per worker.
    let first = submit(&mut jobs, job_spec(&dataset, 8)).await?;
    let second = submit(&mut jobs, job_spec(&dataset, 2)).await?;
    wait_for_state(&jobs, &first.id, &[pb::JobState::Training], Duration::from_secs(20)).await?;
    let other = wait_for_state(&jobs, &second.id, &[pb::JobState::Training], Duration::from_secs(20)).await?;
    let running = get_job(&mut jobs, &first.id).await?;
    assert_eq!(running.state, pb::JobState::Training as i32, "the second job runs beside the first");
    assert_ne!(running.worker_ids, other.worker_ids, "each job has its own worker");

    for (job, epochs) in [(&first, 8), (&second, 2)] {
        let done = wait_for_state(&jobs, &job.id, &[pb::JobState::Succeeded, pb::JobState::Failed], Duration::from_secs(600)).await?;
        assert_eq!(done.state, pb::JobState::Succeeded as i32, "job failed: {}", done.state_reason);
        assert_eq!(done.epochs.len(), epochs, "one progress entry per epoch");
        let result = done.result.expect("a succeeded job has a result");
        let validation = result.validation.expect("validation metrics");
        assert_eq!(result.class_names.len(), 7);
        assert!(std::path::Path::new(&result.model_path).is_file(), "model saved at {}", result.model_path);
        if epochs == 8 {
            // Chance is 1/7 accuracy and well under 0.15 macro-F1 on this imbalanced set.
            assert!(validation.macro_f1 > 0.45, "macro-F1 {} is not clearly above chance", validation.macro_f1);
            assert!(validation.accuracy > 0.5, "accuracy {}", validation.accuracy);
            let losses: Vec<f64> = done.epochs.iter().map(|e| e.train_loss).collect();
            assert!(losses[7] < losses[0], "training loss falls: {losses:?}");
        }
    }

    for worker in workers {
        worker.stop().await?;
    }
    coordinator.stop().await
}
