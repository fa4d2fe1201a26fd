//! Collectives for data-parallel training: one [`Collective`] trait with three backends,
//! [`Nccl`] (CUDA ranks, NCCL loaded at run time), [`TcpRing`] (CPU ranks, a ring of TCP
//! connections) and [`Single`] (world size 1), plus the two things training does with them:
//! [`average_gradients`] (flattened into buckets so each all-reduce moves a large buffer)
//! and [`broadcast_from_rank0`] (parameters and buffers at start). A blocked collective can
//! be cut short from another thread through its [`AbortHandle`].

mod elements;
pub mod nccl;
mod ring_algorithms;
mod ring_pipeline;
pub mod tcp_ring;
mod wire;

#[cfg(test)]
pub(crate) mod tests;

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tch::{Kind, Tensor};

pub use nccl::Nccl;
pub use tcp_ring::TcpRing;

/// Default size of a gradient bucket: 25 MiB, as PyTorch's DDP.
pub const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    #[error("rank {rank} ({address}) was lost: {problem}")]
    PeerLost { rank: usize, address: String, problem: String },
    #[error("timed out after {after:?} waiting to {action} rank {rank} ({address})")]
    Timeout { rank: usize, address: String, action: &'static str, after: Duration },
    #[error("i/o error with rank {rank} ({address}) while trying to {action}: {source}")]
    Io {
        rank: usize,
        address: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The NCCL (or CUDA driver) library cannot be loaded; the message says how to fix it.
    #[error("{0}")]
    NcclUnavailable(String),
    #[error("nccl failed: {0}")]
    Nccl(String),
    #[error("the collective was aborted")]
    Aborted,
    /// The ranks disagree: a handshake or a collective's header does not match.
    #[error("ranks disagree: {0}")]
    Mismatch(String),
    #[error("unsupported tensor: {0}")]
    Unsupported(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("libtorch failed: {0}")]
    Torch(#[from] tch::TchError),
    /// An earlier collective failed; a ring or communicator is not usable after that.
    #[error("the communicator is broken by an earlier error ({0}); build a new one")]
    Broken(String),
}

/// A collective communicator over `world_size` ranks. Every rank calls the same
/// collectives in the same order with tensors of the same kind and element count.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Sums `tensor` element-wise across ranks, in place (every rank ends with the sum).
    /// f32, f64 and i64 tensors on the collective's device.
    fn all_reduce_sum(&mut self, tensor: &mut Tensor) -> Result<(), CollectiveError>;
    /// Copies rank `root`'s tensor into every rank's `tensor`, in place.
    fn broadcast(&mut self, tensor: &mut Tensor, root: usize) -> Result<(), CollectiveError>;
    /// A handle that another thread can use to make a blocked collective return
    /// [`CollectiveError::Aborted`] (for example when the coordinator says a peer is lost).
    fn abort_handle(&self) -> AbortHandle {
        AbortHandle::new(Vec::new())
    }
}

/// World size 1: every collective is a no-op.
#[derive(Debug, Default, Clone, Copy)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, _tensor: &mut Tensor) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn broadcast(&mut self, _tensor: &mut Tensor, root: usize) -> Result<(), CollectiveError> {
        check_root(root, 1)
    }
}

/// Cuts a blocked collective short from another thread: [`AbortHandle::abort`] sets a flag
/// that the collective checks and shuts down the sockets it may be blocked on. Cheap to
/// clone; every later collective of that communicator returns [`CollectiveError::Aborted`].
#[derive(Clone)]
pub struct AbortHandle {
    state: Arc<AbortState>,
}

struct AbortState {
    aborted: AtomicBool,
    sockets: Mutex<Vec<TcpStream>>,
}

impl std::fmt::Debug for AbortHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AbortHandle").field("aborted", &self.is_aborted()).finish()
    }
}

impl AbortHandle {
    /// A handle that shuts `sockets` down (clones of the communicator's streams) on abort.
    pub(crate) fn new(sockets: Vec<TcpStream>) -> Self {
        Self { state: Arc::new(AbortState { aborted: AtomicBool::new(false), sockets: Mutex::new(sockets) }) }
    }

    pub fn abort(&self) {
        self.state.aborted.store(true, Ordering::SeqCst);
        let sockets = self.state.sockets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for socket in sockets.iter() {
            // A socket that is already closed has nothing left to unblock.
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn is_aborted(&self) -> bool {
        self.state.aborted.load(Ordering::SeqCst)
    }
}

pub(crate) fn check_root(root: usize, world_size: usize) -> Result<(), CollectiveError> {
    if root >= world_size {
        return Err(CollectiveError::InvalidArgument(format!("root {root} is not a rank of a world of size {world_size}")));
    }
    Ok(())
}

/// Averages the gradients of `variables` across ranks: gradients of the same kind and
/// device are flattened into buckets of at most `bucket_bytes` (a gradient larger than
/// that is reduced on its own, in place), each bucket is all-reduced, divided by the world
/// size and written back into the `.grad()` tensors. Variables without a gradient are
/// skipped; every rank must skip the same ones (a difference shows as a size mismatch).
pub fn average_gradients(collective: &mut dyn Collective, variables: &[Tensor], bucket_bytes: usize) -> Result<usize, CollectiveError> {
    let world_size = collective.world_size();
    if world_size == 1 {
        return Ok(0);
    }
    let _no_grad = tch::no_grad_guard();
    let mut gradients = Vec::with_capacity(variables.len());
    for variable in variables {
        let gradient = variable.f_grad()?;
        if gradient.defined() {
            if !matches!(gradient.kind(), Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16) {
                return Err(CollectiveError::Unsupported(format!("gradient of kind {:?} cannot be averaged", gradient.kind())));
            }
            gradients.push(gradient);
        }
    }
    let mut start = 0;
    let mut reduced = 0;
    while start < gradients.len() {
        let first = &gradients[start];
        let element_bytes = first.kind().elt_size_in_bytes();
        let mut end = start + 1;
        let mut bytes = first.numel() * element_bytes;
        while end < gradients.len() {
            let next = &gradients[end];
            let next_bytes = next.numel() * element_bytes;
            if next.kind() != first.kind() || next.device() != first.device() || bytes + next_bytes > bucket_bytes {
                break;
            }
            bytes += next_bytes;
            end += 1;
        }
        average_bucket(collective, &mut gradients[start..end], world_size)?;
        reduced += bytes;
        start = end;
    }
    Ok(reduced)
}

fn average_bucket(collective: &mut dyn Collective, gradients: &mut [Tensor], world_size: usize) -> Result<(), CollectiveError> {
    if let [gradient] = gradients {
        collective.all_reduce_sum(gradient)?;
        let _ = gradient.f_div_scalar_(world_size as f64)?;
        return Ok(());
    }
    let flat_views = gradients.iter().map(|g| g.f_reshape([-1])).collect::<Result<Vec<_>, _>>()?;
    let mut bucket = Tensor::f_cat(&flat_views, 0)?;
    collective.all_reduce_sum(&mut bucket)?;
    let _ = bucket.f_div_scalar_(world_size as f64)?;
    let mut offset = 0i64;
    for gradient in gradients.iter_mut() {
        let numel = gradient.numel() as i64;
        let averaged = bucket.f_narrow(0, offset, numel)?.f_view_as(gradient)?;
        gradient.f_copy_(&averaged)?;
        offset += numel;
    }
    Ok(())
}

/// Broadcasts `tensors` (parameters, and batch-norm buffers: whatever is passed) from rank
/// 0 into every rank's tensors, in place, with gradient tracking off.
pub fn broadcast_from_rank0(collective: &mut dyn Collective, tensors: &mut [Tensor]) -> Result<(), CollectiveError> {
    if collective.world_size() == 1 {
        return Ok(());
    }
    let _no_grad = tch::no_grad_guard();
    for tensor in tensors.iter_mut() {
        collective.broadcast(tensor, 0)?;
    }
    Ok(())
}
