//! Data-parallel training through the whole system: a gang of two ranks on two workers,
//! joined through the coordinator and averaging gradients over a TCP ring, trains the
//! same model as one rank with the same global batch and seed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use feral_common::task::TaskKind;
use feral_coordinator::store::MemoryStore;
use feral_proto::v1 as pb;
use feral_tests::*;

/// A linear model (no batch statistics, no dropout), no augmentation: the arithmetic of
/// one rank on a batch of 64 and of two ranks on 32 each is the same up to float rounding.
fn spec(dataset: &Path, workers: u32, batch_size: u32) -> String {
    format!(
        "version = 1\nname = \"dp\"\ndataset = {:?}\n\n[model]\narch = \"linear\"\n\n[train]\nepochs = 2\nbatch_size = {batch_size}\nsteps_per_epoch = 15\naugment = false\nlearning_rate = 0.01\n\n[resources]\nworkers = {workers}\n",
        dataset.display().to_string()
    )
}

async fn train(coordinator: &RunningCoordinator, spec: String) -> anyhow::Result<pb::Job> {
    let mut jobs = coordinator.jobs().await?;
    let job = submit(&mut jobs, spec).await?;
    let done = wait_for_state(&jobs, &job.id, &[pb::JobState::Succeeded, pb::JobState::Failed], Duration::from_secs(300)).await?;
    anyhow::ensure!(done.state == pb::JobState::Succeeded as i32, "job failed: {}", done.state_reason);
    Ok(done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ranks_train_what_one_rank_trains_on_the_same_global_batch() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let dataset = synthetic_dataset(&dir.path().join("data"), 1200)?;
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let coordinator = RunningCoordinator::start(test_settings(dir.path()), Arc::new(MemoryStore::default()), any_port).await?;
    let runners = [Arc::new(Recording::default()), Arc::new(Recording::default())];
    let workers = [RunningWorker::start(&coordinator.url(), "w1", runners[0].clone()), RunningWorker::start(&coordinator.url(), "w2", runners[1].clone())];

    let gang = train(&coordinator, spec(&dataset, 2, 32)).await?;
    assert_eq!(runners.each_ref().map(|r| r.finished(TaskKind::Train)), [1, 1], "each worker trained one rank of the gang");
    let alone = train(&coordinator, spec(&dataset, 1, 64)).await?;
    assert_eq!(gang.epochs.len(), 2, "rank 0 reports each epoch once");

    assert_same_model(&gang, &alone, 1e-5)?;
    let (two, one) = (gang.result.and_then(|r| r.validation), alone.result.and_then(|r| r.validation));
    let (two, one) = (two.unwrap_or_default(), one.unwrap_or_default());
    assert_eq!(two.samples, one.samples, "the ranks' shares of the validation split add up to all of it");
    assert!((two.macro_f1 - one.macro_f1).abs() < 0.02, "{} vs {}", two.macro_f1, one.macro_f1);

    for worker in workers {
        worker.stop().await?;
    }
    coordinator.stop().await
}
