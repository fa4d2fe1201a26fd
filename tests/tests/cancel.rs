//! Cancelling a job stops its training thread and the job ends `Cancelled`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use feral_coordinator::store::MemoryStore;
use feral_proto::v1 as pb;
use feral_tests::*;
use feral_worker::runner::TchRunner;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_training_thread() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let dataset = synthetic_dataset(&dir.path().join("data"), 1200)?;
    let coordinator = RunningCoordinator::start(
        test_settings(dir.path()),
        Arc::new(MemoryStore::default()),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await?;
    let worker = RunningWorker::start(&coordinator.url(), "w1", Arc::new(TchRunner::default()));
    let mut jobs = coordinator.jobs().await?;
    let job = submit(&mut jobs, job_spec(&dataset, 500)).await?;
    let worker_running_task = |jobs: &feral_proto::v1::job_service_client::JobServiceClient<tonic::transport::Channel>| {
        let mut jobs = jobs.clone();
        async move {
            let workers = jobs.list_workers(pb::ListWorkersRequest::default()).await?.into_inner().workers;
            anyhow::Ok(workers.iter().any(|w| !w.task_ids.is_empty()))
        }
    };
    wait_until("the worker to run the task", Duration::from_secs(20), || {
        let check = worker_running_task(&jobs);
        async move { Ok(check.await?.then_some(())) }
    })
    .await?;

    let cancelled = jobs.cancel_job(pb::CancelJobRequest { job_id: job.id.clone() }).await?.into_inner();
    assert_eq!(cancelled.state, pb::JobState::Cancelled as i32);
    // The worker reports its running tasks with every heartbeat; the thread is gone when
    // the task leaves that list.
    wait_until("the training thread to stop", Duration::from_secs(20), || {
        let check = worker_running_task(&jobs);
        async move { Ok((!check.await?).then_some(())) }
    })
    .await?;
    let after = get_job(&mut jobs, &job.id).await?;
    assert_eq!(after.state, pb::JobState::Cancelled as i32);
    assert!(after.epochs.len() < 500);
    let again = jobs.cancel_job(pb::CancelJobRequest { job_id: job.id.clone() }).await?.into_inner();
    assert_eq!(again.state, pb::JobState::Cancelled as i32, "cancelling twice is harmless");

    worker.stop().await?;
    coordinator.stop().await
}
