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
    let coordinator = RunningCoordinator::start(test_settings(dir.path()), Arc::new(MemoryStore::default()), SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let worker = RunningWorker::start(&coordinator.url(), "w1", Arc::new(TchRunner::default()));
    let mut jobs = coordinator.jobs().await?;
    let job = submit(&mut jobs, job_spec(&dataset, 500)).await?;
    let worker_running_task = |jobs: &feral_proto::v1::job_service_client::JobServiceClient<tonic::transport::Channel>| {
        let mut jobs = jobs.clone();
        async move {
            let workers = jobs.list_workers(pb::ListWorkersRequest::default()).await?.into_inner().workers;
            anyhow::Ok(workers.iter().any(|w| !w.tasks.is_empty()))
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

/// A task that does not stop when told to (a read hung on a broken filesystem) keeps its
/// slot: the coordinator places no other job there until it has stopped, so no two tasks
/// ever share the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_will_not_stop_keeps_its_slot_from_the_next_job() -> anyhow::Result<()> {
    use feral_common::task::{Assignment, EpochReport, TaskOutcome};
    use feral_worker::collective::Collective;
    use feral_worker::error::TaskError;
    use feral_worker::runner::TaskRunner;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// The first task hangs, whatever its stop flag says, until `release`; every task
    /// counts how many run at once.
    struct Hung {
        release: Arc<AtomicBool>,
        first: AtomicBool,
        running: AtomicUsize,
        most: Arc<AtomicUsize>,
        then: feral_tests::scripted::ScriptedRunner,
    }
    impl TaskRunner for Hung {
        fn run(
            &self,
            task: &Assignment,
            collective: &mut dyn Collective,
            on_epoch: &mut dyn FnMut(EpochReport, u32),
            stop: &AtomicBool,
        ) -> Result<TaskOutcome, TaskError> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            if self.first.swap(false, Ordering::SeqCst) {
                while !self.release.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let outcome = self.then.run(task, collective, on_epoch, stop);
            self.running.fetch_sub(1, Ordering::SeqCst);
            outcome
        }
    }

    use feral_tests::scripted::ScriptedRunner;
    init_tracing();
    let dir = tempfile::tempdir()?;
    let coordinator = RunningCoordinator::in_memory(dir.path()).await?;
    let (release, most) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let runner =
        Hung { release: release.clone(), first: AtomicBool::new(true), running: AtomicUsize::new(0), most: most.clone(), then: ScriptedRunner::fast(0) };
    let worker = RunningWorker::start(&coordinator.url(), "w1", Arc::new(runner));
    let mut jobs = coordinator.jobs().await?;
    let hung = submit(&mut jobs, job_spec(dir.path(), 2)).await?;
    wait_for_state(&jobs, &hung.id, &[pb::JobState::Preparing], Duration::from_secs(60)).await?;
    // Started: cancel it; it does not stop.
    wait_until("the hung task to run", Duration::from_secs(60), || {
        let most = most.clone();
        async move { Ok((most.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())) }
    })
    .await?;
    jobs.cancel_job(pb::CancelJobRequest { job_id: hung.id.clone() }).await?;
    let next = submit(&mut jobs, job_spec(dir.path(), 2)).await?;
    // Many heartbeats (100 ms each) while the hung task holds the slot: the next job waits
    // (placed on the slot before the worker said it withholds it, it is not started).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = get_job(&mut jobs, &next.id).await?;
    assert!([pb::JobState::Queued as i32, pb::JobState::Preparing as i32].contains(&waiting.state), "{waiting:?}");
    assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 1, "the next job's task did not start beside the hung one");
    release.store(true, std::sync::atomic::Ordering::SeqCst);
    let done = wait_for_state(&jobs, &next.id, &[pb::JobState::Succeeded, pb::JobState::Failed], Duration::from_secs(60)).await?;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{}", done.state_reason);
    assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 1, "no two tasks ever ran on the one slot");
    worker.stop().await?;
    coordinator.stop().await
}
