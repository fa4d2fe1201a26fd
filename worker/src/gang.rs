//! Joining a data-parallel gang: bind a listener, tell the coordinator where it is (rank 0
//! on CUDA also sends its NCCL unique id), wait until every rank has joined, then connect
//! the collective on the task's own thread.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use feral_common::task::{Assignment, Device};
use feral_proto::leader::Coordinators;
use feral_proto::v1 as pb;
use feral_proto::v1::worker_service_client::WorkerServiceClient;
use tonic::Code;

use crate::collective::{AbortHandle, Collective, CollectiveError, Nccl, Single, TcpRing};

/// How long ranks may take to connect to each other, and the longest a rank waits on a
/// silent peer inside a collective before it gives up.
const PEER_TIMEOUT: Duration = Duration::from_secs(60);

/// A running task's stop flag and, once connected, its collective's abort handle: stopping
/// a task also cuts short a collective it is blocked in.
#[derive(Debug, Default)]
pub struct TaskControl {
    stop: AtomicBool,
    abort: Mutex<Option<AbortHandle>>,
    /// The slot the task runs on (`cpu`, `cuda:N`).
    pub device: String,
    /// When it was first told to stop.
    stopped_at: Mutex<Option<std::time::Instant>>,
}

impl TaskControl {
    pub fn on_device(device: String) -> Self {
        Self { device, ..Self::default() }
    }

    /// Whether it was told to stop (and, being asked, still runs): its slot is not free.
    pub fn stopping(&self) -> bool {
        self.stopped_at.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Whether it was told to stop at least `bound` ago (and, being asked, still runs).
    pub fn stuck(&self, bound: std::time::Duration) -> bool {
        self.stopped_at.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|at| at.elapsed() >= bound)
    }

    pub fn stop(&self) {
        self.stopped_at.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(std::time::Instant::now);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.abort.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            handle.abort();
        }
    }

    pub fn flag(&self) -> &AtomicBool {
        &self.stop
    }

    fn set_abort(&self, handle: AbortHandle) {
        *self.abort.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        if self.stop.load(Ordering::Relaxed) {
            self.stop();
        }
    }
}

/// What a rank knows once its gang is complete.
#[derive(Debug)]
pub struct GangSetup {
    listener: TcpListener,
    peers: Vec<SocketAddr>,
    nccl_unique_id: Vec<u8>,
}

/// Why a rank could not join its gang.
#[derive(Debug, thiserror::Error)]
pub enum GangError {
    #[error("cannot open a port for the gang: {0}")]
    Listen(std::io::Error),
    #[error("cannot resolve peer address {address}: {problem}")]
    Resolve { address: String, problem: String },
    #[error("cannot set up NCCL: {0}")]
    Nccl(CollectiveError),
    #[error("cannot connect the ring: {0}")]
    Ring(CollectiveError),
    /// Told to stop, or replaced by a newer attempt, before the gang was complete.
    #[error("stopped before the gang was complete")]
    Stopped,
}

impl GangError {
    /// A port, a name or a peer may be there on the next attempt; NCCL that cannot start
    /// on this machine will not be.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, GangError::Nccl(_) | GangError::Stopped)
    }
}

/// Binds this rank's listener and joins the gang through the coordinator, polling until
/// every rank has joined (or the task is stopped).
pub async fn rendezvous(
    coordinators: &Coordinators,
    worker_id: &str,
    advertise_host: &str,
    task: &Assignment,
    control: &TaskControl,
) -> Result<GangSetup, GangError> {
    let listener = TcpListener::bind(("0.0.0.0", 0)).map_err(GangError::Listen)?;
    let port = listener.local_addr().map_err(GangError::Listen)?.port();
    let nccl_unique_id = if task.device.is_cuda() && task.key.rank.0 == 0 { Nccl::unique_id().map_err(GangError::Nccl)? } else { Vec::new() };
    let request = pb::JoinGangRequest {
        worker_id: worker_id.to_owned(),
        task: Some(pb::TaskKey::from(&task.key)),
        address: format!("{advertise_host}:{port}"),
        nccl_unique_id,
    };
    loop {
        if control.flag().load(Ordering::Relaxed) {
            return Err(GangError::Stopped);
        }
        let (at, channel) = coordinators.channel_at();
        match WorkerServiceClient::new(channel).join_gang(request.clone()).await {
            Ok(reply) if reply.get_ref().ready => {
                let reply = reply.into_inner();
                let peers = reply.peer_addresses.iter().map(|a| resolve(a)).collect::<Result<Vec<_>, _>>()?;
                return Ok(GangSetup { listener, peers, nccl_unique_id: reply.nccl_unique_id });
            }
            Ok(_) => {}
            Err(status) if matches!(status.code(), Code::InvalidArgument | Code::FailedPrecondition) => {
                // The task is no longer ours: a newer attempt replaced it.
                tracing::info!(task_id = %task.key, reason = %status.message(), "leaving the gang");
                return Err(GangError::Stopped);
            }
            Err(status) => {
                coordinators.failed_at(at, &status);
                tracing::warn!(task_id = %task.key, error = %status.message(), "gang rendezvous failed; retrying");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn resolve(address: &str) -> Result<SocketAddr, GangError> {
    let unresolved = |problem: String| GangError::Resolve { address: address.to_owned(), problem };
    address.to_socket_addrs().map_err(|e| unresolved(e.to_string()))?.next().ok_or_else(|| unresolved("it resolves to nothing".into()))
}

/// Connects the task's collective: NCCL on CUDA, a TCP ring on CPU, nothing when alone.
pub fn connect(task: &Assignment, setup: Option<GangSetup>, control: &TaskControl) -> Result<Box<dyn Collective>, GangError> {
    let Some(setup) = setup else { return Ok(Box::new(Single)) };
    let (rank, world) = (task.key.rank.0 as usize, task.world_size as usize);
    let collective: Box<dyn Collective> = match task.device {
        Device::Cuda(index) => Box::new(Nccl::new(rank, world, index as usize, &setup.nccl_unique_id).map_err(GangError::Nccl)?),
        Device::Cpu => Box::new(TcpRing::connect(rank, world, setup.listener, &setup.peers, PEER_TIMEOUT).map_err(GangError::Ring)?),
    };
    control.set_abort(collective.abort_handle());
    Ok(collective)
}
