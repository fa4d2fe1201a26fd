//! A sandbox for end-to-end tests: a coordinator and workers in one process on
//! `127.0.0.1` listeners bound first, real gRPC between them, every wait under a timeout.

pub mod scripted;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use feral_common::prepare::{prepare_synthetic, SyntheticSplits};
use feral_common::synthetic::SyntheticConfig;
use feral_common::task::{Assignment, EpochReport, TaskKind, TaskOutcome};
use feral_coordinator::control::Settings;
use feral_coordinator::leader::Election;
use feral_coordinator::store::{EtcdStore, MemoryStore, Store};
use feral_coordinator::Access;
use feral_proto::credentials::BearerToken;
use feral_proto::v1 as pb;
use feral_proto::v1::job_service_client::JobServiceClient;
use feral_proto::v1::worker_service_client::WorkerServiceClient;
use feral_worker::agent::{self, AgentConfig};
use feral_worker::collective::Collective;
use feral_worker::confine::Roots;
use feral_worker::error::TaskError;
use feral_worker::runner::{TaskRunner, TchRunner};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A listener on `address`. A coordinator started again on the address of one just stopped
/// waits, up to 30 s, for the port to be free, rather than for a fixed time.
async fn bind(address: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::net::TcpListener::bind(address).await {
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            bound => return bound.with_context(|| format!("bind {address}")),
        }
    }
}

/// Computes with libtorch as a worker does ([`TchRunner`]) and remembers the kind of every
/// task it finished, so a test can tell which workers did what.
#[derive(Debug, Default)]
pub struct Recording {
    runner: TchRunner,
    finished: Mutex<Vec<TaskKind>>,
}

impl Recording {
    /// How many tasks of `kind` this runner finished.
    pub fn finished(&self, kind: TaskKind) -> usize {
        self.finished.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|&&k| k == kind).count()
    }
}

impl TaskRunner for Recording {
    fn run(
        &self,
        task: &Assignment,
        collective: &mut dyn Collective,
        on_epoch: &mut dyn FnMut(EpochReport, u32),
        stop: &AtomicBool,
    ) -> Result<TaskOutcome, TaskError> {
        let outcome = self.runner.run(task, collective, on_epoch, stop);
        if outcome.is_ok() {
            self.finished.lock().unwrap_or_else(|p| p.into_inner()).push(task.key.kind);
        }
        outcome
    }
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// A tokens file for the access tests: submitters `alice` and `bob`, admin `root`, workers
/// `w1` and `w2`.
pub const TEST_TOKENS: &str = r#"
version = 1
[[token]]
name = "alice"
role = "submitter"
secret = "alice-0123456789abcdef"
[[token]]
name = "bob"
role = "submitter"
secret = "bob-0123456789abcdef"
[[token]]
name = "root"
role = "admin"
secret = "root-0123456789abcdef"
[[token]]
name = "w1"
role = "worker"
secret = "w1-0123456789abcdef"
[[token]]
name = "w2"
role = "worker"
secret = "w2-0123456789abcdef"
"#;

/// Settings with short leases, artifacts under `root`.
pub fn test_settings(root: &Path) -> Settings {
    Settings { artifact_root: root.join("artifacts"), heartbeat_interval_ms: 100, lease_ttl_ms: 1500, deadlines: Default::default() }
}

/// A coordinator served in this process; stopped (and its store released) by [`stop`](Self::stop).
pub struct RunningCoordinator {
    pub address: SocketAddr,
    /// Where it serves HTTP (`/metrics`), when started with [`observed`](Self::observed).
    pub http: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    served: JoinHandle<Result<(), feral_coordinator::ServeError>>,
}

impl RunningCoordinator {
    /// Serves on `address` (`127.0.0.1:0` for any free port).
    pub async fn start(settings: Settings, store: Arc<dyn Store>, address: SocketAddr) -> anyhow::Result<Self> {
        Self::start_with(settings, Access::default(), store, address).await
    }

    /// [`start`](Self::start) with `access` (tokens) in front of both APIs.
    pub async fn start_with(settings: Settings, access: Access, store: Arc<dyn Store>, address: SocketAddr) -> anyhow::Result<Self> {
        let listener = bind(address).await?;
        let address = listener.local_addr()?;
        let (shutdown, stopped) = oneshot::channel();
        let served = tokio::spawn(feral_coordinator::serve(settings, access, listener, store, async {
            let _ = stopped.await;
        }));
        Ok(Self { address, http: None, shutdown: Some(shutdown), served })
    }

    /// An in-memory coordinator (as [`in_memory`](Self::in_memory)) that also serves HTTP.
    pub async fn observed(root: &Path) -> anyhow::Result<Self> {
        Self::observed_with(root, Access::default()).await
    }

    /// [`observed`](Self::observed) with `access` (tokens) in front of both APIs and the dashboard.
    pub async fn observed_with(root: &Path, access: Access) -> anyhow::Result<Self> {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let grpc = tokio::net::TcpListener::bind(loopback).await?;
        let http = tokio::net::TcpListener::bind(loopback).await?;
        let (address, http_address) = (grpc.local_addr()?, http.local_addr()?);
        let listeners = feral_coordinator::Listeners { grpc, http: Some(http) };
        let (shutdown, stopped) = oneshot::channel();
        let served = tokio::spawn(feral_coordinator::serve(test_settings(root), access, listeners, Arc::new(MemoryStore::default()), async {
            let _ = stopped.await;
        }));
        Ok(Self { address, http: Some(http_address), shutdown: Some(shutdown), served })
    }

    /// One of several coordinators on the etcd members at `endpoints`: it stands by until
    /// elected (leader lease `lease`), then leads with fenced writes.
    pub async fn elected(settings: Settings, endpoints: &[String], prefix: &str, lease: Duration) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let address = listener.local_addr()?;
        let store = EtcdStore::connect(endpoints, prefix).await?;
        let election = Election::connect(endpoints, prefix, &format!("http://{address}"), lease).await?;
        let (shutdown, stopped) = oneshot::channel();
        let served = tokio::spawn(feral_coordinator::serve_elected(settings, Default::default(), listener, store, election, async {
            let _ = stopped.await;
        }));
        Ok(Self { address, http: None, shutdown: Some(shutdown), served })
    }

    /// Ends the coordinator as SIGKILL would: no drain, no hand-over of its leadership.
    pub async fn kill(self) {
        self.served.abort();
        let _ = self.served.await;
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.served).await.context("coordinator did not stop")???;
        Ok(())
    }

    pub async fn jobs(&self) -> anyhow::Result<JobServiceClient<Channel>> {
        Ok(JobServiceClient::connect(self.url()).await?)
    }

    pub async fn workers(&self) -> anyhow::Result<WorkerServiceClient<Channel>> {
        Ok(WorkerServiceClient::connect(self.url()).await?)
    }

    /// A coordinator with [`test_settings`] for `root`, on an in-memory store, at a free
    /// loopback port.
    pub async fn in_memory(root: &Path) -> anyhow::Result<Self> {
        Self::start(test_settings(root), Arc::new(MemoryStore::default()), SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Workers `w1`, `w2`, … of this coordinator that train for real (libtorch on the CPU).
    pub fn tch_workers(&self, count: usize) -> Vec<RunningWorker> {
        (1..=count).map(|i| RunningWorker::start(&self.url(), &format!("w{i}"), Arc::new(TchRunner::default()))).collect()
    }
}

/// A worker agent in this process; [`stop`](Self::stop) ends it as a killed worker would
/// end: no more heartbeats.
pub struct RunningWorker {
    pub id: String,
    shutdown: Option<oneshot::Sender<()>>,
    running: JoinHandle<Result<(), agent::AgentError>>,
}

impl RunningWorker {
    pub fn start(coordinator_url: &str, id: &str, runner: Arc<dyn TaskRunner>) -> Self {
        Self::start_with_token(coordinator_url, id, runner, BearerToken::none())
    }

    /// [`start`](Self::start), every call carrying `token`.
    pub fn start_with_token(coordinator_url: &str, id: &str, runner: Arc<dyn TaskRunner>, token: BearerToken) -> Self {
        Self::start_with(coordinator_url, id, runner, token, None)
    }

    /// [`start`](Self::start) with `token` and TLS settings (for an `https://` URL).
    pub fn start_with(
        coordinator_url: &str,
        id: &str,
        runner: Arc<dyn TaskRunner>,
        token: BearerToken,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Self {
        let config = AgentConfig {
            coordinator: coordinator_url.to_owned(),
            worker_id: id.to_owned(),
            hostname: "sandbox".to_owned(),
            advertise_host: "127.0.0.1".to_owned(),
            slots: vec![pb::Slot { device: "cpu".into(), name: "cpu".into() }],
            token,
            tls,
            // Every test keeps its files in a temporary directory.
            roots: Roots::new([std::env::temp_dir()]).expect("the temporary directory"),
        };
        let (shutdown, stopped) = oneshot::channel();
        let running = tokio::spawn(agent::run(config, runner, async {
            let _ = stopped.await;
        }));
        Self { id: id.to_owned(), shutdown: Some(shutdown), running }
    }

    /// Whether the agent has ended by itself (its credential refused).
    pub fn is_finished(&self) -> bool {
        self.running.is_finished()
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.running).await.context("worker did not stop")???;
        Ok(())
    }
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with `what`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn get_job(client: &mut JobServiceClient<Channel>, id: &str) -> anyhow::Result<pb::Job> {
    Ok(client.get_job(pb::GetJobRequest { job_id: id.to_owned() }).await?.into_inner())
}

/// Waits until job `id` is in one of `states`; returns it.
pub async fn wait_for_state(client: &JobServiceClient<Channel>, id: &str, states: &[pb::JobState], timeout: Duration) -> anyhow::Result<pb::Job> {
    let what = format!("job {id} to reach {states:?}");
    wait_until(&what, timeout, || {
        let mut client = client.clone();
        async move {
            let job = get_job(&mut client, id).await?;
            Ok(states.iter().any(|s| *s as i32 == job.state).then_some(job))
        }
    })
    .await
}

/// What interrupted writes left under `dir` (`.partial-*` files and directories, at any depth).
pub fn partial_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with(".partial") {
            found.push(path);
        } else if path.is_dir() {
            found.extend(partial_files(&path));
        }
    }
    found
}

/// A small synthetic dataset in `dir`: 32×32 faces, mild imbalance and label noise.
pub fn synthetic_dataset(dir: &Path, samples: usize) -> anyhow::Result<PathBuf> {
    let config = SyntheticConfig { samples, image_size: 32, imbalance_ratio: 4.0, label_noise: 0.05, seed: 11 };
    let splits = SyntheticSplits { val_fraction: 0.2, labeled_fraction: 1.0, shard_size: 1024, ..SyntheticSplits::default() };
    prepare_synthetic(dir, &config, &splits)?;
    Ok(dir.to_path_buf())
}

/// A job spec TOML for `dataset` with a small, fast model.
pub fn job_spec(dataset: &Path, epochs: u32) -> String {
    format!(
        "version = 1\nname = \"sandbox\"\ndataset = {:?}\n\n[model]\nwidth = 16\n\n[train]\nepochs = {epochs}\nbatch_size = 64\nlearning_rate = 0.004\n",
        dataset.display().to_string()
    )
}

pub async fn submit(client: &mut JobServiceClient<Channel>, spec_toml: String) -> anyhow::Result<pb::Job> {
    let job = client.submit_job(pb::SubmitJobRequest { spec_toml }).await?.into_inner().job;
    job.context("submit answered without a job")
}

/// The trained weights of a finished job's model, by name.
pub fn model_weights(job: &pb::Job) -> anyhow::Result<Vec<(String, tch::Tensor)>> {
    let path = &job.result.as_ref().context("the job has no result")?.model_path;
    let mut named = tch::Tensor::read_safetensors(path)?;
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(named)
}

/// Asserts that two finished jobs' models agree, every tensor within `tolerance` of its
/// scale (printing each tensor's largest difference).
pub fn assert_same_model(a: &pb::Job, b: &pb::Job, tolerance: f64) -> anyhow::Result<()> {
    let (a, b) = (model_weights(a)?, model_weights(b)?);
    assert_eq!(a.len(), b.len());
    for ((name, x), (other, y)) in a.iter().zip(&b) {
        assert_eq!(name, other);
        let difference = (x - y).abs().max().double_value(&[]);
        let scale = y.abs().max().double_value(&[]).max(1e-3);
        eprintln!("{name}: largest difference {difference:.3e} (scale {scale:.3e})");
        assert!(difference / scale < tolerance, "{name}: the models differ by {difference} (scale {scale})");
    }
    Ok(())
}
