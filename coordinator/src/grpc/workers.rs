//! `feral.v1.WorkerService`: what `feral-worker` processes call.

use feral_common::ids::WorkerId;
use feral_common::task::{Device, EpochReport, TaskKey, TaskOutcome};
use feral_common::time::now_ms;
use feral_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{required, to_status};
use crate::auth::caller;
use crate::error::CoordinatorError;
use crate::leader::Role;
use crate::model::Slot;

/// The most device slots one worker may offer.
pub const MAX_SLOTS: usize = 64;
/// The longest hostname a worker may report (DNS allows 253).
pub const MAX_HOSTNAME_CHARS: usize = 253;

pub struct WorkerApi {
    role: Role,
}

impl WorkerApi {
    pub fn new(role: Role) -> Self {
        Self { role }
    }
}

/// The worker a call speaks for, once the caller's credential is known to be that
/// worker's ([`crate::auth`]): nobody may register, heartbeat or report as another worker.
fn worker<T>(request: &Request<T>, worker_id: &str) -> Result<WorkerId, Status> {
    let id = WorkerId::new(required(worker_id, "worker_id").map_err(to_status)?);
    caller(request).may_act_as(&id)?;
    Ok(id)
}

/// A report about one task: it names its worker and the task's key.
trait Report {
    fn key(&self) -> (&str, Option<&pb::TaskKey>);
}

macro_rules! report {
    ($($message:ty),*) => {$(
        impl Report for $message {
            fn key(&self) -> (&str, Option<&pb::TaskKey>) {
                (&self.worker_id, self.task.as_ref())
            }
        }
    )*};
}
report!(pb::ReportProgressRequest, pb::FinishTaskRequest, pb::JoinGangRequest, pb::FailTaskRequest);

/// The worker a report is from (once its caller may speak for it) and the task it is about.
fn ids<T: Report>(request: &Request<T>) -> Result<(WorkerId, TaskKey), Status> {
    let (worker_id, key) = request.get_ref().key();
    let worker = worker(request, worker_id)?;
    let task = feral_proto::task_key(key.cloned()).map_err(|e| to_status(e.into()))?;
    Ok((worker, task))
}

/// The tasks a heartbeat lists as running.
fn running(keys: Vec<pb::TaskKey>) -> Result<Vec<TaskKey>, Status> {
    keys.into_iter().map(|key| TaskKey::try_from(key).map_err(|e| to_status(CoordinatorError::InvalidArgument(format!("field `running`: {e}"))))).collect()
}

/// The devices a heartbeat withholds.
fn withheld(devices: Vec<String>) -> Result<Vec<Device>, Status> {
    devices.iter().map(|d| d.parse().map_err(|problem| to_status(CoordinatorError::InvalidArgument(format!("field `withheld_devices` {problem}"))))).collect()
}

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for WorkerApi {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let control = self.role.control()?;
        let invalid = |field: &str, problem: String| to_status(CoordinatorError::InvalidArgument(format!("field `{field}` {problem}")));
        let id = WorkerId::parse(required(&request.get_ref().worker_id, "worker_id").map_err(to_status)?).map_err(|p| invalid("worker_id", p.to_string()))?;
        caller(&request).may_act_as(&id)?;
        let request = request.into_inner();
        if request.hostname.chars().count() > MAX_HOSTNAME_CHARS || request.hostname.chars().any(char::is_control) {
            return Err(invalid("hostname", format!("must be at most {MAX_HOSTNAME_CHARS} characters, none of them control characters")));
        }
        if request.slots.len() > MAX_SLOTS {
            return Err(invalid("slots", format!("must list at most {MAX_SLOTS} slots, got {}", request.slots.len())));
        }
        let slots = request.slots.into_iter().map(Slot::try_from).collect::<Result<Vec<_>, _>>().map_err(to_status)?;
        control.register(id, request.hostname, slots, now_ms()).await.map_err(to_status)?;
        let settings = control.settings();
        Ok(Response::new(pb::RegisterResponse { heartbeat_interval_ms: settings.heartbeat_interval_ms, lease_ttl_ms: settings.lease_ttl_ms }))
    }

    async fn heartbeat(&self, request: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let control = self.role.control()?;
        let id = worker(&request, &request.get_ref().worker_id)?;
        let request = request.into_inner();
        let reply = control.heartbeat(&id, running(request.running)?, withheld(request.withheld_devices)?, now_ms()).await.map_err(to_status)?;
        Ok(Response::new(pb::HeartbeatResponse {
            assignments: reply.assignments.iter().map(pb::TaskAssignment::from).collect(),
            cancel: reply.cancel.iter().map(pb::TaskKey::from).collect(),
        }))
    }

    async fn report_progress(&self, request: Request<pb::ReportProgressRequest>) -> Result<Response<pb::ReportProgressResponse>, Status> {
        let (worker, task) = ids(&request)?;
        let request = request.into_inner();
        let epoch = request.epoch.ok_or_else(|| to_status(CoordinatorError::required("epoch")))?;
        let epoch = EpochReport::try_from(epoch).map_err(|e| to_status(e.into()))?;
        let stop = self.role.control()?.report_progress(&worker, &task, epoch, request.epochs_total, now_ms()).await.map_err(to_status)?;
        Ok(Response::new(pb::ReportProgressResponse { stop }))
    }

    async fn finish_task(&self, request: Request<pb::FinishTaskRequest>) -> Result<Response<pb::FinishTaskResponse>, Status> {
        let control = self.role.control()?;
        let (worker, task) = ids(&request)?;
        let request = request.into_inner();
        let outcome = request.outcome.ok_or_else(|| to_status(CoordinatorError::required("outcome")))?;
        let outcome = TaskOutcome::try_from(outcome).map_err(|e| to_status(e.into()))?;
        control.finish_task(&worker, &task, outcome, now_ms()).await.map_err(to_status)?;
        Ok(Response::new(pb::FinishTaskResponse {}))
    }

    async fn join_gang(&self, request: Request<pb::JoinGangRequest>) -> Result<Response<pb::JoinGangResponse>, Status> {
        let control = self.role.control()?;
        let (worker, task) = ids(&request)?;
        let request = request.into_inner();
        let address = required(&request.address, "address").map_err(to_status)?.to_owned();
        let peers = control.join_gang(&worker, &task, address, request.nccl_unique_id).await.map_err(to_status)?;
        Ok(Response::new(match peers {
            Some(peers) => pb::JoinGangResponse { ready: true, peer_addresses: peers.addresses, nccl_unique_id: peers.nccl_unique_id },
            None => pb::JoinGangResponse::default(),
        }))
    }

    async fn fail_task(&self, request: Request<pb::FailTaskRequest>) -> Result<Response<pb::FailTaskResponse>, Status> {
        let control = self.role.control()?;
        let (worker, task) = ids(&request)?;
        let request = request.into_inner();
        let reason = required(&request.reason, "reason").map_err(to_status)?.to_owned();
        control.fail_task(&worker, &task, reason, request.retryable, now_ms()).await.map_err(to_status)?;
        Ok(Response::new(pb::FailTaskResponse {}))
    }
}
