//! The TCP ring's two threads per collective. The tensor's own bytes are cut into segments
//! (about 1 MiB); a segment is a `&mut [u8]` whose ownership moves between the threads
//! through channels, so they overlap without locks. The calling thread receives from the
//! previous rank, straight into the tensor or into one incoming buffer that it sums into
//! the tensor; a scoped worker thread sends segments on to the next rank. No byte is
//! copied between the tensor and a buffer of the ring's own. The algorithms that drive it
//! are in `ring_algorithms`.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::time::Duration;

use super::wire::{Header, HEADER_LEN};
use super::{AbortHandle, CollectiveError};

/// This rank's two connections of the ring.
pub(crate) struct Link<'a> {
    pub rank: usize,
    pub world_size: usize,
    pub next: &'a TcpStream,
    pub prev: &'a TcpStream,
    pub next_address: SocketAddr,
    pub prev_address: SocketAddr,
    pub timeout: Duration,
    pub abort: &'a AbortHandle,
}

impl Link<'_> {
    pub(crate) fn next_rank(&self) -> usize {
        (self.rank + 1) % self.world_size
    }

    fn prev_rank(&self) -> usize {
        (self.rank + self.world_size - 1) % self.world_size
    }

    fn shutdown(&self) {
        // Either socket may already be closed by the peer; both must stop blocking us.
        let _ = self.next.shutdown(Shutdown::Both);
        let _ = self.prev.shutdown(Shutdown::Both);
    }

    fn send_error(&self, action: &'static str, error: std::io::Error) -> CollectiveError {
        io_error(self.next_rank(), self.next_address, action, error, self.timeout)
    }
}

/// Maps an I/O error with `rank` at `address` to the collective error that says what happened.
pub(crate) fn io_error(rank: usize, address: SocketAddr, action: &'static str, error: std::io::Error, timeout: Duration) -> CollectiveError {
    let address = address.to_string();
    match error.kind() {
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe | ErrorKind::NotConnected => {
            CollectiveError::PeerLost {
                rank,
                address,
                problem: match error.kind() {
                    ErrorKind::UnexpectedEof => format!("the connection was closed while trying to {action} it"),
                    _ => format!("the connection broke while trying to {action} it ({error})"),
                } + ": it exited, or gave up after an error of its own",
            }
        }
        ErrorKind::WouldBlock | ErrorKind::TimedOut => CollectiveError::Timeout { rank, address, action, after: timeout },
        _ => CollectiveError::Io { rank, address, action, source: error },
    }
}

/// The first error of a collective wins; recording one shuts both sockets down so the
/// other thread (and, through the closed connections, the rest of the ring) stops at once.
struct Failure<'l, 'a> {
    link: &'l Link<'a>,
    first: Mutex<Option<CollectiveError>>,
}

impl Failure<'_, '_> {
    fn record(&self, error: CollectiveError) {
        let mut first = self.first.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if first.is_none() {
            *first = Some(error);
        }
        drop(first);
        self.link.shutdown();
    }

    fn into_result(self) -> Result<(), CollectiveError> {
        match self.first.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

struct Job<'b> {
    id: usize,
    segment: &'b mut [u8],
}

/// The calling thread's view of a running collective.
pub(crate) struct Pipe<'b, 'l, 'a> {
    link: &'l Link<'a>,
    /// Segments this thread holds, by id; the others are with the worker thread.
    home: Vec<Option<&'b mut [u8]>>,
    to_worker: Sender<Job<'b>>,
    from_worker: Receiver<(usize, &'b mut [u8])>,
}

impl<'b> Pipe<'b, '_, '_> {
    /// Segment `id`, waiting for the worker thread to finish with it if it has it.
    pub(crate) fn take(&mut self, id: usize) -> Result<&'b mut [u8], CollectiveError> {
        if let Some(segment) = self.home[id].take() {
            return Ok(segment);
        }
        loop {
            match self.from_worker.recv_timeout(self.link.timeout) {
                Ok((returned, segment)) if returned == id => return Ok(segment),
                Ok((returned, segment)) => self.home[returned] = Some(segment),
                Err(RecvTimeoutError::Disconnected) => return Err(worker_stopped()),
                Err(RecvTimeoutError::Timeout) => return Err(self.link.send_error("send to", ErrorKind::TimedOut.into())),
            }
        }
    }

    /// Hands segment `id` to the worker thread, which sends it to the next rank.
    pub(crate) fn send(&mut self, id: usize, segment: &'b mut [u8]) -> Result<(), CollectiveError> {
        self.to_worker.send(Job { id, segment }).map_err(|_| worker_stopped())
    }

    /// Fills `buffer` with the next bytes from the previous rank.
    pub(crate) fn read(&self, buffer: &mut [u8], action: &'static str) -> Result<(), CollectiveError> {
        let mut stream = self.link.prev;
        stream.read_exact(buffer).map_err(|error| io_error(self.link.prev_rank(), self.link.prev_address, action, error, self.link.timeout))
    }

    fn check_header(&self, ours: Header) -> Result<(), CollectiveError> {
        let mut bytes = [0u8; HEADER_LEN];
        self.read(&mut bytes, "receive a collective's header from")?;
        let prev = self.link.prev_rank();
        let theirs = Header::decode(&bytes)
            .ok_or_else(|| CollectiveError::Mismatch(format!("rank {prev} ({}) sent bytes that are not a collective header", self.link.prev_address)))?;
        if theirs != ours {
            return Err(CollectiveError::Mismatch(format!(
                "rank {prev} ({}) started {} while rank {} started {}",
                self.link.prev_address,
                theirs.describe(),
                self.link.rank,
                ours.describe()
            )));
        }
        Ok(())
    }
}

fn worker_stopped() -> CollectiveError {
    CollectiveError::Broken("the ring's worker thread stopped".into())
}

fn work_loop<'b>(link: &Link<'_>, inbox: Receiver<Job<'b>>, returns: Sender<(usize, &'b mut [u8])>, failure: &Failure<'_, '_>) {
    let mut stream = link.next;
    for Job { id, segment } in inbox {
        let outcome = stream.write_all(segment).map_err(|error| link.send_error("send to", error));
        // The calling thread may have finished with its segments already.
        let _ = returns.send((id, segment));
        if let Err(error) = outcome {
            failure.record(error);
            return;
        }
    }
}

/// Runs one collective: sends `header`, checks the previous rank's, then runs `body` on this
/// thread while a scoped worker thread sends the segments `body` hands it. `pieces` are the
/// tensor's bytes cut into segments.
pub(crate) fn run<'b>(
    link: &Link<'_>,
    header: Header,
    pieces: Vec<&'b mut [u8]>,
    body: impl FnOnce(&mut Pipe<'b, '_, '_>) -> Result<(), CollectiveError>,
) -> Result<(), CollectiveError> {
    let failure = Failure { link, first: Mutex::new(None) };
    // The header goes out before anything else, from this thread, so a rank that fails
    // the check right away has still told its neighbour what it started.
    let mut next = link.next;
    match next.write_all(&header.encode()) {
        Ok(()) => std::thread::scope(|scope| {
            let (to_worker, inbox) = mpsc::channel();
            let (returns, from_worker) = mpsc::channel();
            let failure = &failure;
            let worker = scope.spawn(move || work_loop(link, inbox, returns, failure));
            let mut pipe = Pipe { link, home: pieces.into_iter().map(Some).collect(), to_worker, from_worker };
            if let Err(error) = pipe.check_header(header).and_then(|()| body(&mut pipe)) {
                failure.record(error);
            }
            // Closing the channel lets the worker finish what is queued and stop.
            drop(pipe);
            if worker.join().is_err() {
                failure.record(CollectiveError::Broken("the ring's worker thread panicked".into()));
            }
        }),
        Err(error) => failure.record(link.send_error("send a collective's header to", error)),
    }
    if link.abort.is_aborted() {
        return Err(CollectiveError::Aborted);
    }
    failure.into_result()
}
