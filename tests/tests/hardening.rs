//! What a careless or hostile user sends cannot take Feral down: a task that panics fails
//! its own job with the reason and the worker serves the next one; two jobs that name one
//! artifacts directory write apart.

use std::sync::Arc;
use std::time::Duration;

use feral_proto::v1 as pb;
use feral_tests::scripted::ScriptedRunner;
use feral_tests::*;

const FINAL: [pb::JobState; 2] = [pb::JobState::Succeeded, pb::JobState::Failed];

fn named(dir: &std::path::Path, name: &str) -> String {
    job_spec(dir, 2).replace("name = \"sandbox\"", &format!("name = {name:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_task_fails_its_job_with_the_reason_and_the_worker_serves_on() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let coordinator = RunningCoordinator::in_memory(dir.path()).await?;
    let runner = ScriptedRunner { panic_for: Some("boom".into()), ..ScriptedRunner::fast(0) };
    let worker = RunningWorker::start(&coordinator.url(), "w1", Arc::new(runner));
    let mut jobs = coordinator.jobs().await?;

    let doomed = submit(&mut jobs, named(dir.path(), "boom")).await?;
    let failed = wait_for_state(&jobs, &doomed.id, &FINAL, Duration::from_secs(60)).await?;
    assert_eq!(failed.state, pb::JobState::Failed as i32, "a panic fails the job: {failed:?}");
    assert!(
        failed.state_reason.contains("panicked") && failed.state_reason.contains("scripted panic in a training task of boom"),
        "the reason names the panic: {:?}",
        failed.state_reason
    );
    // The panic freed the slot and the worker process lives on: the next job runs there.
    let next = submit(&mut jobs, named(dir.path(), "fine")).await?;
    let done = wait_for_state(&jobs, &next.id, &FINAL, Duration::from_secs(60)).await?;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{}", done.state_reason);

    worker.stop().await?;
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_jobs_that_name_one_artifacts_directory_write_apart() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let coordinator = RunningCoordinator::in_memory(dir.path()).await?;
    let worker = RunningWorker::start(&coordinator.url(), "w1", Arc::new(ScriptedRunner::fast(0)));
    let mut jobs = coordinator.jobs().await?;
    let shared = dir.path().join("shared");
    let spec = format!("artifacts = {:?}\n{}", shared.display().to_string(), job_spec(dir.path(), 2));
    let first = submit(&mut jobs, spec.clone()).await?;
    let second = submit(&mut jobs, spec).await?;
    let mut models = Vec::new();
    for job in [&first, &second] {
        let done = wait_for_state(&jobs, &job.id, &FINAL, Duration::from_secs(60)).await?;
        assert_eq!(done.state, pb::JobState::Succeeded as i32, "{}", done.state_reason);
        let model = std::path::PathBuf::from(&done.result.as_ref().expect("a result").model_path);
        assert!(model.starts_with(shared.join(&job.id)), "{} writes under its own directory, not {}", job.id, model.display());
        models.push(model);
    }
    assert_ne!(models[0], models[1]);

    worker.stop().await?;
    coordinator.stop().await
}
