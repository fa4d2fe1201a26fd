//! A coordinator stopped mid-job and started again on the same store (the embedded file,
//! or a real etcd) still knows the job; the worker carries on and the job completes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use feral_coordinator::store::etcd_process::EtcdProcess;
use feral_coordinator::store::{EmbeddedStore, Store};
use feral_proto::v1 as pb;
use feral_tests::*;
use feral_worker::metrics::WorkerMetrics;
use feral_worker::runner::TchRunner;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_coordinator_finishes_the_job() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store_path = dir.path().join("state.redb");
    let open = async || -> anyhow::Result<Arc<dyn Store>> { Ok(Arc::new(EmbeddedStore::open(&store_path)?) as Arc<dyn Store>) };
    a_restarted_coordinator_finishes_the_job_on(dir.path(), open).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_coordinator_on_etcd_finishes_the_job() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let etcd = EtcdProcess::start().await;
    let open = async || -> anyhow::Result<Arc<dyn Store>> { Ok(Arc::new(etcd.store("/feral/").await) as Arc<dyn Store>) };
    a_restarted_coordinator_finishes_the_job_on(dir.path(), open).await
}

/// A job on a coordinator with the store `open` gives, stopped after the first epoch and
/// started again on the same state, opened anew.
async fn a_restarted_coordinator_finishes_the_job_on(root: &std::path::Path, open: impl AsyncFn() -> anyhow::Result<Arc<dyn Store>>) -> anyhow::Result<()> {
    init_tracing();
    let dataset = synthetic_dataset(&root.join("data"), 2400)?;
    let settings = test_settings(root);
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));

    let first = RunningCoordinator::start(settings.clone(), open().await?, any_port).await?;
    let address = first.address;
    let metrics = Arc::new(WorkerMetrics::default());
    let worker = RunningWorker::start(&first.url(), "w1", Arc::new(TchRunner::observed(metrics.clone())));
    let mut jobs = first.jobs().await?;
    let job = submit(&mut jobs, job_spec(&dataset, 6)).await?;
    wait_until("the first epoch", Duration::from_secs(120), || {
        let mut jobs = jobs.clone();
        let id = job.id.clone();
        async move { Ok((!get_job(&mut jobs, &id).await?.epochs.is_empty()).then_some(())) }
    })
    .await?;
    first.stop().await?;

    // While the coordinator is down the worker keeps training (and retries its reports).
    let trained = metrics.images_trained();
    wait_until("training while the coordinator is down", Duration::from_secs(120), || {
        let metrics = metrics.clone();
        async move { Ok((metrics.images_trained() > trained).then_some(())) }
    })
    .await?;
    let second = RunningCoordinator::start(settings, open().await?, address).await?;
    let mut jobs = second.jobs().await?;
    let known = get_job(&mut jobs, &job.id).await?;
    assert!(!known.epochs.is_empty(), "progress made before the restart is kept");
    assert_eq!(known.worker_ids, vec!["w1".to_owned()]);

    let done = wait_for_state(&jobs, &job.id, &[pb::JobState::Succeeded, pb::JobState::Failed], Duration::from_secs(300)).await?;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "job failed: {}", done.state_reason);
    let epochs: Vec<u32> = done.epochs.iter().map(|e| e.epoch).collect();
    assert_eq!(epochs, (1..=6).collect::<Vec<_>>(), "every epoch recorded once");
    let workers = jobs.list_workers(pb::ListWorkersRequest::default()).await?.into_inner().workers;
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].state, pb::WorkerState::Live as i32, "the worker is known and live again");

    worker.stop().await?;
    second.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_with_a_watcher_stops_promptly_and_frees_its_store() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let store_path = dir.path().join("state.redb");
    let settings = test_settings(dir.path());
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let coordinator = RunningCoordinator::start(settings.clone(), Arc::new(EmbeddedStore::open(&store_path)?), any_port).await?;
    let mut jobs = coordinator.jobs().await?;
    let job = submit(&mut jobs, job_spec(dir.path(), 1)).await?;
    let mut events = jobs.watch_job(pb::WatchJobRequest { job_id: job.id.clone() }).await?.into_inner();
    assert!(events.message().await?.is_some(), "the watch starts with the job as it is");

    let started = std::time::Instant::now();
    coordinator.stop().await?;
    assert!(started.elapsed() < Duration::from_secs(5), "stopping took {:?}", started.elapsed());
    let ended = events.message().await;
    assert!(ended.is_err() || matches!(ended, Ok(None)), "the open watch ends with the server");
    // The store file is free again for the next coordinator.
    let again = RunningCoordinator::start(settings, Arc::new(EmbeddedStore::open(&store_path)?), any_port).await?;
    again.stop().await
}
