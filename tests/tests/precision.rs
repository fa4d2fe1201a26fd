//! `[train] precision = "bf16"`: mixed-precision training (bf16 autocast, fp32 weights)
//! still learns, here on the CPU; on CUDA the same code runs on the GPU.

use std::time::Duration;

use feral_proto::v1 as pb;
use feral_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bf16_job_learns() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let dataset = synthetic_dataset(&dir.path().join("data"), 2400)?;
    let coordinator = RunningCoordinator::in_memory(dir.path()).await?;
    let workers = coordinator.tch_workers(1);
    let mut jobs = coordinator.jobs().await?;
    let job = submit(&mut jobs, format!("{}precision = \"bf16\"\n", job_spec(&dataset, 8))).await?;
    let done = wait_for_state(&jobs, &job.id, &[pb::JobState::Succeeded, pb::JobState::Failed], Duration::from_secs(600)).await?;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "job failed: {}", done.state_reason);
    let validation = done.result.and_then(|r| r.validation).expect("validation metrics");
    // Chance is well under 0.15 macro-F1 on this imbalanced set; fp32 reaches about 0.5.
    assert!(validation.macro_f1 > 0.4, "macro-F1 {}", validation.macro_f1);
    let losses: Vec<f64> = done.epochs.iter().map(|e| e.train_loss).collect();
    assert!(losses[7] < losses[0], "training loss falls: {losses:?}");
    for worker in workers {
        worker.stop().await?;
    }
    coordinator.stop().await
}
