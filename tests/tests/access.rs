//! Tokens and roles on a real coordinator over gRPC (coordinator `auth`): a call without a
//! token, with an unknown one, or with a token of the wrong role is refused and changes
//! nothing; a worker token speaks only for its own worker, so nobody can take over a live
//! worker's id or finish, report or fail its tasks; workers and the CLI's API with the right
//! tokens run a job to success.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use feral_coordinator::auth::Tokens;
use feral_coordinator::store::MemoryStore;
use feral_coordinator::Access;
use feral_proto::credentials::{AuthedChannel, BearerToken};
use feral_proto::v1 as pb;
use feral_proto::v1::job_service_client::JobServiceClient;
use feral_proto::v1::worker_service_client::WorkerServiceClient;
use feral_tests::scripted::ScriptedRunner;
use feral_tests::*;
use tonic::transport::Channel;
use tonic::Code;

const TOKENS: &str = TEST_TOKENS;

fn token(secret: &str) -> BearerToken {
    BearerToken::new(secret).expect("token")
}

async fn coordinator(root: &std::path::Path) -> anyhow::Result<RunningCoordinator> {
    let access = Access { tokens: Some(Arc::new(Tokens::parse(TOKENS).map_err(anyhow::Error::msg)?)), ..Access::default() };
    RunningCoordinator::start_with(test_settings(root), access, Arc::new(MemoryStore::default()), SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// A small dataset and a coordinator with [`TOKENS`]; the directory holds both.
async fn sandbox() -> anyhow::Result<(tempfile::TempDir, std::path::PathBuf, RunningCoordinator)> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let dataset = synthetic_dataset(&dir.path().join("data"), 200)?;
    let coordinator = coordinator(dir.path()).await?;
    Ok((dir, dataset, coordinator))
}

async fn channel(coordinator: &RunningCoordinator) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(coordinator.url())?.connect().await?)
}

async fn jobs_as(coordinator: &RunningCoordinator, token: BearerToken) -> anyhow::Result<JobServiceClient<AuthedChannel>> {
    Ok(JobServiceClient::new(token.channel(channel(coordinator).await?)))
}

async fn workers_as(coordinator: &RunningCoordinator, token: BearerToken) -> anyhow::Result<WorkerServiceClient<AuthedChannel>> {
    Ok(WorkerServiceClient::new(token.channel(channel(coordinator).await?)))
}

fn register(id: &str, hostname: &str) -> pb::RegisterRequest {
    pb::RegisterRequest { worker_id: id.into(), hostname: hostname.into(), slots: vec![pb::Slot { device: "cpu".into(), name: "cpu".into() }] }
}

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    result.expect_err("refused").code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_the_right_token_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let (_dir, dataset, coordinator) = sandbox().await?;
    let submit = || pb::SubmitJobRequest { spec_toml: job_spec(&dataset, 2) };

    // The job API: no token, an unknown token, a malformed header, a worker's token.
    assert_eq!(code(jobs_as(&coordinator, BearerToken::none()).await?.submit_job(submit()).await), Code::Unauthenticated);
    assert_eq!(code(jobs_as(&coordinator, token("mallory-0123456789")).await?.submit_job(submit()).await), Code::Unauthenticated);
    let mut raw = JobServiceClient::new(channel(&coordinator).await?);
    let mut request = tonic::Request::new(submit());
    request.metadata_mut().insert("authorization", "Basic YWxpY2U6cHc=".parse()?);
    assert_eq!(code(raw.submit_job(request).await), Code::Unauthenticated);
    let refused = jobs_as(&coordinator, token("w1-0123456789abcdef")).await?.submit_job(submit()).await.expect_err("worker token");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("`w1` has role worker"), "{}", refused.message());
    assert_eq!(code(jobs_as(&coordinator, token("w1-0123456789abcdef")).await?.list_jobs(pb::ListJobsRequest::default()).await), Code::PermissionDenied);

    // The worker API: no token, a submitter's token, a worker's token for another id.
    assert_eq!(code(workers_as(&coordinator, BearerToken::none()).await?.register(register("w1", "h")).await), Code::Unauthenticated);
    assert_eq!(code(workers_as(&coordinator, token("alice-0123456789abcdef")).await?.register(register("w1", "h")).await), Code::PermissionDenied);
    let refused = workers_as(&coordinator, token("w2-0123456789abcdef")).await?.register(register("w1", "h")).await.expect_err("as w1");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("`w1`"), "{}", refused.message());

    // A worker process started with another worker's token stops with the reason.
    let impostor = RunningWorker::start_with_token(&coordinator.url(), "w1", Arc::new(ScriptedRunner::fast(0)), token("w2-0123456789abcdef"));
    let ended = wait_until("the impostor worker to give up", Duration::from_secs(30), || {
        let finished = impostor.is_finished();
        async move { Ok(finished.then_some(())) }
    })
    .await;
    ended?;
    let error = impostor.stop().await.expect_err("refused").to_string();
    assert!(error.contains("refused this worker's credential") && error.contains("`w1`"), "{error}");

    // Nothing of that changed anything.
    let mut alice = jobs_as(&coordinator, token("alice-0123456789abcdef")).await?;
    assert!(alice.list_jobs(pb::ListJobsRequest::default()).await?.into_inner().jobs.is_empty(), "no job was submitted");
    assert!(alice.list_workers(pb::ListWorkersRequest::default()).await?.into_inner().workers.is_empty(), "no worker registered");
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cannot_take_over_another_worker_or_its_tasks() -> anyhow::Result<()> {
    let (_dir, dataset, coordinator) = sandbox().await?;
    let mut alice = jobs_as(&coordinator, token("alice-0123456789abcdef")).await?;
    let (mut w1, mut w2) = (workers_as(&coordinator, token("w1-0123456789abcdef")).await?, workers_as(&coordinator, token("w2-0123456789abcdef")).await?);

    // w1 registers by hand and is given the job's first task.
    w1.register(register("w1", "node-1")).await?;
    let job = alice.submit_job(pb::SubmitJobRequest { spec_toml: job_spec(&dataset, 2) }).await?.into_inner().job.expect("job");
    let task = wait_until("w1's first assignment", Duration::from_secs(30), || {
        let mut w1 = w1.clone();
        async move {
            let reply = w1.heartbeat(pb::HeartbeatRequest { worker_id: "w1".into(), ..Default::default() }).await?.into_inner();
            Ok(reply.assignments.into_iter().next())
        }
    })
    .await?;
    w1.heartbeat(pb::HeartbeatRequest { worker_id: "w1".into(), running: task.key.clone().into_iter().collect(), ..Default::default() }).await?;

    // w2, with its own token, tries to pass for w1 and to end w1's task.
    w2.register(register("w2", "node-2")).await?;
    assert_eq!(code(w2.register(register("w1", "evil")).await), Code::PermissionDenied);
    assert_eq!(code(w2.heartbeat(pb::HeartbeatRequest { worker_id: "w1".into(), ..Default::default() }).await), Code::PermissionDenied);
    let forged = pb::FinishTaskRequest { worker_id: "w1".into(), task: task.key.clone(), outcome: None };
    assert_eq!(code(w2.finish_task(forged).await), Code::PermissionDenied);
    let fail = |worker_id: &str| pb::FailTaskRequest { worker_id: worker_id.into(), task: task.key.clone(), reason: "forged".into(), retryable: false };
    assert_eq!(code(w2.fail_task(fail("w1")).await), Code::PermissionDenied);
    // As itself, w2 is known but the task is not its own.
    assert_eq!(code(w2.fail_task(fail("w2")).await), Code::FailedPrecondition);
    let progress = pb::ReportProgressRequest { worker_id: "w1".into(), task: task.key.clone(), ..Default::default() };
    assert_eq!(code(w2.report_progress(progress).await), Code::PermissionDenied);
    let join = pb::JoinGangRequest { worker_id: "w1".into(), task: task.key.clone(), address: "10.6.6.6:1".into(), ..Default::default() };
    assert_eq!(code(w2.join_gang(join).await), Code::PermissionDenied);

    // The job still waits on w1's task (its first: checking the dataset), and w1 is still
    // the worker it registered as.
    let now = alice.get_job(pb::GetJobRequest { job_id: job.id.clone() }).await?.into_inner();
    assert_eq!(now.state, pb::JobState::Preparing as i32, "{now:?}");
    let workers = alice.list_workers(pb::ListWorkersRequest::default()).await?.into_inner().workers;
    let w1_now = workers.iter().find(|w| w.id == "w1").expect("w1 listed");
    assert_eq!(w1_now.hostname, "node-1");
    assert_eq!(w1_now.tasks, task.key.clone().into_iter().collect::<Vec<_>>());

    // w1 itself may fail its own task.
    w1.fail_task(pb::FailTaskRequest { reason: "stopping".into(), worker_id: "w1".into(), ..fail("w1") }).await?;
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_with_their_tokens_run_a_job_to_success() -> anyhow::Result<()> {
    let (_dir, dataset, coordinator) = sandbox().await?;
    let worker = RunningWorker::start_with_token(&coordinator.url(), "w1", Arc::new(ScriptedRunner::fast(0)), token("w1-0123456789abcdef"));
    let mut alice = jobs_as(&coordinator, token("alice-0123456789abcdef")).await?;
    let job = alice.submit_job(pb::SubmitJobRequest { spec_toml: job_spec(&dataset, 2) }).await?.into_inner().job.expect("job");
    let done = wait_until("the job to end", Duration::from_secs(60), || {
        let mut alice = alice.clone();
        let id = job.id.clone();
        async move {
            let job = alice.get_job(pb::GetJobRequest { job_id: id }).await?.into_inner();
            Ok((job.state == pb::JobState::Succeeded as i32 || job.state == pb::JobState::Failed as i32).then_some(job))
        }
    })
    .await?;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{}", done.state_reason);
    worker.stop().await?;
    coordinator.stop().await
}

/// Jobs belong to the token that submitted them: bob neither sees nor changes alice's job
/// (it answers as a job that does not exist), an admin sees and changes every job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitter_sees_and_changes_only_its_own_jobs() -> anyhow::Result<()> {
    let (_dir, dataset, coordinator) = sandbox().await?;
    let mut alice = jobs_as(&coordinator, token("alice-0123456789abcdef")).await?;
    let mut bob = jobs_as(&coordinator, token("bob-0123456789abcdef")).await?;
    let mut root = jobs_as(&coordinator, token("root-0123456789abcdef")).await?;
    let submit = |spec_toml: String| pb::SubmitJobRequest { spec_toml };
    let hers = alice.submit_job(submit(job_spec(&dataset, 1))).await?.into_inner().job.expect("job");
    assert_eq!(hers.owner, "alice");
    let his = bob.submit_job(submit(job_spec(&dataset, 1))).await?.into_inner().job.expect("job");

    let by_id = |id: &str| pb::GetJobRequest { job_id: id.into() };
    let refused = bob.get_job(by_id(&hers.id)).await.expect_err("bob reads alice's job");
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    assert_eq!(refused.message(), format!("no job with id `{}`", hers.id), "as for an id nobody has");
    assert_eq!(code(bob.cancel_job(pb::CancelJobRequest { job_id: hers.id.clone() }).await), Code::NotFound);
    assert_eq!(code(bob.resume_job(pb::ResumeJobRequest { job_id: hers.id.clone() }).await), Code::NotFound);
    assert_eq!(code(bob.watch_job(pb::WatchJobRequest { job_id: hers.id.clone() }).await), Code::NotFound);
    let listed = |jobs: pb::ListJobsResponse| jobs.jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(listed(bob.list_jobs(pb::ListJobsRequest::default()).await?.into_inner()), vec![his.id.clone()]);
    assert_eq!(listed(alice.list_jobs(pb::ListJobsRequest::default()).await?.into_inner()), vec![hers.id.clone()]);
    let mut everything = listed(root.list_jobs(pb::ListJobsRequest::default()).await?.into_inner());
    everything.sort();
    let mut both = vec![hers.id.clone(), his.id.clone()];
    both.sort();
    assert_eq!(everything, both, "an admin sees every job");

    // Nothing bob tried changed alice's job; she and an admin may cancel it.
    assert_eq!(alice.get_job(by_id(&hers.id)).await?.into_inner().state, pb::JobState::Queued as i32, "no worker: still queued");
    let cancelled = alice.cancel_job(pb::CancelJobRequest { job_id: hers.id.clone() }).await?.into_inner();
    assert_eq!(cancelled.state, pb::JobState::Cancelled as i32);
    let cancelled = root.cancel_job(pb::CancelJobRequest { job_id: his.id.clone() }).await?.into_inner();
    assert_eq!(cancelled.state, pb::JobState::Cancelled as i32);
    coordinator.stop().await
}
