//! `feral.v1.JobService`: what users and the CLI call.

use std::pin::Pin;

use feral_common::ids::{JobId, WorkerId};
use feral_common::time::now_ms;
use feral_proto::v1 as pb;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::convert::{job_summary_to_proto, job_to_proto, worker_to_proto};
use super::{required, to_status};
use crate::auth::caller;
use crate::leader::{Role, VIEW_AGE_METADATA};

pub struct JobApi {
    role: Role,
    /// Becomes true when the server shuts down: open watch streams end then, so that a
    /// draining server does not wait on them.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl JobApi {
    pub fn new(role: Role, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        Self { role, stopping }
    }
}

/// The job as users see it; a job that waits for more than the cluster has says why.
fn with_waiting_reason(mut proto: pb::Job, waiting: Option<String>) -> pb::Job {
    if let (true, Some(reason)) = (proto.state_reason.is_empty(), waiting) {
        proto.state_reason = reason;
    }
    proto
}

/// The most entries one listing page holds, and how many a request of size 0 gets.
pub const MAX_PAGE_SIZE: u32 = 1000;
pub const DEFAULT_PAGE_SIZE: u32 = 100;

fn page_size(requested: u32) -> Result<usize, Status> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE as usize),
        n if n <= MAX_PAGE_SIZE => Ok(n as usize),
        n => Err(Status::invalid_argument(format!("field `page_size` must be at most {MAX_PAGE_SIZE}, got {n}"))),
    }
}

fn bad_token(token: &str) -> Status {
    let shown: String = token.chars().take(64).collect();
    Status::invalid_argument(format!("field `page_token` is not one this coordinator gave: {shown:?}"))
}

fn job_id(value: &str) -> Result<JobId, Status> {
    required(value, "job_id").map(JobId::new).map_err(to_status)
}

type JobEventStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::job_service_server::JobService for JobApi {
    async fn submit_job(&self, request: Request<pb::SubmitJobRequest>) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let control = self.role.control()?;
        let caller = caller(&request);
        let spec = required(&request.get_ref().spec_toml, "spec_toml").map_err(to_status)?;
        let job = control.submit(spec, &caller.name, now_ms()).await.map_err(to_status)?;
        Ok(Response::new(pb::SubmitJobResponse { job: Some(job_to_proto(&job)) }))
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let (control, age) = self.role.reader()?;
        let caller = caller(&request);
        let id = job_id(&request.get_ref().job_id)?;
        let job = control.job(caller.scope(), &id).await.map_err(to_status)?;
        let waiting = control.waiting_reasons(std::slice::from_ref(&job)).await;
        Ok(marked(Response::new(with_waiting_reason(job_to_proto(&job), waiting.into_iter().next().flatten())), age))
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let (control, age) = self.role.reader()?;
        let caller = caller(&request);
        let request = request.into_inner();
        let size = page_size(request.page_size)?;
        let after = match request.page_token.as_str() {
            "" => None,
            token => Some(token.split_once(':').and_then(|(at, id)| Some((at.parse::<u64>().ok()?, JobId::new(id)))).ok_or_else(|| bad_token(token))?),
        };
        let (jobs, next) = control.jobs_page(caller.scope(), after, size).await;
        let waiting = control.waiting_reasons(&jobs).await;
        let jobs = jobs.iter().zip(waiting).map(|(job, reason)| with_waiting_reason(job_summary_to_proto(job), reason)).collect();
        let next_page_token = next.map(|(at, id)| format!("{at}:{id}")).unwrap_or_default();
        Ok(marked(Response::new(pb::ListJobsResponse { jobs, next_page_token }), age))
    }

    async fn cancel_job(&self, request: Request<pb::CancelJobRequest>) -> Result<Response<pb::Job>, Status> {
        let control = self.role.control()?;
        let id = job_id(&request.get_ref().job_id)?;
        let job = control.cancel(caller(&request).scope(), &id, now_ms()).await.map_err(to_status)?;
        Ok(Response::new(job_to_proto(&job)))
    }

    async fn resume_job(&self, request: Request<pb::ResumeJobRequest>) -> Result<Response<pb::Job>, Status> {
        let control = self.role.control()?;
        let id = job_id(&request.get_ref().job_id)?;
        let job = control.resume(caller(&request).scope(), &id, now_ms()).await.map_err(to_status)?;
        Ok(Response::new(job_to_proto(&job)))
    }

    type WatchJobStream = JobEventStream;

    async fn watch_job(&self, request: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        let (control, age) = self.role.reader()?;
        let caller = caller(&request);
        let id = job_id(&request.get_ref().job_id)?;
        if let Some(age) = age {
            // A standby's view changes only when it is read again: the job as the view holds
            // it, then the stream ends and the client watches again (a leader, once elected).
            let job = control.job(caller.scope(), &id).await.map_err(to_status)?;
            let stream = async_stream(move |emit| async move {
                let _ = emit.send(Ok(pb::JobEvent { job: Some(job_to_proto(&job)) })).await;
                if !job.state.is_final() {
                    let _ = emit.send(Err(Status::unavailable("no leader is elected; that was a standby's last view of the job; watch again"))).await;
                }
            });
            return Ok(marked(Response::new(stream), Some(age)));
        }
        let mut receiver = control.watch(caller.scope(), &id).await.map_err(to_status)?;
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

    async fn list_workers(&self, request: Request<pb::ListWorkersRequest>) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let (control, age) = self.role.reader()?;
        let request = request.into_inner();
        let size = page_size(request.page_size)?;
        let after = (!request.page_token.is_empty()).then(|| WorkerId::new(request.page_token.as_str()));
        // One more than the page, to know whether another follows.
        let mut workers = control.workers_page(after.as_ref(), size + 1).await;
        let more = workers.len() > size;
        workers.truncate(size);
        let next_page_token = if more { workers.last().map(|w| w.record.id.to_string()).unwrap_or_default() } else { String::new() };
        Ok(marked(Response::new(pb::ListWorkersResponse { workers: workers.iter().map(worker_to_proto).collect(), next_page_token }), age))
    }
}

/// An answer read from a standby's last view (`age`: how old it is) says so in its metadata.
fn marked<T>(mut response: Response<T>, age: Option<std::time::Duration>) -> Response<T> {
    if let Some(age) = age {
        if let Ok(value) = age.as_millis().to_string().parse() {
            response.metadata_mut().insert(VIEW_AGE_METADATA, value);
        }
    }
    response
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
