//! A client's side of several coordinators on one etcd (docs/design.md §3, High
//! availability): the addresses it was given, and the one it believes leads. A standby
//! answers `Unavailable` with the leader's address in [`LEADER_METADATA`]; a call that
//! fails so moves the client to that leader, and a call that finds no coordinator at all
//! moves it to the next address.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig};
use tonic::{Code, Status};

use crate::credentials::{endpoint, AuthedChannel, BearerToken, CredentialsError};

/// The gRPC metadata key a standby names the leader's address in.
pub const LEADER_METADATA: &str = "feral-leader";

/// The gRPC metadata key of an answer that a standby read from its last view of the store
/// while no leader is elected: the view's age in milliseconds.
pub const VIEW_AGE_METADATA: &str = "feral-view-age-ms";

/// How old the standby's view an answer was read from is; `None` for a leader's answer.
pub fn view_age(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    metadata.get(VIEW_AGE_METADATA)?.to_str().ok()?.parse().ok().map(Duration::from_millis)
}

/// The leader a standby's answer names, if any.
pub fn leader_of(status: &Status) -> Option<String> {
    status.metadata().get(LEADER_METADATA).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Why a list of coordinator addresses cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorsError {
    #[error("no coordinator address in {0:?}")]
    NoAddress(String),
    #[error(transparent)]
    Address(#[from] CredentialsError),
}

/// The coordinators a client knows, each with a lazily connected channel.
#[derive(Clone, Debug)]
pub struct Coordinators {
    addresses: Arc<[String]>,
    channels: Arc<[Channel]>,
    current: Arc<AtomicUsize>,
    token: BearerToken,
}

impl Coordinators {
    /// `list`: one or more URLs (`http://host:port`), separated by commas.
    pub fn parse(list: &str) -> Result<Self, CoordinatorsError> {
        Self::parse_with_tls(list, None)
    }

    /// [`parse`](Self::parse), with TLS for `https://` addresses.
    pub fn parse_with_tls(list: &str, tls: Option<&ClientTlsConfig>) -> Result<Self, CoordinatorsError> {
        let addresses: Vec<String> = list.split(',').map(|a| a.trim().to_owned()).filter(|a| !a.is_empty()).collect();
        if addresses.is_empty() {
            return Err(CoordinatorsError::NoAddress(list.to_owned()));
        }
        let channels =
            addresses.iter().map(|address| endpoint(address, tls, Duration::from_secs(3)).map(|e| e.connect_lazy())).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { addresses: addresses.into(), channels: channels.into(), current: Arc::default(), token: BearerToken::none() })
    }

    /// The same coordinators, every call carrying `token`.
    pub fn with_token(self, token: BearerToken) -> Self {
        Self { token, ..self }
    }

    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    fn index(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.channels.len()
    }

    /// The address believed to lead.
    pub fn current(&self) -> &str {
        &self.addresses[self.index()]
    }

    /// The channel to the coordinator believed to lead, with this client's token.
    pub fn channel(&self) -> AuthedChannel {
        self.token.channel(self.channels[self.index()].clone())
    }

    /// The channel to the coordinator believed to lead, with its place in the list: give
    /// that place to [`failed_at`](Self::failed_at) if the call fails.
    pub fn channel_at(&self) -> (usize, AuthedChannel) {
        let index = self.index();
        (index, self.token.channel(self.channels[index].clone()))
    }

    /// [`failed`](Self::failed) for a call made to the coordinator at `index`. A call that
    /// fails late (it timed out on a paused coordinator the client has since left) moves
    /// nothing: without this, a slow report would send the client back to the paused one.
    /// Returns true, as for a named leader, when the client has already moved on.
    pub fn failed_at(&self, index: usize, status: &Status) -> bool {
        if index != self.index() {
            return true;
        }
        self.failed(status)
    }

    /// After a failed call: moves to the leader the answer names, or to the next address
    /// when the call reached no coordinator, timed out (a paused leader: see
    /// [`REQUEST_TIMEOUT`](crate::credentials::REQUEST_TIMEOUT)), or reached a standby that
    /// knows no leader. Returns
    /// whether it moved to a named leader: a caller may call again at once then, and
    /// should back off otherwise.
    pub fn failed(&self, status: &Status) -> bool {
        if self.channels.len() < 2 || !matches!(status.code(), Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled) {
            return false;
        }
        let named = leader_of(status).and_then(|leader| self.addresses.iter().position(|a| a.trim_end_matches('/') == leader.trim_end_matches('/')));
        let next = named.unwrap_or((self.index() + 1) % self.channels.len());
        self.current.store(next, Ordering::Relaxed);
        named.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standby(leader: &str) -> Status {
        let mut status = Status::unavailable("standby");
        status.metadata_mut().insert(LEADER_METADATA, leader.parse().expect("ascii"));
        status
    }

    #[tokio::test]
    async fn a_client_follows_the_named_leader_or_tries_the_next_address() {
        let coordinators = Coordinators::parse("http://a:1, http://b:2,http://c:3").expect("three");
        assert_eq!(coordinators.current(), "http://a:1");
        assert!(coordinators.failed(&standby("http://c:3/")), "moved to the named leader");
        assert_eq!(coordinators.current(), "http://c:3");
        assert!(!coordinators.failed(&Status::unavailable("connection refused")), "no leader named");
        assert_eq!(coordinators.current(), "http://a:1");
        // An answer from the leader itself does not move the client.
        assert!(!coordinators.failed(&Status::invalid_argument("bad spec")));
        assert_eq!(coordinators.current(), "http://a:1");
        // A leader it was not told of: the next address.
        assert!(!coordinators.failed(&standby("http://elsewhere:9")));
        assert_eq!(coordinators.current(), "http://b:2");
        // One address: nowhere to move.
        let one = Coordinators::parse("http://a:1").expect("one");
        assert!(!one.failed(&standby("http://b:2")));
        assert_eq!(one.current(), "http://a:1");
    }

    /// A coordinator that accepts connections and never answers (SIGSTOPped: the kernel
    /// still completes the handshake) holds a call for REQUEST_TIMEOUT at most, and the
    /// client then moves to the next coordinator.
    #[tokio::test]
    async fn a_call_to_a_paused_coordinator_times_out_and_the_client_moves_on() {
        let paused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = paused.local_addr().expect("address");
        // Accept and hold every connection, reading nothing, for the whole test.
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in paused.incoming() {
                held.push(stream);
            }
        });
        let coordinators = Coordinators::parse(&format!("http://{address},http://127.0.0.1:1")).expect("two");
        let mut client = crate::v1::worker_service_client::WorkerServiceClient::new(coordinators.channel());
        let request = crate::v1::HeartbeatRequest { worker_id: "w1".into(), running: vec![], ..Default::default() };
        let started = std::time::Instant::now();
        let call = tokio::time::timeout(Duration::from_secs(60), client.heartbeat(request)).await;
        let status = call.expect("the call ends by itself, not by this test's limit").expect_err("no answer");
        assert!(started.elapsed() >= crate::credentials::REQUEST_TIMEOUT, "it waited its deadline");
        assert_eq!(status.code(), Code::Cancelled, "{status:?}");
        assert!(!coordinators.failed(&status), "no leader named");
        assert_eq!(coordinators.current(), "http://127.0.0.1:1", "the next address");
    }

    #[tokio::test]
    async fn a_late_failure_of_a_call_to_a_coordinator_already_left_moves_nothing() {
        let coordinators = Coordinators::parse("http://a:1,http://b:2").expect("two");
        let (slow, _) = coordinators.channel_at();
        // Another call finds a: timed out, and the client moves to b.
        let (fast, _) = coordinators.channel_at();
        assert!(!coordinators.failed_at(fast, &Status::cancelled("Timeout expired")));
        assert_eq!(coordinators.current(), "http://b:2");
        // The slow call to a times out later: the client stays with b.
        assert!(coordinators.failed_at(slow, &Status::cancelled("Timeout expired")), "already moved on");
        assert_eq!(coordinators.current(), "http://b:2");
    }

    #[tokio::test]
    async fn bad_lists_are_named() {
        assert!(Coordinators::parse(" , ").expect_err("empty").to_string().contains("no coordinator"));
        assert!(Coordinators::parse("http://a:1,not a url").expect_err("bad").to_string().contains("not a url"));
    }
}
