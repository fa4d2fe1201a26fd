//! Faults during pseudo-labelling: a coordinator restarted in the middle resumes the phase
//! without losing or double-counting a shard; a worker lost mid-inference has its shards
//! predicted by another.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use feral_common::task::TaskKind;
use feral_coordinator::store::{EmbeddedStore, MemoryStore};
use feral_proto::v1 as pb;
use feral_tests::scripted::ScriptedRunner;
use feral_tests::*;

const SHARDS: usize = 6;

fn spec(dir: &std::path::Path) -> String {
    format!("{}\n[semi_supervised]\nrounds = 1\n", job_spec(dir, 2))
}

fn slow_inference() -> ScriptedRunner {
    ScriptedRunner { slow: vec![TaskKind::Infer], delay: Duration::from_millis(400), ..ScriptedRunner::fast(SHARDS) }
}

/// Checks the finished job's round 1: every shard counted exactly once.
fn assert_round_one_complete(job: &pb::Job) {
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{}", job.state_reason);
    let round = &job.rounds[1];
    assert_eq!((round.shards_predicted, round.shards_total), (SHARDS as u32, SHARDS as u32));
    // Every shard reports sums [7, 3] over 10 samples: the exact prior is [0.7, 0.3],
    // whatever the order and however often a shard was retried or re-reported.
    assert!((round.class_prior[0] - 0.7).abs() < 1e-12 && (round.class_prior[1] - 0.3).abs() < 1e-12, "{:?}", round.class_prior);
    assert_eq!(round.selection.as_ref().map(|s| s.pool), Some(10 * SHARDS as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_restarted_while_pseudo_labelling_resumes_the_phase() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let store_path = dir.path().join("state.redb");
    let settings = test_settings(dir.path());
    let first = RunningCoordinator::start(settings.clone(), Arc::new(EmbeddedStore::open(&store_path)?), SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let address = first.address;
    let workers = [RunningWorker::start(&first.url(), "w1", Arc::new(slow_inference())), RunningWorker::start(&first.url(), "w2", Arc::new(slow_inference()))];
    let mut jobs = first.jobs().await?;
    let job = submit(&mut jobs, spec(dir.path())).await?;
    let partway = wait_until("some shards predicted", Duration::from_secs(30), || {
        let mut jobs = jobs.clone();
        let id = job.id.clone();
        async move {
            let job = get_job(&mut jobs, &id).await?;
            let done = job.rounds.get(1).map_or(0, |r| r.shards_predicted);
            Ok((done >= 1 && done < SHARDS as u32).then_some(done))
        }
    })
    .await?;
    first.stop().await?;

    let second = RunningCoordinator::start(settings, Arc::new(EmbeddedStore::open(&store_path)?), address).await?;
    let mut jobs = second.jobs().await?;
    let resumed = get_job(&mut jobs, &job.id).await?;
    assert_eq!(resumed.state, pb::JobState::PseudoLabeling as i32, "the phase survives the restart");
    assert!(resumed.rounds[1].shards_predicted >= partway, "predicted shards are not lost");
    let done = wait_for_state(&jobs, &job.id, &[pb::JobState::Succeeded, pb::JobState::Failed], Duration::from_secs(60)).await?;
    assert_round_one_complete(&done);

    for worker in workers {
        worker.stop().await?;
    }
    second.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_of_a_worker_lost_mid_inference_are_predicted_by_another() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let coordinator = RunningCoordinator::start(test_settings(dir.path()), Arc::new(MemoryStore::default()), SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    // The doomed worker never finishes an inference; the survivor is quick.
    let hanging = ScriptedRunner { slow: vec![TaskKind::Infer], delay: Duration::from_secs(30), ..ScriptedRunner::fast(SHARDS) };
    let doomed = RunningWorker::start(&coordinator.url(), "doomed", Arc::new(hanging));
    let survivor = RunningWorker::start(&coordinator.url(), "survivor", Arc::new(slow_inference()));
    let mut jobs = coordinator.jobs().await?;
    let job = submit(&mut jobs, spec(dir.path())).await?;
    wait_until("the doomed worker to hold a shard", Duration::from_secs(30), || {
        let mut jobs = jobs.clone();
        let id = job.id.clone();
        async move {
            let job = get_job(&mut jobs, &id).await?;
            Ok((job.state == pb::JobState::PseudoLabeling as i32 && job.worker_ids.contains(&"doomed".to_owned())).then_some(()))
        }
    })
    .await?;
    doomed.stop().await?;
    let done = wait_for_state(&jobs, &job.id, &[pb::JobState::Succeeded, pb::JobState::Failed], Duration::from_secs(60)).await?;
    assert_round_one_complete(&done);

    survivor.stop().await?;
    coordinator.stop().await
}
