//! Bad input gets a clear error naming what was wrong, and nothing crashes: the
//! coordinator keeps serving after every case.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use feral_coordinator::store::MemoryStore;
use feral_proto::v1 as pb;
use feral_tests::*;
use feral_worker::runner::TchRunner;
use tonic::Code;

async fn start() -> anyhow::Result<(tempfile::TempDir, RunningCoordinator)> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let coordinator = RunningCoordinator::start(test_settings(dir.path()), Arc::new(MemoryStore::default()), any_port).await?;
    Ok((dir, coordinator))
}

fn expect_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, needle: &str) {
    let status = result.expect_err("the request must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(needle), "message {:?} does not name {needle:?}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_job_specs_are_refused_with_the_field_named() -> anyhow::Result<()> {
    let (dir, coordinator) = start().await?;
    let mut jobs = coordinator.jobs().await?;
    let data = dir.path().display().to_string();
    let cases = [
        ("version = 1\ndataset = [unclosed\n".to_owned(), "not valid TOML"),
        (format!("version = 1\ndataset = {data:?}\nlearning_rate = 0.1\n"), "learning_rate"),
        (format!("version = 1\ndataset = {data:?}\n[train]\nepochs = -3\n"), "train.epochs"),
        (format!("version = 1\ndataset = {data:?}\n[train]\nbatch_size = 0\n"), "train.batch_size"),
        ("version = 1\n".to_owned(), "dataset"),
        // Numbers beyond their range are refused, never truncated (a gang of 2³²−1 ranks
        // once made the coordinator allocate for every one of them, on every restart).
        (format!("version = 1\ndataset = {data:?}\n[resources]\nworkers = 4294967295\n"), "resources.workers`: must be in 1..=256"),
        (format!("version = 1\ndataset = {data:?}\n[train]\nepochs = 4294967296\n"), "train.epochs`: must be in 1..=100000"),
        (format!("version = 1\ndataset = {data:?}\nname = \"{}\"\n", "n".repeat(3 << 20)), "spec_toml` must be at most 65536 bytes"),
        (format!("version = 1\ndataset = {data:?}\nname = \"\\u001b[31mred\"\n"), "`name` must not contain control characters"),
        (String::new(), "spec_toml"),
    ];
    for (spec_toml, needle) in cases {
        expect_status(jobs.submit_job(pb::SubmitJobRequest { spec_toml }).await, Code::InvalidArgument, needle);
    }
    assert!(jobs.list_jobs(pb::ListJobsRequest::default()).await?.into_inner().jobs.is_empty(), "nothing was queued");
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_missing_required_fields_or_naming_unknown_ids_are_refused() -> anyhow::Result<()> {
    let (_dir, coordinator) = start().await?;
    let mut jobs = coordinator.jobs().await?;
    let mut workers = coordinator.workers().await?;
    expect_status(jobs.get_job(pb::GetJobRequest { job_id: String::new() }).await, Code::InvalidArgument, "job_id");
    expect_status(jobs.get_job(pb::GetJobRequest { job_id: "job-nope".into() }).await, Code::NotFound, "job-nope");
    expect_status(jobs.cancel_job(pb::CancelJobRequest { job_id: "job-nope".into() }).await, Code::NotFound, "job-nope");
    expect_status(jobs.watch_job(pb::WatchJobRequest { job_id: "job-nope".into() }).await, Code::NotFound, "job-nope");
    let register = |slots: Vec<pb::Slot>| pb::RegisterRequest { worker_id: "w".into(), hostname: "h".into(), slots };
    expect_status(workers.register(register(vec![])).await, Code::InvalidArgument, "slots");
    let tpu = pb::Slot { device: "tpu:0".into(), name: String::new() };
    expect_status(workers.register(register(vec![tpu])).await, Code::InvalidArgument, "tpu:0");
    // Ids, hostnames and slot lists are bounded, so that no registration can make
    // listings too large to send or print escape codes on a user's terminal.
    let cpu = || pb::Slot { device: "cpu".into(), name: "cpu".into() };
    let named = |worker_id: String| pb::RegisterRequest { worker_id, hostname: "h".into(), slots: vec![cpu()] };
    expect_status(workers.register(named("w".repeat(1 << 20))).await, Code::InvalidArgument, "`worker_id` must be 1 to 128 characters");
    expect_status(workers.register(named("w\u{1b}[2Jx".into())).await, Code::InvalidArgument, "`worker_id` may hold only");
    let many = pb::RegisterRequest { worker_id: "w".into(), hostname: "h".into(), slots: vec![cpu(); 250_000] };
    expect_status(workers.register(many).await, Code::InvalidArgument, "`slots` must list at most 64 slots");
    let hostname = pb::RegisterRequest { worker_id: "w".into(), hostname: "h\u{7}".into(), slots: vec![cpu()] };
    expect_status(workers.register(hostname).await, Code::InvalidArgument, "`hostname`");
    let heartbeat = pb::HeartbeatRequest { worker_id: String::new(), ..Default::default() };
    expect_status(workers.heartbeat(heartbeat).await, Code::InvalidArgument, "worker_id");
    let heartbeat = pb::HeartbeatRequest { worker_id: "stranger".into(), ..Default::default() };
    expect_status(workers.heartbeat(heartbeat).await, Code::NotFound, "stranger");
    // Every report names its task by key: job, round, kind, shard, attempt, rank.
    let key = |job_id: &str| Some(pb::TaskKey { job_id: job_id.into(), kind: pb::TaskKind::Train as i32, attempt: 1, ..Default::default() });
    let progress = pb::ReportProgressRequest { worker_id: "w".into(), task: key("job-1"), epoch: None, epochs_total: 1 };
    expect_status(workers.report_progress(progress).await, Code::InvalidArgument, "epoch");
    let finish = |task, outcome| pb::FinishTaskRequest { worker_id: "w".into(), task, outcome };
    let changed = |change: fn(&mut pb::TaskKey)| {
        key("job-1").map(|mut k| {
            change(&mut k);
            k
        })
    };
    expect_status(workers.finish_task(finish(None, None)).await, Code::InvalidArgument, "`task` is required");
    expect_status(workers.finish_task(finish(key(""), None)).await, Code::InvalidArgument, "`job_id` is required");
    expect_status(workers.finish_task(finish(changed(|k| k.attempt = 0), None)).await, Code::InvalidArgument, "`attempt` is required");
    expect_status(workers.finish_task(finish(changed(|k| k.kind = 0), None)).await, Code::InvalidArgument, "`kind` is required");
    expect_status(workers.finish_task(finish(changed(|k| k.kind = pb::TaskKind::Infer as i32), None)).await, Code::InvalidArgument, "`shard` is required");
    expect_status(
        workers.finish_task(finish(changed(|k| k.shard = "u.safetensors".into()), None)).await,
        Code::InvalidArgument,
        "`shard` is only for an infer task",
    );
    expect_status(workers.finish_task(finish(key("job-1"), None)).await, Code::InvalidArgument, "outcome");
    let empty_train = pb::finish_task_request::Outcome::Train(pb::TrainOutcome::default());
    expect_status(workers.finish_task(finish(key("job-1"), Some(empty_train))).await, Code::InvalidArgument, "train.validation");
    let fail = pb::FailTaskRequest { worker_id: "w".into(), task: key("job-1"), reason: String::new(), retryable: false };
    expect_status(workers.fail_task(fail).await, Code::InvalidArgument, "reason");
    let heartbeat = pb::HeartbeatRequest { worker_id: "w".into(), running: vec![pb::TaskKey::default()], ..Default::default() };
    expect_status(workers.heartbeat(heartbeat).await, Code::InvalidArgument, "`running`");
    // Well formed, but of a job that does not exist: not an OK that would make the worker
    // believe it was recorded.
    let prepared = pb::finish_task_request::Outcome::Prepare(pb::PrepareOutcome {
        class_names: vec!["a".into(), "b".into()],
        train_samples: 1,
        val_samples: 1,
        unlabeled_shards: vec![],
    });
    let nope = || Some(pb::TaskKey { job_id: "job-nope".into(), kind: pb::TaskKind::Prepare as i32, attempt: 1, ..Default::default() });
    expect_status(workers.finish_task(finish(nope(), Some(prepared))).await, Code::NotFound, "no job with id `job-nope`");
    let fail = pb::FailTaskRequest { worker_id: "w".into(), task: nope(), reason: "x".into(), retryable: false };
    expect_status(workers.fail_task(fail).await, Code::NotFound, "no job with id `job-nope`");
    // Still serving.
    assert!(jobs.list_jobs(pb::ListJobsRequest::default()).await?.into_inner().jobs.is_empty());
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_on_missing_or_corrupt_datasets_fail_with_the_file_named() -> anyhow::Result<()> {
    let (dir, coordinator) = start().await?;
    let worker = RunningWorker::start(&coordinator.url(), "w1", Arc::new(TchRunner::default()));
    let mut jobs = coordinator.jobs().await?;

    let missing = dir.path().join("no-such-dataset");
    let job = submit(&mut jobs, job_spec(&missing, 1)).await?;
    let failed = wait_for_state(&jobs, &job.id, &[pb::JobState::Failed, pb::JobState::Succeeded], Duration::from_secs(30)).await?;
    assert_eq!(failed.state, pb::JobState::Failed as i32);
    assert!(
        failed.state_reason.contains("dataset") && failed.state_reason.contains("no-such-dataset is refused: it does not exist"),
        "{}",
        failed.state_reason
    );
    assert_eq!(failed.epochs.len(), 0);

    let corrupt = synthetic_dataset(&dir.path().join("corrupt"), 300)?;
    let shard = corrupt.join("train-00000.safetensors");
    let mut bytes = std::fs::read(&shard)?;
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&shard, bytes)?;
    let job = submit(&mut jobs, job_spec(&corrupt, 1)).await?;
    let failed = wait_for_state(&jobs, &job.id, &[pb::JobState::Failed, pb::JobState::Succeeded], Duration::from_secs(30)).await?;
    assert_eq!(failed.state, pb::JobState::Failed as i32);
    assert!(failed.state_reason.contains("train-00000.safetensors"), "{}", failed.state_reason);

    // The worker survived both and still trains.
    let good = synthetic_dataset(&dir.path().join("good"), 300)?;
    let job = submit(&mut jobs, job_spec(&good, 1)).await?;
    let done = wait_for_state(&jobs, &job.id, &[pb::JobState::Failed, pb::JobState::Succeeded], Duration::from_secs(60)).await?;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{}", done.state_reason);

    worker.stop().await?;
    coordinator.stop().await
}
