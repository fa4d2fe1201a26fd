//! A full disk, for real: a job whose artifact directory is on a small tmpfs fails when an
//! epoch's checkpoint no longer fits (after retries that back off, each saying why), keeps
//! nothing torn, and once space is freed `ResumeJob` carries it on from its last recorded
//! checkpoint to the model the undisturbed run trains. (Mounting a tmpfs needs root, as
//! CI and the test suite's Slurm test have.)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use feral_proto::v1 as pb;
use feral_tests::*;

/// A tmpfs mounted at a directory for the test's lifetime.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let status = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={bytes}")]).arg("tmpfs").arg(dir).status()?;
        anyhow::ensure!(status.success(), "mount -t tmpfs {} failed ({status}): this test needs root", dir.display());
        Ok(Self(dir.to_path_buf()))
    }

    fn resize(&self, bytes: u64) -> anyhow::Result<()> {
        let status = Command::new("mount").args(["-o", &format!("remount,size={bytes}")]).arg(&self.0).status()?;
        anyhow::ensure!(status.success(), "remounting {} failed ({status})", self.0.display());
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("--lazy").arg(&self.0).status();
    }
}

fn spec(dataset: &Path, artifacts: &Path) -> String {
    let base = job_spec(dataset, 4).replacen("\n\n[model]", &format!("\nartifacts = {:?}\n\n[model]", artifacts.display().to_string()), 1);
    format!("{base}\n[resources]\nmax_attempts = 2\nretry_backoff_s = 0.2\nretry_backoff_max_s = 0.5\n")
}

/// Bytes that the files under `dir` take on a tmpfs (whole 4 KiB pages).
fn pages(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        total += entry.metadata()?.len().div_ceil(4096) * 4096;
    }
    Ok(total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_failed_by_a_full_disk_resumes_after_space_is_freed_and_ends_with_the_undisturbed_model() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let dataset = synthetic_dataset(&dir.path().join("data"), 600)?;
    let coordinator = RunningCoordinator::in_memory(dir.path()).await?;
    let workers = coordinator.tch_workers(1);
    let mut jobs = coordinator.jobs().await?;
    let finished = [pb::JobState::Succeeded, pb::JobState::Failed, pb::JobState::Cancelled];

    // The undisturbed run, on an ordinary disk.
    let plain = submit(&mut jobs, spec(&dataset, &dir.path().join("plain"))).await?;
    let plain = wait_for_state(&jobs, &plain.id, &finished, Duration::from_secs(300)).await?;
    assert_eq!(plain.state(), pb::JobState::Succeeded, "{}", plain.state_reason);
    // A disk with room for one epoch's checkpoint and half of the next.
    let round = dir.path().join("plain").join(&plain.id).join("r0/a1");
    let checkpoint = pages(&round.join("checkpoint-e4"))?;
    let disk = Tmpfs::mount(&dir.path().join("disk"), checkpoint + checkpoint / 2)?;

    let full = submit(&mut jobs, spec(&dataset, &disk.0)).await?;
    let failed = wait_for_state(&jobs, &full.id, &finished, Duration::from_secs(300)).await?;
    assert_eq!(failed.state(), pb::JobState::Failed, "the job fails when its attempts are spent");
    assert!(failed.state_reason.contains("No space left on device") && failed.state_reason.contains("2 attempts"), "{}", failed.state_reason);
    assert!(failed.last_failure.contains("No space left on device"), "the last failure says why: {}", failed.last_failure);
    let epochs: Vec<u32> = failed.epochs.iter().map(|e| e.epoch).collect();
    assert_eq!(epochs, [1], "epoch 1's checkpoint fitted, epoch 2's did not");
    assert!(feral_tests::partial_files(&disk.0).is_empty(), "no partial file holds the space: {:?}", feral_tests::partial_files(&disk.0));

    // Space is freed; the job goes on from epoch 1's checkpoint.
    disk.resize(256 << 20)?;
    let resumed = jobs.resume_job(pb::ResumeJobRequest { job_id: full.id.clone() }).await?.into_inner();
    assert_eq!(resumed.state(), pb::JobState::Training);
    let done = wait_for_state(&jobs, &full.id, &finished, Duration::from_secs(300)).await?;
    assert_eq!(done.state(), pb::JobState::Succeeded, "{}", done.state_reason);
    let epochs: Vec<u32> = done.epochs.iter().map(|e| e.epoch).collect();
    assert_eq!(epochs, [1, 2, 3, 4], "every epoch of the kept model, once");
    assert!(done.result.as_ref().is_some_and(|r| r.model_path.contains("/r0/a3/")), "the third attempt's model: {:?}", done.result);
    assert_same_model(&plain, &done, 1e-5)?;
    let metrics = |job: &pb::Job| job.result.as_ref().and_then(|r| r.validation.clone());
    assert_eq!(metrics(&plain), metrics(&done), "the same metrics as the undisturbed run");
    // Resuming a job that succeeded is refused, naming why.
    let refused = jobs.resume_job(pb::ResumeJobRequest { job_id: full.id.clone() }).await.expect_err("succeeded");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("only a failed or cancelled job"), "{}", refused.message());

    for worker in workers {
        worker.stop().await?;
    }
    coordinator.stop().await
}
