//! `feral` given every coordinator's address follows the leader: it submits through a
//! standby named first, finds the job on the coordinator that took over once the leader
//! is killed, and names every address when none answers.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use feral_coordinator::control::Settings;
use feral_coordinator::leader::Election;
use feral_coordinator::store::etcd_process::EtcdProcess;
use feral_proto::leader::leader_of;
use feral_proto::v1 as pb;
use feral_proto::v1::job_service_client::JobServiceClient;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A coordinator served in this process, elected on `etcd` (leader lease 2 s).
struct Coordinator {
    url: String,
    shutdown: tokio::sync::oneshot::Sender<()>,
    served: JoinHandle<Result<(), feral_coordinator::ServeError>>,
}

impl Coordinator {
    async fn elected(etcd: &EtcdProcess, root: &Path) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let store = etcd.store("/feral/").await;
        let election = Election::connect(&etcd.endpoints, "/feral/", &url, Duration::from_secs(2)).await?;
        let settings = Settings { artifact_root: root.join("artifacts"), heartbeat_interval_ms: 100, lease_ttl_ms: 1500, deadlines: Default::default() };
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(feral_coordinator::serve_elected(settings, Default::default(), listener, store, election, async {
            let _ = stopped.await;
        }));
        Ok(Self { url, shutdown, served })
    }

    async fn jobs(&self) -> anyhow::Result<JobServiceClient<Channel>> {
        Ok(JobServiceClient::connect(self.url.clone()).await?)
    }

    /// As SIGKILL would: no drain, no hand-over.
    async fn kill(self) {
        self.served.abort();
        let _ = self.served.await;
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(());
        tokio::time::timeout(Duration::from_secs(10), self.served).await???;
        Ok(())
    }
}

/// Waits, checking every 100 ms, until `check` answers `Some`, for at most `timeout`.
async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let started = std::time::Instant::now();
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        anyhow::ensure!(started.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `coordinator` serves (leads).
async fn leading(coordinator: &Coordinator) -> anyhow::Result<()> {
    let jobs = coordinator.jobs().await?;
    wait_until("the coordinator to lead", Duration::from_secs(60), || {
        let mut jobs = jobs.clone();
        async move { Ok(jobs.list_jobs(pb::ListJobsRequest::default()).await.is_ok().then_some(())) }
    })
    .await
}

/// Runs `feral ARGS --coordinator COORDINATORS`: whether it succeeded, stdout and stderr.
async fn feral(coordinators: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_feral")).args(args).args(["--coordinator", coordinators]).output().await.expect("run feral");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_follows_the_leader() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let etcd = EtcdProcess::start().await;
    let first = Coordinator::elected(&etcd, dir.path()).await?;
    leading(&first).await?;
    let second = Coordinator::elected(&etcd, dir.path()).await?;
    let standby = second.jobs().await?;
    wait_until("the standby to name the leader", Duration::from_secs(30), || {
        let (mut standby, leader) = (standby.clone(), first.url.clone());
        async move {
            let status = standby.list_jobs(pb::ListJobsRequest::default()).await.expect_err("a standby serves nothing");
            Ok((leader_of(&status) == Some(leader)).then_some(()))
        }
    })
    .await?;

    // The standby first: the CLI moves to the leader it names.
    let standby_first = format!("{},{}", second.url, first.url);
    let spec = dir.path().join("job.toml");
    std::fs::write(&spec, format!("version = 1\nname = \"queued\"\ndataset = {:?}\n", dir.path().display().to_string()))?;
    let (ok, out, err) = feral(&standby_first, &["submit", spec.to_str().expect("utf-8 path")]).await;
    assert!(ok, "submit through a standby: {out} {err}");
    let id = out.trim().strip_prefix("submitted job ").expect("the job's id").to_owned();
    let (ok, out, err) = feral(&standby_first, &["status"]).await;
    assert!(ok && out.contains(&id), "status lists the job: {out} {err}");

    // The leader killed: the dead address first, the CLI goes on to the new leader.
    let dead = first.url.clone();
    first.kill().await;
    leading(&second).await?;
    let dead_first = format!("{dead},{}", second.url);
    let (ok, out, err) = feral(&dead_first, &["status", &id]).await;
    assert!(ok && out.contains(&id), "the new leader shows the job: {out} {err}");

    // Nobody answers: the error names every address.
    second.stop().await?;
    let (ok, out, err) = feral(&dead_first, &["status"]).await;
    assert!(!ok, "no coordinator, no success: {out}");
    for address in dead_first.split(',') {
        assert!(err.contains(address), "the error names {address}: {err}");
    }
    Ok(())
}
