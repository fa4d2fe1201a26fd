//! Several coordinators on one etcd: one leads, the others stand by (docs/design.md §3,
//! High availability). The leader is elected with etcd's election API on a lease that this
//! module keeps alive itself (etcd-client leaves that to its caller); its store writes
//! are fenced by the election key ([`Fence`]), so a leader that lost its lease, however
//! long it was paused, can never write again. A standby answers every call with
//! `Unavailable` and the leader's address in the `feral-leader` metadata
//! ([`feral_proto::leader`]), so workers and
//! the CLI move to the leader instead of losing the call. While no leader is elected (etcd
//! paused or out of reach, a leader lost and none chosen yet), a standby answers reads
//! (`GetJob`, `ListJobs`, `WatchJob`, `ListWorkers`) from its last view of the store, each
//! answer marked with that view's age in [`VIEW_AGE_METADATA`].

use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{ConnectOptions, LeaseKeepAliveStream, LeaseKeeper};
use feral_proto::leader::LEADER_METADATA;
pub use feral_proto::leader::VIEW_AGE_METADATA;
use tokio::sync::watch;
use tokio::time::{sleep, timeout, Instant};
use tonic::Status;
use tracing::{info, warn};

use crate::control::ControlPlane;
use crate::store::members::{member_unavailable, Members};
use crate::store::{Fence, StoreError};

/// What this coordinator is now, as its gRPC services see it, and (a standby) its last
/// view of the store.
#[derive(Clone)]
pub struct Role(Arc<RwLock<State>>, Arc<RwLock<Option<View>>>);

/// A standby's read-only copy of the store's jobs and workers, and when it was read.
#[derive(Clone)]
struct View {
    control: Arc<ControlPlane>,
    read_at: Instant,
}

enum State {
    /// Not leading; the leader's address when one is known.
    Standby(Option<String>),
    Leader(Arc<ControlPlane>),
}

impl Role {
    /// A coordinator that leads from the start (the only one on its store).
    pub fn leader(control: Arc<ControlPlane>) -> Self {
        Self(Arc::new(RwLock::new(State::Leader(control))), Arc::default())
    }

    pub fn standby() -> Self {
        Self(Arc::new(RwLock::new(State::Standby(None))), Arc::default())
    }

    /// A standby's new view of the store (read-only: nothing may write through it).
    pub fn set_view(&self, control: Arc<ControlPlane>) {
        *self.1.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(View { control, read_at: Instant::now() });
    }

    /// What a read answers from: the leader's state (no age), or, on a standby while no
    /// leader is elected, its last view of the store and that view's age. Otherwise the
    /// status [`control`](Self::control) gives.
    pub fn reader(&self) -> Result<(Arc<ControlPlane>, Option<Duration>), Status> {
        match &*self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()) {
            State::Leader(control) => Ok((Arc::clone(control), None)),
            State::Standby(Some(leader)) => Err(standby_status(Some(leader))),
            State::Standby(None) => match &*self.1.read().unwrap_or_else(|poisoned| poisoned.into_inner()) {
                Some(view) => Ok((Arc::clone(&view.control), Some(view.read_at.elapsed()))),
                None => Err(standby_status(None)),
            },
        }
    }

    fn set(&self, state: State) {
        *self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = state;
    }

    /// The control plane when this coordinator leads; otherwise the `Unavailable` status
    /// a caller gets, naming the leader.
    pub fn control(&self) -> Result<Arc<ControlPlane>, Status> {
        match &*self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()) {
            State::Leader(control) => Ok(Arc::clone(control)),
            State::Standby(leader) => Err(standby_status(leader.as_deref())),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.control().is_ok()
    }
}

fn standby_status(leader: Option<&str>) -> Status {
    let Some(leader) = leader else {
        return Status::unavailable("this coordinator is a standby and no leader is elected yet; retry shortly");
    };
    let mut status = Status::unavailable(format!("this coordinator is a standby; the leader is at {leader}"));
    if let Ok(value) = leader.parse() {
        status.metadata_mut().insert(LEADER_METADATA, value);
    }
    status
}

/// One coordinator's candidacy in the election `<prefix>leader`.
pub struct Election {
    members: Members,
    name: String,
    /// What the leader announces: the URL workers and the CLI reach it at.
    address: String,
    ttl: Duration,
    /// The lease of the current candidacy, revoked on a clean shutdown.
    lease: Arc<std::sync::Mutex<Option<i64>>>,
}

/// Leadership held: the fence for the store, and a future that ends when it is lost.
pub struct Leadership {
    pub fence: Fence,
    lost: watch::Receiver<bool>,
    members: Members,
    lease: i64,
    ttl: Duration,
}

impl Election {
    /// Connects its own client to etcd (a campaign waits as long as another leads, so it
    /// cannot share the store's request timeout). `ttl`: the leader's lease; a leader that
    /// stops renewing it is replaced this long after.
    pub async fn connect(endpoints: &[String], prefix: &str, address: &str, ttl: Duration) -> Result<Self, StoreError> {
        let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_keep_alive(ttl / 3, ttl / 3);
        let members = Members::connect(endpoints, options).await?;
        Ok(Self { members, name: format!("{prefix}leader"), address: address.to_owned(), ttl, lease: Arc::default() })
    }

    fn ttl_s(&self) -> i64 {
        self.ttl.as_secs().max(1) as i64
    }

    /// Waits until this coordinator is elected, keeping `role`'s leader address current
    /// meanwhile. etcd errors (a member down, a lease lost while waiting) start a new
    /// candidacy after a pause; nothing here gives up.
    pub async fn campaign(&self, role: &Role) -> Leadership {
        loop {
            match self.try_campaign(role).await {
                Ok(leadership) => {
                    info!(address = %self.address, "elected leader");
                    return leadership;
                }
                Err(problem) => {
                    warn!(%problem, "leader election failed; trying again");
                    // etcd did not answer: no leader can be confirmed, so none is named
                    // (reads are answered from the last view meanwhile).
                    role.set(State::Standby(None));
                    sleep(self.ttl / 3).await;
                }
            }
        }
    }

    async fn try_campaign(&self, role: &Role) -> Result<Leadership, String> {
        let ttl_s = self.ttl_s();
        let lease = self.members.call(|client| async move { client.lease_client().grant(ttl_s, None).await }).await.map_err(|e| e.to_string())?.id();
        *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = Some(lease);
        // The campaign waits on one member for as long as another coordinator leads; if
        // that member goes, the next candidacy asks another.
        let (member, client) = self.members.client();
        let mut election = client.election_client();
        let campaign = election.campaign(self.name.clone(), self.address.clone(), lease);
        tokio::select! {
            reply = campaign => {
                let mut reply = reply.map_err(|e| {
                    if member_unavailable(&e) {
                        self.members.failed(member);
                    }
                    e.to_string()
                })?;
                let key = reply.take_leader().ok_or("etcd elected without a leader key")?;
                let (lost, receiver) = watch::channel(false);
                let fence = Fence { key: key.key().to_vec(), revision: key.rev(), lost };
                Ok(Leadership { fence, lost: receiver, members: self.members.clone(), lease, ttl: self.ttl })
            }
            () = hold(&self.members, lease, self.ttl) => Err("the candidacy's lease ran out".into()),
            () = self.follow_leader(role) => unreachable!("following the leader never ends"),
        }
    }

    /// Keeps `role`'s leader address current while this coordinator stands by.
    async fn follow_leader(&self, role: &Role) {
        loop {
            let asked = self.members.call(|client| {
                let name = self.name.clone();
                async move { client.election_client().leader(name).await }
            });
            let leader = match timeout(self.ttl, asked).await {
                Ok(Ok(reply)) => reply.kv().and_then(|kv| kv.value_str().ok()).map(str::to_owned),
                _ => None,
            };
            role.set(State::Standby(leader));
            sleep(Duration::from_millis(500)).await;
        }
    }

    /// Revokes the candidacy's lease, so that a standby takes over at once.
    pub async fn resign(&self) {
        let lease = self.lease.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(lease) = lease {
            let revoked = self.members.call(|client| async move { client.lease_client().revoke(lease).await });
            match timeout(Duration::from_secs(2), revoked).await {
                Ok(Ok(_)) => info!("leadership handed over"),
                Ok(Err(error)) => warn!(%error, "could not hand leadership over; it passes when the lease expires"),
                Err(_) => warn!("etcd did not answer in time; leadership passes when the lease expires"),
            }
        }
    }
}

impl Leadership {
    /// Installs `control` as the leader's and waits until leadership is lost: the lease
    /// could not be renewed in time, or etcd refused a write for the fence. The role is a
    /// standby again when this returns.
    pub async fn lead(mut self, role: &Role, control: Arc<ControlPlane>) {
        role.set(State::Leader(control));
        tokio::select! {
            () = hold(&self.members, self.lease, self.ttl) => {}
            _ = self.lost.wait_for(|lost| *lost) => {}
        }
        role.set(State::Standby(None));
        warn!("leadership lost");
    }
}

/// Renews `lease` every third of its TTL; returns once it is gone, or once it may be: the
/// last renewal etcd confirmed is older than the lease's TTL.
async fn hold(members: &Members, lease: i64, ttl: Duration) {
    let mut expires = Instant::now() + ttl;
    let mut stream = None;
    while Instant::now() < expires {
        let sent = Instant::now();
        let (member, client) = members.client();
        match timeout(ttl / 3, renew(client, lease, ttl, &mut stream)).await {
            Ok(Ok(Some(left))) if left > 0 => expires = sent + Duration::from_secs(left as u64),
            Ok(Ok(Some(_))) => break,
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(problem))) if problem.contains("not found") => break,
            // A broken stream (its etcd member gone) is opened again on the next member,
            // after a short pause rather than a third of the TTL.
            _ => {
                stream = None;
                members.failed(member);
                sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        sleep((ttl / 3).min(expires.saturating_duration_since(Instant::now()))).await;
    }
}

/// One renewal of `lease`: the seconds it has left, or `None` if the stream ended.
async fn renew(
    client: etcd_client::Client,
    lease: i64,
    ttl: Duration,
    stream: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
) -> Result<Option<i64>, etcd_client::Error> {
    match stream {
        // Opening the stream renews once (the whole TTL) and checks the lease is there.
        None => {
            *stream = Some(client.lease_client().keep_alive(lease).await?);
            Ok(Some(ttl.as_secs() as i64))
        }
        Some((keeper, replies)) => {
            keeper.keep_alive().await?;
            Ok(replies.message().await?.map(|reply| reply.ttl()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Settings;
    use crate::store::etcd_process::EtcdProcess;
    use crate::store::{Store, Write};
    use feral_proto::leader::leader_of;

    fn settings() -> Settings {
        Settings { artifact_root: std::env::temp_dir(), heartbeat_interval_ms: 100, lease_ttl_ms: 1500, deadlines: Default::default() }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paused_leader_is_replaced_and_its_writes_are_refused() {
        let etcd = EtcdProcess::start().await;
        let endpoints = [etcd.endpoint.clone()];
        let store = etcd.store("/t/").await;
        // Long enough that a loaded machine renews in time.
        let ttl = Duration::from_secs(4);
        let first = Election::connect(&endpoints, "/t/", "http://a:1", ttl).await.expect("connect");
        let second = Election::connect(&endpoints, "/t/", "http://b:2", ttl).await.expect("connect");
        let (first_role, second_role) = (Role::standby(), Role::standby());

        let leading = first.campaign(&first_role).await;
        let first_store = store.fenced(leading.fence.clone());
        first_store.apply(vec![Write::put("fence-test/1", b"first".to_vec())]).await.expect("the leader writes");
        let control = Arc::new(ControlPlane::load(settings(), Arc::new(first_store.clone()), 0).await.expect("load"));
        let role = first_role.clone();
        let held = tokio::spawn(async move { leading.lead(&role, control).await });
        let role = second_role.clone();
        let campaign = tokio::spawn(async move { second.campaign(&role).await });

        // The standby names the leader, and stays a standby for several lease periods:
        // the leader renews its lease.
        let deadline = Instant::now() + Duration::from_secs(20);
        while leader_of(&second_role.control().err().expect("a standby")).as_deref() != Some("http://a:1") {
            assert!(Instant::now() < deadline, "the standby never named the leader");
            sleep(Duration::from_millis(100)).await;
        }
        sleep(2 * ttl).await;
        assert!(!campaign.is_finished(), "a standby was elected while the leader renewed its lease");
        assert!(first_role.is_leader());

        // The leader is paused (it renews nothing, as under SIGSTOP): its lease runs out and
        // the standby is elected. The paused one still believes it leads, but a write it
        // had in flight is refused by etcd.
        held.abort();
        let elected = timeout(Duration::from_secs(30), campaign).await.expect("the standby is elected").expect("campaign");
        let refused = first_store.apply(vec![Write::put("fence-test/1", b"stale".to_vec())]).await.expect_err("fenced");
        assert!(matches!(refused, StoreError::Fenced { .. }), "{refused}");
        assert!(refused.to_string().contains("no longer the leader"), "{refused}");
        assert_eq!(store.get("fence-test/1").await.expect("get"), Some(b"first".to_vec()));
        store.fenced(elected.fence.clone()).apply(vec![Write::put("fence-test/1", b"second".to_vec())]).await.expect("the new leader writes");
        assert_eq!(store.get("fence-test/1").await.expect("get"), Some(b"second".to_vec()));
    }
}
