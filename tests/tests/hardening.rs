//! What a careless or hostile user sends cannot take Feral down: a task that panics, or
//! one too large for the worker's memory, fails its own job with the reason and the
//! worker serves the next one; two jobs that name one artifacts directory write apart.

use std::sync::Arc;
use std::time::Duration;

use feral_common::prepare::{prepare_synthetic, SyntheticSplits};
use feral_common::synthetic::SyntheticConfig;
use feral_proto::v1 as pb;
use feral_tests::scripted::ScriptedRunner;
use feral_tests::*;
use feral_worker::runner::TchRunner;

const FINAL: [pb::JobState; 2] = [pb::JobState::Succeeded, pb::JobState::Failed];

fn named(dir: &std::path::Path, name: &str) -> String {
    job_spec(dir, 2).replace("name = \"sandbox\"", &format!("name = {name:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_task_fails_its_job_with_the_reason_and_the_worker_serves_on() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let coordinator = RunningCoordinator::in_memory(dir.path()).await?;
    let runner = ScriptedRunner { panic_for: Some("boom".into()), ..ScriptedRunner::fast(0) };
    let worker = RunningWorker::start(&coordinator.url(), "w1", Arc::new(runner));
    let mut jobs = coordinator.jobs().await?;

    let doomed = submit(&mut jobs, named(dir.path(), "boom")).await?;
    let failed = wait_for_state(&jobs, &doomed.id, &FINAL, Duration::from_secs(60)).await?;
    assert_eq!(failed.state, pb::JobState::Failed as i32, "a panic fails the job: {failed:?}");
    assert!(
        failed.state_reason.contains("panicked") && failed.state_reason.contains("scripted panic in a training task of boom"),
        "the reason names the panic: {:?}",
        failed.state_reason
    );
    // The panic freed the slot and the worker process lives on: the next job runs there.
    let next = submit(&mut jobs, named(dir.path(), "fine")).await?;
    let done = wait_for_state(&jobs, &next.id, &FINAL, Duration::from_secs(60)).await?;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{}", done.state_reason);

    worker.stop().await?;
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_too_large_for_the_workers_memory_is_refused_before_it_allocates() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let coordinator = RunningCoordinator::in_memory(dir.path()).await?;
    let worker = RunningWorker::start(&coordinator.url(), "w1", Arc::new(TchRunner::default()));
    let mut jobs = coordinator.jobs().await?;
    // 96×96 faces: within every range, but one step of width 512 and 4096 images would
    // hold some 800 GiB of activations. Allocated, Linux would kill the worker process.
    let data = dir.path().join("faces96");
    let config = SyntheticConfig { samples: 200, image_size: 96, imbalance_ratio: 1.0, label_noise: 0.0, seed: 3 };
    prepare_synthetic(&data, &config, &SyntheticSplits { val_fraction: 0.2, labeled_fraction: 1.0, ..SyntheticSplits::default() })?;
    let huge = job_spec(&data, 1).replace("width = 16", "width = 512").replace("batch_size = 64", "batch_size = 4096");
    let job = submit(&mut jobs, huge).await?;
    let failed = wait_for_state(&jobs, &job.id, &FINAL, Duration::from_secs(120)).await?;
    assert_eq!(failed.state, pb::JobState::Failed as i32, "{failed:?}");
    let reason = &failed.state_reason;
    assert!(reason.contains("too large for this worker") && reason.contains("4096 images of 1×96×96"), "the reason gives the sizes: {reason}");
    assert!(reason.contains("lower train.batch_size"), "and what to change: {reason}");
    assert!(!reason.contains("gave up after"), "the same job would not fit on a retry either: {reason}");

    // The same worker, still alive, trains a job that fits.
    let fits = submit(&mut jobs, job_spec(&data, 1)).await?;
    let done = wait_for_state(&jobs, &fits.id, &FINAL, Duration::from_secs(120)).await?;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{}", done.state_reason);

    worker.stop().await?;
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_jobs_that_name_one_artifacts_directory_write_apart() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let coordinator = RunningCoordinator::in_memory(dir.path()).await?;
    let worker = RunningWorker::start(&coordinator.url(), "w1", Arc::new(ScriptedRunner::fast(0)));
    let mut jobs = coordinator.jobs().await?;
    let shared = dir.path().join("shared");
    let spec = format!("artifacts = {:?}\n{}", shared.display().to_string(), job_spec(dir.path(), 2));
    let first = submit(&mut jobs, spec.clone()).await?;
    let second = submit(&mut jobs, spec).await?;
    let mut models = Vec::new();
    for job in [&first, &second] {
        let done = wait_for_state(&jobs, &job.id, &FINAL, Duration::from_secs(60)).await?;
        assert_eq!(done.state, pb::JobState::Succeeded as i32, "{}", done.state_reason);
        let model = std::path::PathBuf::from(&done.result.as_ref().expect("a result").model_path);
        assert!(model.starts_with(shared.join(&job.id)), "{} writes under its own directory, not {}", job.id, model.display());
        models.push(model);
    }
    assert_ne!(models[0], models[1]);

    worker.stop().await?;
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_the_coordinator_cannot_process_fail_their_job_not_the_service() -> anyhow::Result<()> {
    use feral_coordinator::store::{EmbeddedStore, Store, Write};
    init_tracing();
    let dir = tempfile::tempdir()?;
    let store_path = dir.path().join("state.redb");
    let settings = test_settings(dir.path());
    let any_port = std::net::SocketAddr::from(([127, 0, 0, 1], 0));

    // A queued job (no worker yet), then its stored spec edited past a bound, as a record
    // written before the bound existed would be; and a record that is not JSON at all.
    let first = RunningCoordinator::start(settings.clone(), Arc::new(EmbeddedStore::open(&store_path)?), any_port).await?;
    let mut jobs = first.jobs().await?;
    let queued = submit(&mut jobs, job_spec(dir.path(), 2)).await?;
    first.stop().await?;
    {
        let store = EmbeddedStore::open(&store_path)?;
        let key = format!("jobs/{}", queued.id);
        let mut record: serde_json::Value = serde_json::from_slice(&store.get(&key).await?.expect("the job is stored"))?;
        record["spec"]["resources"]["workers"] = serde_json::json!(4_294_967_295u64);
        store.apply(vec![Write::put(key, serde_json::to_vec(&record)?), Write::put("jobs/job-garbage", b"{ not json".to_vec())]).await?;
    }

    let second = RunningCoordinator::start(settings.clone(), Arc::new(EmbeddedStore::open(&store_path)?), any_port).await?;
    let mut jobs = second.jobs().await?;
    let failed = get_job(&mut jobs, &queued.id).await?;
    assert_eq!(failed.state, pb::JobState::Failed as i32);
    assert!(failed.state_reason.contains("resources.workers"), "the reason names the field: {}", failed.state_reason);
    // The record that is not JSON is not dropped from what users see: it is a failed job
    // that says what happened to it.
    let unreadable = get_job(&mut jobs, "job-garbage").await?;
    assert_eq!(unreadable.state, pb::JobState::Failed as i32);
    assert!(
        unreadable.state_reason.contains("its stored record cannot be read") && unreadable.state_reason.contains("quarantine/jobs/job-garbage"),
        "{}",
        unreadable.state_reason
    );
    let listed = jobs.list_jobs(pb::ListJobsRequest::default()).await?.into_inner().jobs;
    assert!(listed.iter().any(|j| j.id == "job-garbage"), "listed: {listed:?}");
    // The service goes on: the next job runs to the end.
    let worker = RunningWorker::start(&second.url(), "w1", Arc::new(ScriptedRunner::fast(0)));
    let next = submit(&mut jobs, job_spec(dir.path(), 2)).await?;
    let done = wait_for_state(&jobs, &next.id, &FINAL, Duration::from_secs(60)).await?;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{}", done.state_reason);
    worker.stop().await?;
    second.stop().await?;

    // The unreadable bytes are kept aside for a person; what stands in their place reads.
    let store = EmbeddedStore::open(&store_path)?;
    let standing: serde_json::Value = serde_json::from_slice(&store.get("jobs/job-garbage").await?.expect("kept in place"))?;
    assert_eq!(standing["id"], "job-garbage");
    assert_eq!(store.get("quarantine/jobs/job-garbage").await?.as_deref(), Some(&b"{ not json"[..]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_larger_than_the_cluster_says_what_it_waits_for() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let coordinator = RunningCoordinator::in_memory(dir.path()).await?;
    let worker = RunningWorker::start(&coordinator.url(), "w1", Arc::new(ScriptedRunner::fast(0)));
    let mut jobs = coordinator.jobs().await?;
    let job = submit(&mut jobs, format!("{}\n[resources]\nworkers = 5\n", job_spec(dir.path(), 2))).await?;
    // Until w1 registers, the preparing task waits too ("waiting for 1 device slots for
    // its prepare task; 0 live workers have 0"): wait for the gang's own reason.
    let reason = wait_until("the job to say why its gang waits", Duration::from_secs(60), || {
        let mut jobs = jobs.clone();
        let id = job.id.clone();
        async move { Ok(Some(get_job(&mut jobs, &id).await?.state_reason).filter(|r| r.contains("waiting for 5 device slots"))) }
    })
    .await?;
    assert!(reason.contains("1 live workers have 1"), "{reason}");
    let listed = jobs.list_jobs(pb::ListJobsRequest::default()).await?.into_inner().jobs;
    assert_eq!(listed[0].state_reason, reason, "the listing says it too");
    worker.stop().await?;
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_are_summaries_in_pages_whatever_the_specs_weigh() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let coordinator = RunningCoordinator::in_memory(dir.path()).await?;
    let mut jobs = coordinator.jobs().await?;
    // 80 specs of 60 KiB: 4.8 MB together, more than gRPC's 4 MiB message limit, were
    // the listing to carry them.
    let padding = format!("# {}\n", "x".repeat(60 * 1024));
    let mut submitted = Vec::new();
    for _ in 0..80 {
        submitted.push(submit(&mut jobs, format!("{padding}{}", job_spec(dir.path(), 2))).await?.id);
    }
    let all = jobs.list_jobs(pb::ListJobsRequest { page_size: 1000, page_token: String::new() }).await?.into_inner();
    assert_eq!(all.jobs.len(), 80);
    assert!(all.next_page_token.is_empty());
    assert!(all.jobs.iter().all(|j| j.spec_toml.is_empty() && j.epochs.is_empty()), "summaries carry no spec");

    let (mut paged, mut page_token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = jobs.list_jobs(pb::ListJobsRequest { page_size: 30, page_token }).await?.into_inner();
        pages += 1;
        paged.extend(page.jobs.into_iter().map(|j| j.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages, 3, "30 + 30 + 20");
    let newest_first: Vec<String> = all.jobs.iter().map(|j| j.id.clone()).collect();
    assert_eq!(paged, newest_first, "pages join up: every job once, newest first");
    let mut sorted = paged.clone();
    sorted.sort();
    submitted.sort();
    assert_eq!(sorted, submitted);
    // GetJob still has the whole job.
    assert!(get_job(&mut jobs, &submitted[0]).await?.spec_toml.len() > 60 * 1024);

    let refused = jobs.list_jobs(pb::ListJobsRequest { page_size: 5000, page_token: String::new() }).await.expect_err("too large a page");
    assert!(refused.message().contains("`page_size` must be at most 1000"), "{refused:?}");
    let refused = jobs.list_jobs(pb::ListJobsRequest { page_size: 0, page_token: "nonsense".into() }).await.expect_err("a forged token");
    assert!(refused.message().contains("`page_token`"), "{refused:?}");

    // Workers page the same way.
    let workers: Vec<RunningWorker> = (0..5).map(|i| RunningWorker::start(&coordinator.url(), &format!("w{i}"), Arc::new(ScriptedRunner::fast(0)))).collect();
    wait_until("five workers", Duration::from_secs(30), || {
        let mut jobs = jobs.clone();
        async move { Ok((jobs.list_workers(pb::ListWorkersRequest::default()).await?.into_inner().workers.len() == 5).then_some(())) }
    })
    .await?;
    let first = jobs.list_workers(pb::ListWorkersRequest { page_size: 3, page_token: String::new() }).await?.into_inner();
    let second = jobs.list_workers(pb::ListWorkersRequest { page_size: 3, page_token: first.next_page_token.clone() }).await?.into_inner();
    let ids: Vec<String> = first.workers.iter().chain(&second.workers).map(|w| w.id.clone()).collect();
    assert_eq!(ids, ["w0", "w1", "w2", "w3", "w4"]);
    assert!(second.next_page_token.is_empty());
    for worker in workers {
        worker.stop().await?;
    }
    coordinator.stop().await
}
