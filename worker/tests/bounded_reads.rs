//! A spec cannot take a worker process down through a file it names (docs/design.md §2,
//! Files): `[model] init` naming a named pipe (which blocks a plain open for ever) or
//! `/dev/zero` (which a plain read reads without end) fails its job within seconds with the
//! reason, and the same worker process, its memory small, trains the next job.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use feral_common::prepare::{prepare_synthetic, SyntheticSplits};
use feral_common::synthetic::SyntheticConfig;
use feral_proto::v1 as pb;

mod support;

use support::{Cluster, Worker};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipe_or_a_device_as_init_fails_its_job_and_the_worker_serves_on() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let dataset = root.join("faces");
    let config = SyntheticConfig { samples: 200, image_size: 24, imbalance_ratio: 1.0, label_noise: 0.0, seed: 5 };
    prepare_synthetic(&dataset, &config, &SyntheticSplits { val_fraction: 0.2, labeled_fraction: 1.0, ..SyntheticSplits::default() })?;

    let mut cluster = Cluster::start(root, "reader").await?;
    // Generous: the bound this test proves is that the job ends at all, where it hung.
    let limit = Duration::from_secs(120);

    let pipe = root.join("weights.safetensors");
    assert!(Command::new("mkfifo").arg(&pipe).status()?.success(), "mkfifo");
    let (failed, took) = cluster.run_job(spec(&dataset, Some(&pipe)), limit).await?;
    assert_eq!(failed.state, pb::JobState::Failed as i32, "{failed:?}");
    assert!(failed.state_reason.contains("named pipe"), "the reason says what the file is: {}", failed.state_reason);
    eprintln!("a pipe as init failed its job in {took:?}");

    let (failed, took) = cluster.run_job(spec(&dataset, Some(Path::new("/dev/zero"))), limit).await?;
    assert_eq!(failed.state, pb::JobState::Failed as i32, "{failed:?}");
    assert!(failed.state_reason.contains("/dev/zero"), "the reason names the file: {}", failed.state_reason);
    eprintln!("/dev/zero as init failed its job in {took:?}");
    // Reading /dev/zero without a bound grew the worker by gigabytes in seconds.
    let resident = cluster.worker.resident_bytes();
    assert!(resident < 1 << 30, "the worker holds {resident} bytes");

    let (done, _) = cluster.run_job(spec(&dataset, None), limit).await?;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "the same worker trains the next job: {}", done.state_reason);

    cluster.stop().await
}
