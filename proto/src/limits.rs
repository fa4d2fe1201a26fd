//! Listeners that cannot starve each other (docs/design.md §2, Connections): each admits at
//! most a set number of open connections, and one more beyond that is closed at once,
//! logged and counted, instead of taking a file descriptor the process's other listeners
//! need. A connection that sends nothing within [`FIRST_BYTE`] of opening is closed, so
//! that idle connections cannot hold the places for ever. The process also raises its own
//! descriptor limit at start ([`raise_fd_limit`]), so that the limits, not the kernel's
//! default of 1,024, decide.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections one gRPC listener holds open at most (workers, CLIs, dashboards' clients).
pub const GRPC_CONNECTIONS: usize = 4096;
/// Connections one HTTP listener (`/metrics`, the dashboard) holds open at most.
pub const HTTP_CONNECTIONS: usize = 512;

/// How long a new connection may stay silent: every client of Feral's listeners (gRPC,
/// HTTP, TLS) speaks first.
pub const FIRST_BYTE: Duration = Duration::from_secs(10);

/// Raises this process's soft limit on open files to its hard limit, and answers the
/// limit in force.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let (_, hard) = rlimit::Resource::NOFILE.get()?;
    rlimit::increase_nofile_limit(hard)
}

/// A TCP listener that admits at most `limit` open connections.
pub struct Limited {
    listener: TcpListener,
    name: &'static str,
    permits: Arc<Semaphore>,
    limit: usize,
    refused: Counter,
    first_byte: Duration,
}

impl Limited {
    /// `name` says which listener it is in logs; `refused` counts the connections it closed.
    pub fn new(listener: TcpListener, name: &'static str, limit: usize, refused: Counter) -> Self {
        Self { listener, name, permits: Arc::new(Semaphore::new(limit)), limit, refused, first_byte: FIRST_BYTE }
    }

    /// How long a new connection may stay silent (by default [`FIRST_BYTE`]).
    pub fn with_first_byte(self, first_byte: Duration) -> Self {
        Self { first_byte, ..self }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection within the limit; one beyond it is closed as it arrives.
    pub async fn accept(&self) -> (Admitted, SocketAddr) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(connection) => connection,
                Err(error) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(listener = self.name, %error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match Arc::clone(&self.permits).try_acquire_owned() {
                Ok(permit) => return (Admitted { stream, _permit: permit, silent_until: Some(Box::pin(tokio::time::sleep(self.first_byte))) }, peer),
                Err(_) => {
                    let refused = self.refused.inc() + 1;
                    // The first, then one in a thousand: a flood must not flood the log too.
                    if refused % 1000 == 1 {
                        tracing::warn!(listener = self.name, limit = self.limit, %peer, refused, "connection refused: the listener holds its limit of open connections");
                    }
                    drop(stream);
                }
            }
        }
    }
}

impl axum::serve::Listener for Limited {
    type Io = Admitted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        Limited::accept(self).await
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// An admitted connection; closing it frees its place under the limit.
pub struct Admitted {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Until its first byte arrives: when it must have.
    silent_until: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for Admitted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if let Some(deadline) = self.silent_until.as_mut() {
            // Polled here, the deadline also wakes a read that waits past it.
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the connection sent nothing in time")));
            }
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.silent_until = None;
        }
        read
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Admitted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_and_counted_and_a_freed_place_is_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let refused = Counter::default();
        let limited = Limited::new(listener, "test", 2, refused.clone());
        let mut clients = Vec::new();
        let mut admitted = Vec::new();
        for _ in 0..2 {
            clients.push(TcpStream::connect(address).await.expect("connect"));
            admitted.push(limited.accept().await.0);
        }
        // A third: accepted by the kernel, closed by the listener (the client reads EOF).
        let mut third = TcpStream::connect(address).await.expect("connect");
        let accepting = tokio::spawn(async move {
            let next = limited.accept().await;
            (limited, next)
        });
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(30), third.read(&mut byte)).await.expect("closed within 30 s");
        assert!(matches!(read, Ok(0) | Err(_)), "the third connection is closed: {read:?}");
        assert_eq!(refused.get(), 1);
        // One admitted connection closes: the next is admitted.
        drop(admitted.pop());
        let _fourth = TcpStream::connect(address).await.expect("connect");
        let (_limited, next) = tokio::time::timeout(Duration::from_secs(30), accepting).await.expect("admitted within 30 s").expect("task");
        drop(next);
        assert_eq!(refused.get(), 1);
    }

    #[tokio::test]
    async fn a_connection_silent_past_its_first_byte_deadline_is_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let deadline = Duration::from_secs(2);
        let limited = Limited::new(listener, "test", 2, Counter::default()).with_first_byte(deadline);
        let _silent = TcpStream::connect(address).await.expect("connect");
        let (mut admitted, _) = limited.accept().await;
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(60), admitted.read(&mut byte)).await.expect("ended within 60 s");
        assert_eq!(read.expect_err("timed out").kind(), std::io::ErrorKind::TimedOut);

        // One that spoke before it was admitted is read as usual, past the deadline too.
        let mut speaker = TcpStream::connect(address).await.expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut speaker, b"GET").await.expect("write");
        let (mut admitted, _) = limited.accept().await;
        let mut three = [0u8; 3];
        admitted.read_exact(&mut three).await.expect("read");
        tokio::time::sleep(deadline * 2).await;
        tokio::io::AsyncWriteExt::write_all(&mut speaker, b"!").await.expect("write");
        assert_eq!(admitted.read(&mut byte).await.expect("read"), 1);
    }
}
