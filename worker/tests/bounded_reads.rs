//! A spec cannot take a worker process down through a file it names (docs/design.md §2,
//! Files): `[model] init` naming a named pipe (which blocks a plain open for ever) or
//! `/dev/zero` (which a plain read reads without end) fails its job within seconds with the
//! reason, and the same worker process, its memory small, trains the next job.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use feral_common::prepare::{prepare_synthetic, SyntheticSplits};
use feral_common::synthetic::SyntheticConfig;
use feral_coordinator::control::Settings;
use feral_coordinator::store::MemoryStore;
use feral_proto::v1 as pb;
use feral_proto::v1::job_service_client::JobServiceClient;
use tonic::transport::Channel;

/// The worker process, killed when the test ends however it ends.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Worker {
    /// Resident memory, from `/proc/<pid>/status`.
    fn resident_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).expect("the worker process is alive");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).expect("a number of kB") * 1024
    }
}

fn spec(dataset: &Path, init: Option<&Path>) -> String {
    let init = init.map(|p| format!("init = {:?}\n", p.display().to_string())).unwrap_or_default();
    format!(
        "version = 1\nname = \"reads\"\ndataset = {:?}\n\n[model]\nwidth = 8\n{init}\n[train]\nepochs = 1\nbatch_size = 32\n",
        dataset.display().to_string()
    )
}

async fn run_job(jobs: &mut JobServiceClient<Channel>, spec_toml: String) -> anyhow::Result<(pb::Job, Duration)> {
    let started = Instant::now();
    let job = jobs.submit_job(pb::SubmitJobRequest { spec_toml }).await?.into_inner().job.expect("a job");
    // Generous: the bound this test proves is that the job ends at all, where it hung.
    while started.elapsed() < Duration::from_secs(120) {
        let now = jobs.get_job(pb::GetJobRequest { job_id: job.id.clone() }).await?.into_inner();
        if [pb::JobState::Succeeded as i32, pb::JobState::Failed as i32].contains(&now.state) {
            return Ok((now, started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("job {} did not end within 120 s", job.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipe_or_a_device_as_init_fails_its_job_and_the_worker_serves_on() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let dataset = root.join("faces");
    let config = SyntheticConfig { samples: 200, image_size: 24, imbalance_ratio: 1.0, label_noise: 0.0, seed: 5 };
    prepare_synthetic(&dataset, &config, &SyntheticSplits { val_fraction: 0.2, labeled_fraction: 1.0, ..SyntheticSplits::default() })?;

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let settings = Settings { artifact_root: root.join("artifacts"), heartbeat_interval_ms: 100, lease_ttl_ms: 1500, deadlines: Default::default() };
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(feral_coordinator::serve(settings, Default::default(), listener, Arc::new(MemoryStore::default()), async {
        let _ = stopped.await;
    }));
    let worker =
        Worker(Command::new(env!("CARGO_BIN_EXE_feral-worker")).args(["--coordinator", &url, "--id", "reader", "--devices", "cpu"]).current_dir(root).spawn()?);
    let mut jobs = loop {
        match JobServiceClient::connect(url.clone()).await {
            Ok(client) => break client,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };

    let pipe = root.join("weights.safetensors");
    assert!(Command::new("mkfifo").arg(&pipe).status()?.success(), "mkfifo");
    let (failed, took) = run_job(&mut jobs, spec(&dataset, Some(&pipe))).await?;
    assert_eq!(failed.state, pb::JobState::Failed as i32, "{failed:?}");
    assert!(failed.state_reason.contains("named pipe"), "the reason says what the file is: {}", failed.state_reason);
    eprintln!("a pipe as init failed its job in {took:?}");

    let (failed, took) = run_job(&mut jobs, spec(&dataset, Some(Path::new("/dev/zero")))).await?;
    assert_eq!(failed.state, pb::JobState::Failed as i32, "{failed:?}");
    assert!(failed.state_reason.contains("/dev/zero"), "the reason names the file: {}", failed.state_reason);
    eprintln!("/dev/zero as init failed its job in {took:?}");
    // Reading /dev/zero without a bound grew the worker by gigabytes in seconds.
    let resident = worker.resident_bytes();
    assert!(resident < 1 << 30, "the worker holds {resident} bytes");

    let (done, _) = run_job(&mut jobs, spec(&dataset, None)).await?;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "the same worker trains the next job: {}", done.state_reason);

    drop(worker);
    let _ = shutdown.send(());
    tokio::time::timeout(Duration::from_secs(10), served).await???;
    Ok(())
}
