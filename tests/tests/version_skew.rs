//! A worker given an assignment it cannot run (here, a task kind from a newer coordinator)
//! fails that task with the reason instead of leaving its job waiting, and serves on. The
//! coordinator is a scripted `WorkerService` that records what the worker reports.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use feral_proto::v1 as pb;
use feral_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use feral_tests::scripted::ScriptedRunner;
use feral_tests::*;
use tonic::{Request, Response, Status};

/// Answers the first heartbeat with one assignment of an unknown kind; records failures.
#[derive(Default)]
struct Scripted {
    sent: Mutex<bool>,
    failures: Arc<Mutex<Vec<pb::FailTaskRequest>>>,
}

#[tonic::async_trait]
impl WorkerService for Scripted {
    async fn register(&self, _: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        Ok(Response::new(pb::RegisterResponse { heartbeat_interval_ms: 50, lease_ttl_ms: 5000 }))
    }

    async fn heartbeat(&self, _: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let mut sent = self.sent.lock().expect("lock");
        let assignments = if *sent {
            Vec::new()
        } else {
            *sent = true;
            vec![pb::TaskAssignment {
                key: Some(pb::TaskKey { job_id: "job-1".into(), kind: 99, attempt: 1, ..Default::default() }),
                spec_toml: "version = 1\n".into(),
                artifact_dir: "/tmp/unused".into(),
                device: "cpu".into(),
                world_size: 1,
                ..Default::default()
            }]
        };
        Ok(Response::new(pb::HeartbeatResponse { assignments, cancel: Vec::new() }))
    }

    async fn report_progress(&self, _: Request<pb::ReportProgressRequest>) -> Result<Response<pb::ReportProgressResponse>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    async fn finish_task(&self, _: Request<pb::FinishTaskRequest>) -> Result<Response<pb::FinishTaskResponse>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    async fn fail_task(&self, request: Request<pb::FailTaskRequest>) -> Result<Response<pb::FailTaskResponse>, Status> {
        self.failures.lock().expect("lock").push(request.into_inner());
        Ok(Response::new(pb::FailTaskResponse {}))
    }

    async fn join_gang(&self, _: Request<pb::JoinGangRequest>) -> Result<Response<pb::JoinGangResponse>, Status> {
        Err(Status::unimplemented("not scripted"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_the_worker_cannot_run_is_failed_with_the_reason() -> anyhow::Result<()> {
    init_tracing();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let scripted = Scripted::default();
    let failures = Arc::clone(&scripted.failures);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkerServiceServer::new(scripted))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let worker = RunningWorker::start(&url, "w1", Arc::new(ScriptedRunner::fast(0)));

    let failure = wait_until("the worker's failure report", Duration::from_secs(60), || {
        let failures = Arc::clone(&failures);
        async move { Ok(failures.lock().expect("lock").first().cloned()) }
    })
    .await?;
    let key = failure.task.clone().expect("the task's key");
    assert_eq!((key.job_id.as_str(), key.kind, key.attempt), ("job-1", 99, 1), "the key goes back as it came");
    assert!(!failure.retryable, "another attempt of an unknown kind would fail the same way");
    assert!(failure.reason.contains("field `kind` is not a task kind this worker knows: 99"), "{}", failure.reason);

    worker.stop().await?;
    server.abort();
    Ok(())
}
