//! `[train] precision = "bf16"`: mixed-precision training (bf16 autocast, fp32 weights)
//! still learns, here on the CPU; on CUDA the same code runs on the GPU.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use feral_coordinator::store::MemoryStore;
use feral_proto::v1 as pb;
use feral_tests::*;
use feral_worker::runner::TchRunner;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bf16_job_learns() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let dataset = synthetic_dataset(&dir.path().join("data"), 2400)?;
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let coordinator = RunningCoordinator::start(test_settings(dir.path()), Arc::new(MemoryStore::default()), any_port).await?;
    let worker = RunningWorker::start(&coordinator.url(), "w1", Arc::new(TchRunner));
    let mut jobs = coordinator.jobs().await?;
    let job = submit(&mut jobs, format!("{}precision = \"bf16\"\n", job_spec(&dataset, 8))).await?;
    let done = wait_for_state(&jobs, &job.id, &[pb::JobState::Succeeded, pb::JobState::Failed], Duration::from_secs(600)).await?;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "job failed: {}", done.state_reason);
    let validation = done.result.and_then(|r| r.validation).expect("validation metrics");
    // Chance is well under 0.15 macro-F1 on this imbalanced set; fp32 reaches about 0.5.
    assert!(validation.macro_f1 > 0.4, "macro-F1 {}", validation.macro_f1);
    let losses: Vec<f64> = done.epochs.iter().map(|e| e.train_loss).collect();
    assert!(losses[7] < losses[0], "training loss falls: {losses:?}");
    worker.stop().await?;
    coordinator.stop().await
}
