//! Worker leases: a silent worker is lost within the configured time, and its task goes
//! to another worker as a new attempt.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use feral_common::task::TaskKind;
use feral_coordinator::store::MemoryStore;
use feral_proto::v1 as pb;
use feral_tests::scripted::ScriptedRunner;
use feral_tests::*;

/// Trains slowly (100 ms an epoch) and reports `macro_f1` at the end.
fn trainer(epochs: u32, macro_f1: f64) -> ScriptedRunner {
    ScriptedRunner { epochs, slow: vec![TaskKind::Train], delay: Duration::from_millis(100), macro_f1, ..ScriptedRunner::fast(0) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_is_lost_within_its_lease() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let settings = test_settings(dir.path());
    let ttl = Duration::from_millis(settings.lease_ttl_ms);
    let coordinator = RunningCoordinator::start(settings, Arc::new(MemoryStore::default()), SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let mut workers = coordinator.workers().await?;
    let slot = pb::Slot { device: "cpu".into(), name: String::new() };
    // The lease starts when the coordinator handles the request, somewhere inside this call:
    // time it from before the call, so the request's own latency cannot shorten it.
    let registered = Instant::now();
    workers.register(pb::RegisterRequest { worker_id: "silent".into(), hostname: "h".into(), slots: vec![slot] }).await?;

    let jobs = coordinator.jobs().await?;
    wait_until("the silent worker to be lost", ttl * 3, || {
        let mut jobs = jobs.clone();
        async move {
            let all = jobs.list_workers(pb::ListWorkersRequest::default()).await?.into_inner().workers;
            Ok(all.iter().any(|w| w.id == "silent" && w.state == pb::WorkerState::Lost as i32).then_some(()))
        }
    })
    .await?;
    let elapsed = registered.elapsed();
    // The coordinator reads the wall clock in whole milliseconds, this test a monotonic
    // one: allow a few milliseconds between the two, never a real early expiry.
    assert!(elapsed + Duration::from_millis(5) >= ttl, "lost after {elapsed:?}, before its lease of {ttl:?} ran out");

    // A heartbeat brings it back.
    workers.heartbeat(pb::HeartbeatRequest { worker_id: "silent".into(), ..Default::default() }).await?;
    let mut jobs = jobs.clone();
    let all = jobs.list_workers(pb::ListWorkersRequest::default()).await?.into_inner().workers;
    assert_eq!(all[0].state, pb::WorkerState::Live as i32);
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_of_a_lost_worker_moves_to_another_worker() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let coordinator = RunningCoordinator::start(test_settings(dir.path()), Arc::new(MemoryStore::default()), SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let doomed = RunningWorker::start(&coordinator.url(), "doomed", Arc::new(trainer(40, 0.1)));
    let mut jobs = coordinator.jobs().await?;
    let job = submit(&mut jobs, job_spec(dir.path(), 40)).await?;
    wait_for_state(&jobs, &job.id, &[pb::JobState::Training], Duration::from_secs(10)).await?;
    assert_eq!(get_job(&mut jobs, &job.id).await?.worker_ids, vec!["doomed".to_owned()]);

    doomed.stop().await?;
    let rescuer = RunningWorker::start(&coordinator.url(), "rescuer", Arc::new(trainer(3, 0.9)));
    let done = wait_for_state(&jobs, &job.id, &[pb::JobState::Succeeded, pb::JobState::Failed], Duration::from_secs(20)).await?;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{}", done.state_reason);
    let result = done.result.and_then(|r| r.validation).expect("result");
    assert!((result.macro_f1 - 0.9).abs() < 1e-9, "the rescuer's result is the job's result");
    rescuer.stop().await?;
    coordinator.stop().await
}

/// A worker that heartbeats but never starts its assignment (or starts it and never ends
/// it) no longer holds its job for as long as it heartbeats: the task fails as stuck at its
/// deadline, is retried, and the job ends with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_its_worker_never_starts_or_never_ends_fails_as_stuck() -> anyhow::Result<()> {
    use feral_coordinator::model::TaskDeadlines;
    init_tracing();
    let dir = tempfile::tempdir()?;
    let spec = |dataset: &str| format!("version = 1\ndataset = {dataset:?}\n[resources]\nmax_attempts = 2\nretry_backoff_s = 0.1\nretry_backoff_max_s = 0.2\n");

    // Each case's other deadline generous, so that a slow machine cannot hit it first.
    let cases = [
        (false, TaskDeadlines { ack_s: 1, prepare_s: 600, ..TaskDeadlines::default() }, "did not start its prepare task within 1 s"),
        (true, TaskDeadlines { ack_s: 60, prepare_s: 2, ..TaskDeadlines::default() }, "reported no end of its prepare task for 2 s"),
    ];
    for (acknowledges, deadlines, expected) in cases {
        let settings = feral_coordinator::control::Settings { deadlines, ..test_settings(dir.path()) };
        // A coordinator of its own, so that the fake is the only worker.
        let coordinator = RunningCoordinator::start(settings.clone(), Arc::new(MemoryStore::default()), SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let mut jobs = coordinator.jobs().await?;
        let id = format!("fake-{acknowledges}");
        let mut workers = coordinator.workers().await?;
        let slot = pb::Slot { device: "cpu".into(), name: String::new() };
        workers.register(pb::RegisterRequest { worker_id: id.clone(), hostname: "h".into(), slots: vec![slot] }).await?;
        let job = submit(&mut jobs, spec(&format!("/nowhere/{id}"))).await?;
        let started = Instant::now();
        // Heartbeats as a live worker does; lists what it was assigned only if it acknowledges.
        let heartbeats = {
            let (mut workers, id) = (workers.clone(), id.clone());
            tokio::spawn(async move {
                let mut held: Vec<pb::TaskKey> = Vec::new();
                loop {
                    let running = if acknowledges { held.clone() } else { Vec::new() };
                    if let Ok(reply) = workers.heartbeat(pb::HeartbeatRequest { worker_id: id.clone(), running, ..Default::default() }).await {
                        held.extend(reply.into_inner().assignments.into_iter().filter_map(|a| a.key));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let failed = wait_for_state(&jobs, &job.id, &[pb::JobState::Failed], Duration::from_secs(60)).await?;
        heartbeats.abort();
        assert!(failed.state_reason.contains(expected) && failed.state_reason.contains("failed as stuck"), "{}", failed.state_reason);
        assert!(failed.state_reason.contains(&format!("worker {id}")), "{}", failed.state_reason);
        eprintln!("stuck twice, failed after {:?}", started.elapsed());
        // The worker itself stays live: it heartbeats; only its task was stuck.
        let listed = jobs.list_workers(pb::ListWorkersRequest::default()).await?.into_inner().workers;
        assert!(listed.iter().any(|w| w.id == id && w.state == pb::WorkerState::Live as i32));
        coordinator.stop().await?;
    }
    Ok(())
}
