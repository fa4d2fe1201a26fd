//! Elastic gangs through the whole system (`resources.min_workers` below the gang's
//! size): a gang placed short trains what the whole gang trains, and a gang that loses a
//! worker goes on from its checkpoint with the rank left, grows back when the worker
//! returns, and ends with the model an undisturbed run makes.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use feral_common::task::{Assignment, EpochReport, TaskKind, TaskOutcome};
use feral_coordinator::model::{JobRecord, TaskState};
use feral_coordinator::store::{MemoryStore, Store};
use feral_proto::v1 as pb;
use feral_tests::*;
use feral_worker::collective::Collective;
use feral_worker::error::TaskError;
use feral_worker::runner::{TaskRunner, TchRunner};

/// A linear model (no batch statistics, no dropout), no augmentation: how a global batch
/// is split over ranks changes the arithmetic only by float rounding.
fn spec(dataset: &Path, epochs: u32, batch_size: u32, resources: &str) -> String {
    format!(
        "version = 1\nname = \"elastic\"\ndataset = {:?}\n\n[model]\narch = \"linear\"\n\n[train]\nepochs = {epochs}\nbatch_size = {batch_size}\nsteps_per_epoch = 15\naugment = false\nlearning_rate = 0.01\n\n[resources]\n{resources}",
        dataset.display().to_string()
    )
}

const TIMEOUT: Duration = Duration::from_secs(300);

async fn finish(coordinator: &RunningCoordinator, id: &str) -> anyhow::Result<pb::Job> {
    let jobs = coordinator.jobs().await?;
    let done = wait_for_state(&jobs, id, &[pb::JobState::Succeeded, pb::JobState::Failed], TIMEOUT).await?;
    anyhow::ensure!(done.state == pb::JobState::Succeeded as i32, "job failed: {}", done.state_reason);
    Ok(done)
}

async fn train(coordinator: &RunningCoordinator, spec: String) -> anyhow::Result<pb::Job> {
    let job = submit(&mut coordinator.jobs().await?, spec).await?;
    finish(coordinator, &job.id).await
}

/// The job's training gangs as the coordinator stored them: (attempt, ranks, state) of
/// each rank 0, in attempt order.
async fn gangs(store: &MemoryStore, id: &str) -> anyhow::Result<Vec<(u32, u32, TaskState)>> {
    let bytes = store.get(&format!("jobs/{id}")).await?.ok_or_else(|| anyhow::anyhow!("job {id} is not stored"))?;
    let job: JobRecord = serde_json::from_slice(&bytes)?;
    Ok(job.tasks.iter().filter(|t| t.kind == TaskKind::Train && t.rank.0 == 0).map(|t| (t.attempt.0, t.world_size, t.state.clone())).collect())
}

/// A coordinator on a store the test reads, and a dataset.
async fn start() -> anyhow::Result<(tempfile::TempDir, std::path::PathBuf, Arc<MemoryStore>, RunningCoordinator)> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let dataset = synthetic_dataset(&dir.path().join("data"), 1200)?;
    let store = Arc::new(MemoryStore::default());
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let coordinator = RunningCoordinator::start(test_settings(dir.path()), store.clone(), any_port).await?;
    Ok((dir, dataset, store, coordinator))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_placed_short_trains_what_the_whole_gang_trains() -> anyhow::Result<()> {
    let (_dir, dataset, store, coordinator) = start().await?;
    let workers = [
        RunningWorker::start(&coordinator.url(), "w1", Arc::new(TchRunner::default())),
        RunningWorker::start(&coordinator.url(), "w2", Arc::new(TchRunner::default())),
    ];

    // A gang of three on two workers: a global batch of 63, split 32 and 31.
    let short = train(&coordinator, spec(&dataset, 2, 21, "max_workers = 3\nmin_workers = 2\n")).await?;
    let placed = gangs(&store, &short.id).await?;
    assert_eq!(placed.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>(), vec![(1, 2)], "placed once, with two ranks");
    let alone = train(&coordinator, spec(&dataset, 2, 63, "workers = 1\n")).await?;
    assert_same_model(&short, &alone, 1e-5)?;

    for worker in workers {
        worker.stop().await?;
    }
    coordinator.stop().await
}

/// Runs tasks with libtorch, but holds each epoch's report (rank 0's, made after its
/// checkpoint is written) until the test opens that epoch, or the task is told to stop.
struct Gated {
    inner: TchRunner,
    open: Arc<AtomicU32>,
}

impl TaskRunner for Gated {
    fn run(
        &self,
        task: &Assignment,
        collective: &mut dyn Collective,
        on_epoch: &mut dyn FnMut(EpochReport, u32),
        stop: &AtomicBool,
    ) -> Result<TaskOutcome, TaskError> {
        let mut held = |report: EpochReport, epochs: u32| {
            while report.epoch > self.open.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            on_epoch(report, epochs);
        };
        self.inner.run(task, collective, &mut held, stop)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_that_loses_a_worker_goes_on_short_and_grows_back_to_the_same_model() -> anyhow::Result<()> {
    let (_dir, dataset, store, coordinator) = start().await?;
    let open = Arc::new(AtomicU32::new(u32::MAX));
    let gated = || Arc::new(Gated { inner: TchRunner::default(), open: open.clone() });
    let w1 = RunningWorker::start(&coordinator.url(), "w1", gated());
    let w2 = RunningWorker::start(&coordinator.url(), "w2", gated());
    let elastic = spec(&dataset, 6, 32, "max_workers = 2\nmin_workers = 1\nmax_attempts = 2\n");

    // The same job undisturbed: two ranks from start to end.
    let undisturbed = train(&coordinator, elastic.clone()).await?;
    assert_eq!(gangs(&store, &undisturbed.id).await?.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>(), vec![(1, 2)]);

    // Epoch 1 is reported; rank 0 then holds its report of epoch 2 (checkpoint written).
    open.store(1, Ordering::SeqCst);
    let job = submit(&mut coordinator.jobs().await?, elastic).await?;
    let jobs = coordinator.jobs().await?;
    wait_until("epoch 1 of the gang of two", TIMEOUT, || {
        let mut jobs = jobs.clone();
        let id = job.id.clone();
        async move { Ok((!get_job(&mut jobs, &id).await?.epochs.is_empty()).then_some(())) }
    })
    .await?;

    // w2 goes silent: its lease runs out, and the gang goes on from epoch 2's checkpoint
    // with w1 alone (as rank 0 of a gang of one), which holds its report of epoch 3.
    w2.stop().await?;
    let store_ref = &store;
    let id = &job.id;
    wait_until("the gang to go on with one rank", TIMEOUT, || async move {
        let gangs = gangs(store_ref, id).await?;
        Ok(gangs.iter().any(|(_, ranks, state)| *ranks == 1 && matches!(state, TaskState::Assigned { .. })).then_some(()))
    })
    .await?;
    let short = get_job(&mut coordinator.jobs().await?, id).await?;
    assert_eq!((short.gang_ranks, short.gang_size), (1, 2), "GetJob shows the gang short");

    // w2 comes back; at the next epoch boundary (epoch 3) the gang grows back to two.
    let w2 = RunningWorker::start(&coordinator.url(), "w2", gated());
    wait_until("w2 to be live again", TIMEOUT, || {
        let mut jobs = jobs.clone();
        async move {
            let listed = jobs.list_workers(pb::ListWorkersRequest::default()).await?.into_inner().workers;
            Ok(listed.iter().any(|w| w.id == "w2" && w.state == pb::WorkerState::Live as i32).then_some(()))
        }
    })
    .await?;
    open.store(u32::MAX, Ordering::SeqCst);
    let disturbed = finish(&coordinator, &job.id).await?;

    let history: Vec<(u32, u32)> = gangs(&store, &job.id).await?.iter().map(|g| (g.0, g.1)).collect();
    assert_eq!(history, vec![(1, 2), (2, 1), (3, 2)], "two ranks, one after the loss, two again");
    // Float rounding differs between one rank and two over 90 steps (about 1e-5 of the
    // scale here); a lost, repeated or misweighted step differs by 1e-2 and more.
    assert_same_model(&disturbed, &undisturbed, 1e-4)?;

    w1.stop().await?;
    w2.stop().await?;
    coordinator.stop().await
}
