//! [`Nccl`]: the collective of CUDA ranks, through cudarc's NCCL bindings loaded at run
//! time (every machine builds it; only a machine with libnccl.so and a CUDA driver runs
//! it). Before any cudarc call the libraries are looked up, so a missing library is a
//! [`CollectiveError::NcclUnavailable`] that says how to fix it, never a panic.
//!
//! Stream choice: collectives are launched on the legacy default ("null") stream of the
//! device's primary context. tch never sets a current stream, so every kernel libtorch runs
//! for us is on that stream too: NCCL's kernels run after the kernels that produced the
//! gradients and before any later kernel that reads them, with no extra synchronisation.
//! The calling thread then waits for an event recorded after the collective, polling it
//! together with `ncclCommGetAsyncError`, the [`AbortHandle`] and a timeout, so a lost
//! peer ends in `ncclCommAbort` and an error instead of a hang.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaEvent, CudaStream};
use cudarc::nccl::{result, sys};
use tch::{Device, Kind, Tensor};

use super::{check_root, AbortHandle, Collective, CollectiveError};

/// What [`CollectiveError::NcclUnavailable`] says when libnccl.so cannot be loaded.
pub const NCCL_MISSING: &str =
    "libnccl.so was not found on the library path; install NCCL or set LD_LIBRARY_PATH (the nvidia-nccl wheel ships libnccl.so.2: link it as libnccl.so)";
/// What [`CollectiveError::NcclUnavailable`] says when the CUDA driver cannot be loaded.
pub const DRIVER_MISSING: &str = "libcuda.so (the CUDA driver) was not found on the library path; nccl needs an nvidia driver";
/// How long a collective may wait for its peers before the communicator is aborted (as
/// PyTorch's default NCCL timeout).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a waiting collective spins (yielding) before it starts sleeping between polls.
const SPIN: Duration = Duration::from_millis(2);
/// Bytes in an NCCL unique id.
pub const UNIQUE_ID_BYTES: usize = 128;

/// Whether libnccl.so can be loaded.
pub fn nccl_library_present() -> bool {
    // Safety: this only tries `dlopen` on cudarc's candidate names for NCCL and closes what
    // it opened; it reads or writes none of our memory.
    unsafe { sys::is_culib_present() }
}

fn driver_library_present() -> bool {
    // Safety: as above, for the CUDA driver's candidate names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Checks that NCCL and the CUDA driver can be loaded, without loading them for good.
pub fn check_available() -> Result<(), CollectiveError> {
    if !nccl_library_present() {
        return Err(CollectiveError::NcclUnavailable(NCCL_MISSING.into()));
    }
    if !driver_library_present() {
        return Err(CollectiveError::NcclUnavailable(DRIVER_MISSING.into()));
    }
    Ok(())
}

/// An NCCL communicator for one rank on one CUDA device.
pub struct Nccl {
    /// Null once aborted.
    comm: sys::ncclComm_t,
    context: Arc<CudaContext>,
    /// The legacy default stream (see the module documentation).
    stream: Arc<CudaStream>,
    done: CudaEvent,
    rank: usize,
    world_size: usize,
    device_index: usize,
    timeout: Duration,
    broken: Option<String>,
    abort: AbortHandle,
}

// Safety: an NCCL communicator may be used from any thread as long as one thread at a time
// uses it; `Nccl` owns its communicator exclusively and every call takes `&mut self`. The
// cudarc context, stream and event are `Send` themselves.
unsafe impl Send for Nccl {}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nccl")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("device_index", &self.device_index)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Nccl {
    /// A fresh NCCL unique id (rank 0 creates it; the bytes reach the others through the
    /// coordinator).
    pub fn unique_id() -> Result<Vec<u8>, CollectiveError> {
        check_available()?;
        let id = result::get_uniqueid().map_err(|error| CollectiveError::Nccl(format!("cannot create a unique id: {}", describe(&error))))?;
        Ok(id.internal.iter().map(|&byte| byte as u8).collect())
    }

    /// Joins the communicator as `rank` of `world_size` on CUDA device `device_index`.
    /// Blocks until every rank has joined (NCCL's own bootstrap).
    pub fn new(rank: usize, world_size: usize, device_index: usize, unique_id: &[u8]) -> Result<Self, CollectiveError> {
        if rank >= world_size {
            return Err(CollectiveError::InvalidArgument(format!("rank {rank} is not below the world size {world_size}")));
        }
        if unique_id.len() != UNIQUE_ID_BYTES {
            return Err(CollectiveError::InvalidArgument(format!("an nccl unique id has {UNIQUE_ID_BYTES} bytes, rank {rank} got {}", unique_id.len())));
        }
        let (Ok(nranks), Ok(rank_c)) = (c_int::try_from(world_size), c_int::try_from(rank)) else {
            return Err(CollectiveError::InvalidArgument(format!("world size {world_size} is too large for nccl")));
        };
        check_available()?;
        let context =
            CudaContext::new(device_index).map_err(|error| CollectiveError::Nccl(format!("rank {rank} cannot open cuda device {device_index}: {error}")))?;
        let stream = context.default_stream();
        let done = context.new_event(None).map_err(|error| CollectiveError::Nccl(format!("rank {rank} cannot create a cuda event: {error}")))?;
        let mut internal = [0 as c_char; UNIQUE_ID_BYTES];
        for (slot, byte) in internal.iter_mut().zip(unique_id) {
            *slot = *byte as c_char;
        }
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        // Safety: `comm` is a valid place for NCCL to write the new communicator to; the id
        // is a full 128-byte `ncclUniqueId`; rank and world size were checked above. The
        // device's primary context is current on this thread (`CudaContext::new` bound it),
        // which is the device NCCL takes for the communicator.
        unsafe { result::comm_init_rank(&mut comm, nranks, sys::ncclUniqueId { internal }, rank_c) }
            .map_err(|error| CollectiveError::Nccl(format!("rank {rank} of {world_size} cannot join the communicator: {}", describe(&error))))?;
        tracing::debug!(rank, world_size, device_index, "joined the nccl communicator");
        Ok(Self { comm, context, stream, done, rank, world_size, device_index, timeout: DEFAULT_TIMEOUT, broken: None, abort: AbortHandle::new(Vec::new()) })
    }

    /// How long a collective may wait for its peers.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// A handle whose `abort()` makes a waiting (and every later) collective abort the
    /// communicator and return [`CollectiveError::Aborted`].
    pub fn abort_handle(&self) -> AbortHandle {
        self.abort.clone()
    }

    fn check_usable(&self) -> Result<(), CollectiveError> {
        if self.abort.is_aborted() {
            return Err(CollectiveError::Aborted);
        }
        match &self.broken {
            Some(reason) => Err(CollectiveError::Broken(reason.clone())),
            None => Ok(()),
        }
    }

    /// The NCCL type of `tensor`, which must be on this communicator's device.
    fn data_type(&self, tensor: &Tensor) -> Result<sys::ncclDataType_t, CollectiveError> {
        if tensor.device() != Device::Cuda(self.device_index) {
            return Err(CollectiveError::Unsupported(format!(
                "rank {} communicates on cuda:{}, the tensor is on {:?}",
                self.rank,
                self.device_index,
                tensor.device()
            )));
        }
        use sys::ncclDataType_t as T;
        Ok(match tensor.kind() {
            Kind::Float => T::ncclFloat32,
            Kind::Double => T::ncclFloat64,
            Kind::Half => T::ncclFloat16,
            Kind::BFloat16 => T::ncclBfloat16,
            Kind::Int64 => T::ncclInt64,
            Kind::Int => T::ncclInt32,
            Kind::Int8 => T::ncclInt8,
            Kind::Uint8 => T::ncclUint8,
            other => return Err(CollectiveError::Unsupported(format!("nccl cannot reduce tensors of kind {other:?}"))),
        })
    }

    /// Runs `collective` on a contiguous version of `tensor` (itself when it is contiguous),
    /// waits for it, and copies the result back when a copy was needed.
    fn run(
        &mut self,
        tensor: &mut Tensor,
        what: &'static str,
        collective: impl FnOnce(&Self, *mut c_void, usize, sys::ncclDataType_t) -> Result<result::NcclStatus, result::NcclError>,
    ) -> Result<(), CollectiveError> {
        self.check_usable()?;
        let data_type = self.data_type(tensor)?;
        let count = tensor.numel();
        if count == 0 {
            return Ok(());
        }
        let _no_grad = tch::no_grad_guard();
        let contiguous = tensor.is_contiguous();
        let work = if contiguous { tensor.shallow_clone() } else { tensor.f_contiguous()? };
        self.context.bind_to_thread().map_err(|error| self.fail(format!("rank {} cannot bind cuda:{}: {error}", self.rank, self.device_index)))?;
        if let Err(error) = collective(self, work.data_ptr(), count, data_type) {
            return Err(self.fail(format!("{what} of {count} elements failed on rank {}: {}", self.rank, describe(&error))));
        }
        self.wait(what)?;
        if !contiguous {
            tensor.f_copy_(&work)?;
        }
        Ok(())
    }

    fn stream_handle(&self) -> sys::cudaStream_t {
        self.stream.cu_stream() as sys::cudaStream_t
    }

    /// Waits until the work queued so far on the stream is done, watching for NCCL's
    /// asynchronous errors, the abort handle and the timeout.
    fn wait(&mut self, what: &'static str) -> Result<(), CollectiveError> {
        if let Err(error) = self.done.record(&self.stream) {
            return Err(self.fail(format!("rank {} cannot record a cuda event after {what}: {error}", self.rank)));
        }
        let started = Instant::now();
        let mut polls = 0u32;
        loop {
            match self.done.try_is_complete() {
                Ok(true) => return self.check_async_error(what),
                Ok(false) => {}
                Err(error) => return Err(self.fail(format!("{what} failed on rank {}: {error}", self.rank))),
            }
            polls += 1;
            if polls == 64 {
                polls = 0;
                self.check_async_error(what)?;
                if self.abort.is_aborted() {
                    self.abort_communicator("aborted".into());
                    return Err(CollectiveError::Aborted);
                }
                if started.elapsed() > self.timeout {
                    return Err(self.fail(format!("{what} on rank {} did not finish within {:?}: a peer stopped taking part", self.rank, self.timeout)));
                }
            }
            if started.elapsed() < SPIN {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    fn check_async_error(&mut self, what: &'static str) -> Result<(), CollectiveError> {
        if self.comm.is_null() {
            return Err(CollectiveError::Broken(format!("rank {}'s communicator was aborted", self.rank)));
        }
        let mut state = sys::ncclResult_t::ncclSuccess;
        // Safety: `comm` is a live communicator (not yet aborted: checked above) and `state`
        // is a valid place for NCCL to write the result to.
        let called = unsafe { sys::ncclCommGetAsyncError(self.comm, &mut state) };
        for outcome in [called, state] {
            if let Err(error) = outcome.result() {
                return Err(self.fail(format!("{what} failed on rank {}: {}", self.rank, describe(&error))));
            }
        }
        Ok(())
    }

    /// Aborts the communicator for good and returns the error to report.
    fn fail(&mut self, message: String) -> CollectiveError {
        self.abort_communicator(message.clone());
        CollectiveError::Nccl(message)
    }

    fn abort_communicator(&mut self, reason: String) {
        if !self.comm.is_null() {
            let _ = self.context.bind_to_thread();
            // Safety: `comm` is a live communicator created by `comm_init_rank`; it is set to
            // null right after and never used again.
            let aborted = unsafe { result::comm_abort(self.comm) };
            self.comm = std::ptr::null_mut();
            if let Err(error) = aborted {
                tracing::warn!(rank = self.rank, error = %describe(&error), "aborting the nccl communicator failed");
            }
        }
        self.broken.get_or_insert(reason);
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&mut self, tensor: &mut Tensor) -> Result<(), CollectiveError> {
        self.run(tensor, "all-reduce", |nccl, data, count, data_type| {
            // Safety: `data` is the storage of a live contiguous tensor of `count` elements of
            // `data_type` on this communicator's device (checked by `run`), kept alive by
            // `run` until `wait` has seen the collective finish; NCCL allows the send and
            // receive buffers to be the same (in place). `comm` is live (`check_usable`).
            unsafe { result::all_reduce(data, data, count, data_type, sys::ncclRedOp_t::ncclSum, nccl.comm, nccl.stream_handle()) }
        })
    }

    fn broadcast(&mut self, tensor: &mut Tensor, root: usize) -> Result<(), CollectiveError> {
        check_root(root, self.world_size)?;
        let root = root as c_int;
        self.run(tensor, "broadcast", |nccl, data, count, data_type| {
            // Safety: as for the all-reduce: `data` holds `count` elements of `data_type` on
            // the communicator's device and outlives the collective; in place is allowed.
            unsafe { result::broadcast(data, data, count, data_type, root, nccl.comm, nccl.stream_handle()) }
        })
    }

    fn abort_handle(&self) -> AbortHandle {
        self.abort.clone()
    }
}

impl Drop for Nccl {
    /// Every collective was waited for, so nothing is in flight: `ncclCommAbort` frees the
    /// communicator without the risk of blocking on a peer that is gone.
    fn drop(&mut self) {
        self.abort_communicator("dropped".into());
    }
}

/// NCCL's text for an error code.
fn describe(error: &result::NcclError) -> String {
    // Safety: `ncclGetErrorString` returns a pointer to a static NUL-terminated string for
    // every result code (NCCL is loaded: callers only get here after `check_available`).
    let text = unsafe { sys::ncclGetErrorString(error.0) };
    if text.is_null() {
        return format!("{:?}", error.0);
    }
    // Safety: non-null, static and NUL-terminated (see above).
    let text = unsafe { CStr::from_ptr(text) };
    format!("{:?}: {}", error.0, text.to_string_lossy())
}
