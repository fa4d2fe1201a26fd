//! The members of an etcd cluster, one client each, with fail-over between them. Calls go
//! to one member and move on to the next when it cannot serve them: unreachable, or
//! without a Raft leader while the others elect one. (A single client over several
//! endpoints balances calls over them and keeps sending some to a member that is gone.)
//! A call is retried for at most [`RETRY_FOR`]; etcd's writes here put or delete whole
//! values, so one that was applied before its answer was lost can be sent again.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, Error};
use tokio::time::{sleep, Instant};
use tonic::Code;

use super::StoreError;

/// How long a call keeps trying members before its error is returned: longer than etcd
/// takes to elect a new Raft leader (about a second by default), shorter than a
/// coordinator's leader lease.
pub const RETRY_FOR: Duration = Duration::from_secs(4);

#[derive(Clone)]
pub struct Members {
    clients: Arc<[Client]>,
    /// The member calls go to now.
    current: Arc<AtomicUsize>,
}

impl Members {
    /// Clients for the members at `endpoints` (`http://host:port`); fails when none of
    /// them answers.
    pub async fn connect(endpoints: &[String], options: ConnectOptions) -> Result<Self, StoreError> {
        let unreachable = |problem: String| StoreError::Unreachable { endpoints: endpoints.join(","), problem };
        let mut clients = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            clients.push(Client::connect([endpoint], Some(options.clone())).await.map_err(|e| unreachable(e.to_string()))?);
        }
        if clients.is_empty() {
            return Err(unreachable("no etcd member is named".into()));
        }
        let members = Self { clients: clients.into(), current: Arc::default() };
        // Connecting is lazy: a status call proves a member answers.
        members.call(|mut client| async move { client.status().await }).await.map_err(|e| unreachable(e.to_string()))?;
        Ok(members)
    }

    /// The member calls go to now, and its client.
    pub fn client(&self) -> (usize, Client) {
        let index = self.current.load(Ordering::Relaxed) % self.clients.len();
        (index, self.clients[index].clone())
    }

    /// Calls move on from member `index` (if no other call has moved them already).
    pub fn failed(&self, index: usize) {
        let next = (index + 1) % self.clients.len();
        let _ = self.current.compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Runs `call` on the current member, and on the next ones while members cannot serve
    /// it, for up to [`RETRY_FOR`]; a pause follows each round of every member.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let deadline = Instant::now() + RETRY_FOR;
        let mut tried = 0;
        loop {
            let (index, client) = self.client();
            match call(client).await {
                Err(error) if member_unavailable(&error) && Instant::now() < deadline => {
                    self.failed(index);
                    tried += 1;
                    if tried % self.clients.len() == 0 {
                        sleep(Duration::from_millis(200)).await;
                    }
                }
                answer => return answer,
            }
        }
    }
}

/// Whether `error` says the member could not serve the call (gone, cut off, or without
/// a leader), rather than that etcd refused it.
pub fn member_unavailable(error: &Error) -> bool {
    match error {
        Error::TransportError(_) | Error::IoError(_) => true,
        Error::GRpcStatus(status) => matches!(status.code(), Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled),
        _ => false,
    }
}
