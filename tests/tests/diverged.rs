//! A run whose loss diverges (a spec inside every documented range: focal loss with
//! α = 1e308 for every class) fails with that reason instead of storing NaN metrics as a
//! success, and its record reads back after a coordinator restart on the same store: the
//! embedded store (redb) and a real etcd.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use feral_coordinator::store::etcd_process::EtcdProcess;
use feral_coordinator::store::{EmbeddedStore, Store};
use feral_proto::v1 as pb;
use feral_tests::*;

/// Runs the diverging job on a coordinator over `open()`'s store, then reads it back from
/// a second coordinator over a new `open()` of the same store.
async fn diverges_and_reads_back(dir: &std::path::Path, open: impl AsyncFn() -> anyhow::Result<Arc<dyn Store>>) -> anyhow::Result<()> {
    let dataset = synthetic_dataset(&dir.join("data"), 600)?;
    let classes =
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(dataset.join("manifest.json"))?)?["classes"].as_array().map_or(0, Vec::len);
    let alpha = vec!["1e308"; classes].join(", ");
    let spec = format!("{}\n[train.loss]\nkind = \"focal\"\nfocal_alpha = [{alpha}]\n", job_spec(&dataset, 2));
    let settings = test_settings(dir);
    let first = RunningCoordinator::start(settings.clone(), open().await?, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let workers = first.tch_workers(1);
    let mut jobs = first.jobs().await?;
    let job = submit(&mut jobs, spec).await?;
    let ended = wait_for_state(&jobs, &job.id, &[pb::JobState::Succeeded, pb::JobState::Failed], Duration::from_secs(300)).await?;
    assert_eq!(ended.state(), pb::JobState::Failed, "a diverged run does not succeed");
    assert!(ended.state_reason.contains("training diverged"), "{}", ended.state_reason);
    assert!(ended.epochs.iter().all(|e| e.train_loss.is_finite()), "no non-finite number is stored: {:?}", ended.epochs);
    for worker in workers {
        worker.stop().await?;
    }
    first.stop().await?;

    let second = RunningCoordinator::start(settings, open().await?, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let mut jobs = second.jobs().await?;
    let reread = get_job(&mut jobs, &job.id).await?;
    assert_eq!((reread.state(), reread.state_reason.as_str()), (pb::JobState::Failed, ended.state_reason.as_str()), "the record reads back");
    second.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverging_run_fails_with_its_reason_and_its_record_reads_back_from_redb() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let store_path = dir.path().join("state.redb");
    diverges_and_reads_back(dir.path(), async || Ok(Arc::new(EmbeddedStore::open(&store_path)?) as Arc<dyn Store>)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverging_run_fails_with_its_reason_and_its_record_reads_back_from_etcd() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let etcd = EtcdProcess::start().await;
    diverges_and_reads_back(dir.path(), async || Ok(Arc::new(etcd.store("/feral/").await) as Arc<dyn Store>)).await
}
