//! Real etcd members on loopback for tests: a one-member cluster or a larger one, each
//! member with its own data directory and ports, all stopped when dropped. The tests need
//! `etcd` on PATH (`scripts/bootstrap.sh` installs Debian's `etcd-server`); without it they
//! fail and say so.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::Client;

use super::EtcdStore;

pub struct EtcdProcess {
    /// The members' processes, `None` once killed.
    members: Vec<Option<Child>>,
    /// The first member's client URL.
    pub endpoint: String,
    /// Every member's client URL, in member order.
    pub endpoints: Vec<String>,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

impl EtcdProcess {
    /// Starts a one-member cluster and waits (up to a minute) until it answers.
    pub async fn start() -> Self {
        Self::cluster(1).await
    }

    /// Starts a cluster of `size` members and waits (up to a minute) until every member
    /// answers and knows the Raft leader. A member that exits at once (another process took
    /// a port between our choosing it and etcd binding it) has the whole cluster started
    /// again on other ports.
    pub async fn cluster(size: usize) -> Self {
        let mut last_log = String::new();
        for _ in 0..5 {
            match Self::try_start(size).await {
                Ok(etcd) => return etcd,
                Err(log) => last_log = log,
            }
        }
        panic!("etcd did not start in five tries: {last_log}");
    }

    async fn try_start(size: usize) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let endpoints: Vec<String> = ports.iter().map(|(client, _)| format!("http://127.0.0.1:{client}")).collect();
        let peers: Vec<String> = ports.iter().map(|(_, peer)| format!("http://127.0.0.1:{peer}")).collect();
        let initial_cluster: Vec<String> = peers.iter().enumerate().map(|(i, peer)| format!("n{}={peer}", i + 1)).collect();
        let mut members = Vec::with_capacity(size);
        for (i, (endpoint, peer)) in endpoints.iter().zip(&peers).enumerate() {
            let name = format!("n{}", i + 1);
            let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).expect("etcd log");
            let child = Command::new("etcd")
                .args(["--name", &name, "--data-dir"])
                .arg(dir.path().join(&name))
                .args(["--listen-client-urls", endpoint, "--advertise-client-urls", endpoint])
                .args(["--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer])
                .args(["--initial-cluster", &initial_cluster.join(","), "--initial-cluster-state", "new"])
                .stdout(Stdio::from(log.try_clone().expect("etcd log")))
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start etcd (install etcd-server: bash scripts/bootstrap.sh): {e}"));
            members.push(Some(child));
        }
        let endpoint = endpoints[0].clone();
        let mut etcd = Self { members, endpoint, endpoints, dir };
        let started = Instant::now();
        loop {
            for (i, member) in etcd.members.iter_mut().enumerate() {
                if let Some(Ok(Some(status))) = member.as_mut().map(Child::try_wait) {
                    return Err(format!("etcd member n{} exited with {status}: {}", i + 1, etcd.log_tail(i)));
                }
            }
            if etcd.try_leader().await.is_some() {
                return Ok(etcd);
            }
            assert!(started.elapsed() < Duration::from_secs(60), "etcd did not answer within a minute: {}", etcd.log_tail(0));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The index of the member that is the Raft leader, once every live member answers
    /// and agrees on one.
    async fn try_leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for (endpoint, member) in self.endpoints.iter().zip(&self.members) {
            if member.is_none() {
                ids.push(None);
                continue;
            }
            let mut client = Client::connect([endpoint], None).await.ok()?;
            let status = client.status().await.ok()?;
            ids.push(Some(status.header()?.member_id()));
            leaders.push(status.leader());
        }
        let leader = *leaders.first()?;
        if leader == 0 || leaders.iter().any(|l| *l != leader) {
            return None;
        }
        ids.iter().position(|id| *id == Some(leader))
    }

    /// The index of the member that is the Raft leader (waits up to a minute for the live
    /// members to agree on one).
    pub async fn leader(&self) -> usize {
        let started = Instant::now();
        loop {
            if let Some(leader) = self.try_leader().await {
                return leader;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "etcd members did not agree on a leader within a minute");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills member `index` with SIGKILL.
    pub fn kill_member(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`: paused, as a VM stall or a long GC pause would; `CONT`) to
    /// member `index`.
    pub fn signal_member(&self, index: usize, signal: &str) {
        let pid = self.members[index].as_ref().map(Child::id).expect("a live member");
        let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// A store on this cluster (every member) under `prefix`.
    pub async fn store(&self, prefix: &str) -> EtcdStore {
        EtcdStore::connect(&self.endpoints, prefix).await.expect("connect to etcd")
    }

    fn log_tail(&self, index: usize) -> String {
        log_tail(&self.dir.path().join(format!("n{}.log", index + 1)))
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill_member(index);
        }
    }
}
