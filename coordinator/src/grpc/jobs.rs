//! `feral.v1.JobService`: what users and the CLI call.

use std::pin::Pin;
use std::sync::Arc;

use feral_common::ids::JobId;
use feral_common::time::now_ms;
use feral_proto::v1 as pb;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::convert::{job_to_proto, worker_to_proto};
use super::{required, to_status};
use crate::control::ControlPlane;

pub struct JobApi {
    control: Arc<ControlPlane>,
    /// Becomes true when the server shuts down: open watch streams end then, so that a
    /// draining server does not wait on them.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl JobApi {
    pub fn new(control: Arc<ControlPlane>, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        Self { control, stopping }
    }
}

/// The job as users see it; a job that waits for more than the cluster has says why.
fn with_waiting_reason(job: &crate::model::JobRecord, waiting: Option<String>) -> pb::Job {
    let mut proto = job_to_proto(job);
    if let (true, Some(reason)) = (proto.state_reason.is_empty(), waiting) {
        proto.state_reason = reason;
    }
    proto
}

fn job_id(value: &str) -> Result<JobId, Status> {
    required(value, "job_id").map(JobId::new).map_err(to_status)
}

type JobEventStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::job_service_server::JobService for JobApi {
    async fn submit_job(&self, request: Request<pb::SubmitJobRequest>) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let spec = required(&request.get_ref().spec_toml, "spec_toml").map_err(to_status)?;
        let job = self.control.submit(spec, now_ms()).await.map_err(to_status)?;
        Ok(Response::new(pb::SubmitJobResponse { job: Some(job_to_proto(&job)) }))
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let id = job_id(&request.get_ref().job_id)?;
        let job = self.control.job(&id).await.map_err(to_status)?;
        let waiting = self.control.waiting_reasons(std::slice::from_ref(&job)).await;
        Ok(Response::new(with_waiting_reason(&job, waiting.into_iter().next().flatten())))
    }

    async fn list_jobs(&self, _: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let jobs = self.control.jobs().await;
        let waiting = self.control.waiting_reasons(&jobs).await;
        let jobs = jobs.iter().zip(waiting).map(|(job, reason)| with_waiting_reason(job, reason)).collect();
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    async fn cancel_job(&self, request: Request<pb::CancelJobRequest>) -> Result<Response<pb::Job>, Status> {
        let id = job_id(&request.get_ref().job_id)?;
        let job = self.control.cancel(&id, now_ms()).await.map_err(to_status)?;
        Ok(Response::new(job_to_proto(&job)))
    }

    type WatchJobStream = JobEventStream;

    async fn watch_job(&self, request: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        let id = job_id(&request.get_ref().job_id)?;
        let mut receiver = self.control.watch(&id).await.map_err(to_status)?;
        let mut stopping = self.stopping.clone();
        let stream = async_stream(move |emit| async move {
            loop {
                let job = receiver.borrow_and_update().clone();
                let last = job.state.is_final();
                if emit.send(Ok(pb::JobEvent { job: Some(job_to_proto(&job)) })).await.is_err() || last {
                    return;
                }
                tokio::select! {
                    changed = receiver.changed() => if changed.is_err() {
                        // The job reached a final state: send that last version, then end.
                        let job = receiver.borrow().clone();
                        let _ = emit.send(Ok(pb::JobEvent { job: Some(job_to_proto(&job)) })).await;
                        return;
                    },
                    _ = stopping.changed() => {
                        let _ = emit.send(Err(Status::unavailable("the coordinator is shutting down; watch again"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn list_workers(&self, _: Request<pb::ListWorkersRequest>) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let workers = self.control.workers().await.iter().map(worker_to_proto).collect();
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }
}

/// A stream fed by a task that sends into a small channel; ends when the task returns.
fn async_stream<F, Fut>(producer: F) -> JobEventStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::JobEvent, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    tokio::spawn(producer(sender));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}
