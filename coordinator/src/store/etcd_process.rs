//! A real etcd member on loopback for tests: its own data directory and ports, stopped
//! when dropped. The tests need `etcd` on PATH (`scripts/bootstrap.sh` installs Debian's
//! `etcd-server`); without it they fail and say so.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::EtcdStore;

pub struct EtcdProcess {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

impl EtcdProcess {
    /// Starts a one-member cluster and waits (up to a minute) until it answers. A member
    /// that exits at once (another process took a port between our choosing it and etcd
    /// binding it) is started again on other ports.
    pub async fn start() -> Self {
        let mut last_log = String::new();
        for _ in 0..5 {
            match Self::try_start().await {
                Ok(etcd) => return etcd,
                Err(log) => last_log = log,
            }
        }
        panic!("etcd did not start in five tries: {last_log}");
    }

    async fn try_start() -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", "n1", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("n1={peer_url}"), "--initial-cluster-state", "new"])
            .stdout(Stdio::from(log.try_clone().expect("etcd log")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd (install etcd-server: bash scripts/bootstrap.sh): {e}"));
        let mut etcd = Self { child, endpoint, _dir: dir };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = etcd.child.try_wait() {
                return Err(format!("etcd exited with {status}: {}", log_tail(etcd._dir.path())));
            }
            if EtcdStore::connect(std::slice::from_ref(&etcd.endpoint), "").await.is_ok() {
                return Ok(etcd);
            }
            assert!(started.elapsed() < Duration::from_secs(60), "etcd did not answer within a minute: {}", log_tail(etcd._dir.path()));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A store on this member under `prefix`.
    pub async fn store(&self, prefix: &str) -> EtcdStore {
        EtcdStore::connect(std::slice::from_ref(&self.endpoint), prefix).await.expect("connect to etcd")
    }
}

fn log_tail(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default();
    text.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
