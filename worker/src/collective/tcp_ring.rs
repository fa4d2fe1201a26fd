//! [`TcpRing`]: the collective of CPU ranks. Each rank connects to the next rank and
//! accepts the previous one, both ends check a hello (magic, version, rank, world size),
//! and collectives then stream segments around that ring (`ring_algorithms`). A lost
//! peer gives an error quickly instead of a hang: a closed connection reads as EOF or a
//! reset at once, a silent one hits the timeout, every failure shuts this rank's sockets so
//! the rest of the ring stops too, and [`AbortHandle::abort`] unblocks a waiting rank.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tch::Tensor;

use super::elements::FlatTensor;
use super::ring_algorithms::{self, Buffers};
use super::ring_pipeline::{io_error, Link};
use super::wire::{Hello, HELLO_LEN, PROTOCOL_VERSION};
use super::{check_root, AbortHandle, Collective, CollectiveError};

/// Bytes per pipelined segment unless [`TcpRing::set_segment_bytes`] says otherwise.
pub const DEFAULT_SEGMENT_BYTES: usize = 1 << 20;

const RETRY_PAUSE: Duration = Duration::from_millis(20);
const ACCEPT_POLL: Duration = Duration::from_millis(5);
const HELLO_POLL: Duration = Duration::from_millis(50);

/// A ring of TCP connections between CPU ranks.
pub struct TcpRing {
    rank: usize,
    world_size: usize,
    /// `None` for a world of one.
    connections: Option<Connections>,
    timeout: Duration,
    segment_bytes: usize,
    sequence: u64,
    buffers: Buffers,
    /// Why an earlier collective failed: the ring is not usable after that.
    broken: Option<String>,
    abort: AbortHandle,
}

struct Connections {
    next: TcpStream,
    prev: TcpStream,
    next_address: SocketAddr,
    prev_address: SocketAddr,
}

impl std::fmt::Debug for TcpRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpRing").field("rank", &self.rank).field("world_size", &self.world_size).field("broken", &self.broken).finish_non_exhaustive()
    }
}

impl TcpRing {
    /// Joins the ring: connects to rank + 1 (retrying until `timeout`) while accepting rank
    /// − 1 on `listener` (bound by this rank; its address went to the others through the
    /// coordinator), and checks both hellos. `peers` holds every rank's listener address,
    /// by rank. `timeout` also bounds every later wait on a peer's bytes.
    pub fn connect(rank: usize, world_size: usize, listener: TcpListener, peers: &[SocketAddr], timeout: Duration) -> Result<Self, CollectiveError> {
        if rank >= world_size {
            return Err(CollectiveError::InvalidArgument(format!("rank {rank} is not below the world size {world_size}")));
        }
        if peers.len() != world_size {
            return Err(CollectiveError::InvalidArgument(format!("rank {rank} got {} peer addresses for a world of size {world_size}", peers.len())));
        }
        let mut ring = Self {
            rank,
            world_size,
            connections: None,
            timeout,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            sequence: 0,
            buffers: Buffers::default(),
            broken: None,
            abort: AbortHandle::new(Vec::new()),
        };
        if world_size == 1 {
            return Ok(ring);
        }
        let next_rank = (rank + 1) % world_size;
        let prev_rank = (rank + world_size - 1) % world_size;
        let handshake = Handshake {
            hello: Hello { version: PROTOCOL_VERSION, rank: rank as u32, world_size: world_size as u32 },
            deadline: Instant::now() + timeout,
            timeout,
            give_up: AtomicBool::new(false),
        };
        let (dialed, accepted) = std::thread::scope(|scope| {
            let dialer = scope.spawn(|| handshake.dial(next_rank, peers[next_rank]));
            let accepted = handshake.accept(&listener, prev_rank, peers[prev_rank]);
            let dialed = dialer.join().unwrap_or_else(|_| Err(CollectiveError::Broken("the dialing thread panicked".into())));
            (dialed, accepted)
        });
        let (next, prev) = match (dialed, accepted) {
            (Ok(next), Ok(prev)) => (next, prev),
            (Err(error), Ok(_)) | (Ok(_), Err(error)) => return Err(error),
            // `Aborted` here only means "stopped because the other direction failed".
            (Err(CollectiveError::Aborted), Err(error)) | (Err(error), Err(_)) => return Err(error),
        };
        for (stream, rank, address) in [(&next, next_rank, peers[next_rank]), (&prev, prev_rank, peers[prev_rank])] {
            configure(stream, Some(timeout)).map_err(|error| io_error(rank, address, "configure the connection with", error, timeout))?;
        }
        let clones = [next.try_clone(), prev.try_clone()]
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| io_error(next_rank, peers[next_rank], "clone the connection to", error, timeout))?;
        ring.abort = AbortHandle::new(clones);
        ring.connections = Some(Connections { next, prev, next_address: peers[next_rank], prev_address: peers[prev_rank] });
        tracing::debug!(rank, world_size, "joined the tcp ring");
        Ok(ring)
    }

    /// A handle whose `abort()` makes a blocked (and every later) collective of this ring
    /// return [`CollectiveError::Aborted`] at once.
    pub fn abort_handle(&self) -> AbortHandle {
        self.abort.clone()
    }

    /// How long a collective waits on a peer's bytes (or for room to send) before it fails
    /// with [`CollectiveError::Timeout`]; set at [`TcpRing::connect`]. It must exceed the
    /// time ranks can drift apart between collectives (an evaluation on rank 0 only, say).
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), CollectiveError> {
        if let Some(connections) = &self.connections {
            for (stream, rank, address) in [
                (&connections.next, (self.rank + 1) % self.world_size, connections.next_address),
                (&connections.prev, (self.rank + self.world_size - 1) % self.world_size, connections.prev_address),
            ] {
                configure(stream, Some(timeout)).map_err(|error| io_error(rank, address, "configure the connection with", error, timeout))?;
            }
        }
        self.timeout = timeout;
        Ok(())
    }

    /// Size of the pipelined segments (at least one element is always sent at a time).
    pub fn set_segment_bytes(&mut self, bytes: usize) {
        self.segment_bytes = bytes.max(1);
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

    /// Runs `operation` over the ring for `tensor`; a failure breaks the ring for good.
    fn run(
        &mut self,
        tensor: &mut Tensor,
        operation: impl FnOnce(&Link<'_>, &mut FlatTensor, &mut Buffers, u64, usize) -> Result<(), CollectiveError>,
    ) -> Result<(), CollectiveError> {
        self.check_usable()?;
        // Parameters that require grad are written in place: no autograd here.
        let _no_grad = tch::no_grad_guard();
        let mut flat = FlatTensor::new(tensor)?;
        let Some(connections) = &self.connections else {
            return Ok(());
        };
        self.sequence += 1;
        let link = Link {
            rank: self.rank,
            world_size: self.world_size,
            next: &connections.next,
            prev: &connections.prev,
            next_address: connections.next_address,
            prev_address: connections.prev_address,
            timeout: self.timeout,
            abort: &self.abort,
        };
        match operation(&link, &mut flat, &mut self.buffers, self.sequence, self.segment_bytes) {
            Ok(()) => flat.finish(tensor),
            Err(error) => {
                let _ = connections.next.shutdown(Shutdown::Both);
                let _ = connections.prev.shutdown(Shutdown::Both);
                self.broken = Some(error.to_string());
                Err(error)
            }
        }
    }
}

impl Collective for TcpRing {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&mut self, tensor: &mut Tensor) -> Result<(), CollectiveError> {
        self.run(tensor, ring_algorithms::all_reduce)
    }

    fn broadcast(&mut self, tensor: &mut Tensor, root: usize) -> Result<(), CollectiveError> {
        check_root(root, self.world_size)?;
        self.run(tensor, |link, flat, _, sequence, segment_bytes| ring_algorithms::broadcast(link, flat, sequence, segment_bytes, root))
    }

    fn abort_handle(&self) -> AbortHandle {
        self.abort.clone()
    }
}

impl Drop for TcpRing {
    /// Closes the connections even when an [`AbortHandle`] still holds clones of them, so
    /// the neighbours see this rank leave at once.
    fn drop(&mut self) {
        if let Some(connections) = &self.connections {
            let _ = connections.next.shutdown(Shutdown::Both);
            let _ = connections.prev.shutdown(Shutdown::Both);
        }
    }
}

fn configure(stream: &TcpStream, timeout: Option<Duration>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(timeout)
}

/// Both directions of joining the ring, run at once; when one fails the other gives up.
struct Handshake {
    hello: Hello,
    deadline: Instant,
    timeout: Duration,
    give_up: AtomicBool,
}

impl Handshake {
    fn dial(&self, rank: usize, address: SocketAddr) -> Result<TcpStream, CollectiveError> {
        let outcome = self.dial_until_deadline(rank, address);
        if outcome.is_err() {
            self.give_up.store(true, Ordering::SeqCst);
        }
        outcome
    }

    fn dial_until_deadline(&self, rank: usize, address: SocketAddr) -> Result<TcpStream, CollectiveError> {
        loop {
            if self.give_up.load(Ordering::SeqCst) {
                return Err(CollectiveError::Aborted);
            }
            let left = self.time_left(rank, address, "connect to")?;
            match TcpStream::connect_timeout(&address, left.min(Duration::from_secs(1))) {
                Ok(stream) => return self.exchange_hellos(stream, rank, address),
                Err(error) => {
                    tracing::trace!(rank, %address, %error, "peer not reachable yet, retrying");
                    std::thread::sleep(RETRY_PAUSE);
                }
            }
        }
    }

    fn accept(&self, listener: &TcpListener, rank: usize, address: SocketAddr) -> Result<TcpStream, CollectiveError> {
        let outcome = self.accept_until_deadline(listener, rank, address);
        if outcome.is_err() {
            self.give_up.store(true, Ordering::SeqCst);
        }
        outcome
    }

    fn accept_until_deadline(&self, listener: &TcpListener, rank: usize, address: SocketAddr) -> Result<TcpStream, CollectiveError> {
        let action = "accept a connection from";
        listener.set_nonblocking(true).map_err(|error| io_error(rank, address, action, error, self.timeout))?;
        loop {
            if self.give_up.load(Ordering::SeqCst) {
                return Err(CollectiveError::Aborted);
            }
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).map_err(|error| io_error(rank, address, action, error, self.timeout))?;
                    return self.exchange_hellos(stream, rank, address);
                }
                Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    self.time_left(rank, address, action)?;
                    std::thread::sleep(ACCEPT_POLL);
                }
                Err(error) => return Err(io_error(rank, address, action, error, self.timeout)),
            }
        }
    }

    fn time_left(&self, rank: usize, address: SocketAddr, action: &'static str) -> Result<Duration, CollectiveError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CollectiveError::Timeout { rank, address: address.to_string(), action, after: self.timeout });
        }
        Ok(left)
    }

    /// Sends this rank's hello and checks the peer's: it must be `rank`, in the same world.
    fn exchange_hellos(&self, stream: TcpStream, rank: usize, address: SocketAddr) -> Result<TcpStream, CollectiveError> {
        let action = "exchange hellos with";
        let left = self.time_left(rank, address, action)?;
        configure(&stream, Some(left.min(HELLO_POLL)))
            .and_then(|()| (&stream).write_all(&self.hello.encode()))
            .map_err(|error| io_error(rank, address, action, error, self.timeout))?;
        let mut theirs = [0u8; HELLO_LEN];
        let mut filled = 0;
        while filled < HELLO_LEN {
            match (&stream).read(&mut theirs[filled..]) {
                Ok(0) => return Err(io_error(rank, address, action, ErrorKind::UnexpectedEof.into(), self.timeout)),
                Ok(read) => filled += read,
                // Wake up now and then to give up early when the other direction failed.
                Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                    if self.give_up.load(Ordering::SeqCst) {
                        return Err(CollectiveError::Aborted);
                    }
                    self.time_left(rank, address, action)?;
                }
                Err(error) => return Err(io_error(rank, address, action, error, self.timeout)),
            }
        }
        let ours = self.hello;
        let Some(theirs) = Hello::decode(&theirs) else {
            return Err(CollectiveError::Mismatch(format!("the peer at {address} (expected rank {rank}) is not a feral ring peer: its hello has no magic")));
        };
        if theirs.version != ours.version {
            return Err(CollectiveError::Mismatch(format!(
                "rank {rank} ({address}) speaks ring protocol version {}, rank {} speaks version {}",
                theirs.version, ours.rank, ours.version
            )));
        }
        if theirs.world_size != ours.world_size {
            return Err(CollectiveError::Mismatch(format!(
                "rank {rank} ({address}) has world size {}, rank {} has world size {}",
                theirs.world_size, ours.rank, ours.world_size
            )));
        }
        if theirs.rank as usize != rank {
            return Err(CollectiveError::Mismatch(format!(
                "expected rank {rank} at {address}, found rank {} (rank {} joining a world of size {})",
                theirs.rank, ours.rank, ours.world_size
            )));
        }
        Ok(stream)
    }
}
