//! A coordinator served in the test and one real `feral-worker` process on the CPU, for the
//! tests that need the worker binary itself (its file reads, its saved models).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use feral_coordinator::control::Settings;
use feral_coordinator::store::MemoryStore;
use feral_proto::v1 as pb;
use feral_proto::v1::job_service_client::JobServiceClient;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// The worker process, killed when the test ends however it ends.
pub struct Worker(pub Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The coordinator (artifacts under `root/artifacts`), one worker started in `root` (its
/// allowed root), and a client of the job service.
pub struct Cluster {
    pub jobs: JobServiceClient<Channel>,
    pub worker: Worker,
    shutdown: tokio::sync::oneshot::Sender<()>,
    served: JoinHandle<Result<(), feral_coordinator::ServeError>>,
}

impl Cluster {
    pub async fn start(root: &Path, worker_id: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let settings = Settings { artifact_root: root.join("artifacts"), heartbeat_interval_ms: 100, lease_ttl_ms: 3000, deadlines: Default::default() };
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(feral_coordinator::serve(settings, Default::default(), listener, Arc::new(MemoryStore::default()), async {
            let _ = stopped.await;
        }));
        let worker = Worker(
            Command::new(env!("CARGO_BIN_EXE_feral-worker")).args(["--coordinator", &url, "--id", worker_id, "--devices", "cpu"]).current_dir(root).spawn()?,
        );
        let jobs = loop {
            match JobServiceClient::connect(url.clone()).await {
                Ok(client) => break client,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        Ok(Self { jobs, worker, shutdown, served })
    }

    /// Submits `spec_toml` and waits up to `limit` for the job to succeed or fail; returns
    /// the job and how long it took.
    pub async fn run_job(&mut self, spec_toml: String, limit: Duration) -> anyhow::Result<(pb::Job, Duration)> {
        let started = Instant::now();
        let job = self.jobs.submit_job(pb::SubmitJobRequest { spec_toml }).await?.into_inner().job.expect("a job");
        while started.elapsed() < limit {
            let now = self.jobs.get_job(pb::GetJobRequest { job_id: job.id.clone() }).await?.into_inner();
            if [pb::JobState::Succeeded as i32, pb::JobState::Failed as i32].contains(&now.state) {
                return Ok((now, started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("job {} did not end within {limit:?}", job.id)
    }

    /// Stops the worker, then the coordinator.
    pub async fn stop(self) -> anyhow::Result<()> {
        drop(self.worker);
        let _ = self.shutdown.send(());
        tokio::time::timeout(Duration::from_secs(10), self.served).await???;
        Ok(())
    }
}
