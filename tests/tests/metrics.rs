//! `/metrics`: valid Prometheus text whose gauges follow the cluster and whose counters
//! move as a job runs.

use std::time::Duration;

use feral_common::task::TaskKind;
use feral_proto::v1 as pb;
use feral_tests::scripted::ScriptedRunner;
use feral_tests::*;
use prometheus_parse::{LineInfo, Scrape, Value};

/// GETs `/metrics` (on a blocking thread: ureq is synchronous), checks every line is a
/// comment or a sample, and parses it.
async fn scrape(coordinator: &RunningCoordinator) -> anyhow::Result<Scrape> {
    let url = format!("http://{}/metrics", coordinator.http.expect("an observed coordinator"));
    let (content_type, text) = tokio::task::spawn_blocking(move || -> anyhow::Result<(String, String)> {
        let mut response = ureq::get(&url).call()?;
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        Ok((content_type, response.body_mut().read_to_string()?))
    })
    .await??;
    assert!(content_type.starts_with("application/openmetrics-text"), "content type {content_type}");
    assert_eq!(text.lines().last(), Some("# EOF"), "OpenMetrics ends with # EOF");
    for line in text.lines() {
        let parsed = LineInfo::parse(line);
        let known = match parsed {
            LineInfo::Sample { value, .. } => value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            LineInfo::Doc { .. } | LineInfo::Type { .. } => true,
            _ => line.starts_with("# UNIT ") || line == "# EOF",
        };
        assert!(known, "not a Prometheus line: {line:?}");
    }
    Ok(Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))?)
}

/// The value of sample `metric` whose labels include `labels` (none when absent).
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let sample = scrape.samples.iter().find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))?;
    Some(match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
        Value::Summary(_) => return None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_job_as_it_runs() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let coordinator = RunningCoordinator::observed(dir.path()).await?;
    let before = scrape(&coordinator).await?;
    assert_eq!(value(&before, "feral_jobs", &[("state", "queued")]), Some(0.0));
    assert_eq!(value(&before, "feral_workers", &[("state", "live")]), Some(0.0));
    assert_eq!(value(&before, "feral_tasks_started_total", &[("kind", "train")]), None, "nothing has started");

    // Each training task pauses 2 s before it reports: long enough to be seen running.
    let runner = ScriptedRunner { epochs: 2, slow: vec![TaskKind::Train], delay: Duration::from_secs(2), ..ScriptedRunner::fast(1) };
    let worker = RunningWorker::start(&coordinator.url(), "w1", std::sync::Arc::new(runner));
    let mut jobs = coordinator.jobs().await?;
    let spec = format!("{}\n[semi_supervised]\nrounds = 1\npatience = 0\n", job_spec(dir.path(), 2));
    let job = submit(&mut jobs, spec).await?;

    let running = wait_until("a training task to be seen running", Duration::from_secs(60), || async {
        let scrape = scrape(&coordinator).await?;
        // The slot is busy with the quick prepare task first: wait for training.
        let busy = value(&scrape, "feral_slots", &[("state", "busy")]) == Some(1.0);
        let training = value(&scrape, "feral_jobs", &[("state", "training")]) == Some(1.0);
        Ok((busy && training && value(&scrape, "feral_job_round", &[("job", &job.id)]).is_some()).then_some(scrape))
    })
    .await?;
    assert_eq!(value(&running, "feral_workers", &[("state", "live")]), Some(1.0));
    assert_eq!(value(&running, "feral_jobs", &[("state", "training")]), Some(1.0));
    assert_eq!(value(&running, "feral_slots", &[("state", "free")]), Some(0.0));

    wait_for_state(&jobs, &job.id, &[pb::JobState::Succeeded], Duration::from_secs(60)).await?;
    let after = scrape(&coordinator).await?;
    assert_eq!(value(&after, "feral_jobs", &[("state", "succeeded")]), Some(1.0));
    assert_eq!(value(&after, "feral_jobs", &[("state", "training")]), Some(0.0));
    assert_eq!(value(&after, "feral_job_round", &[("job", &job.id)]), None, "a finished job has no round gauge");
    assert_eq!(value(&after, "feral_slots", &[("state", "free")]), Some(1.0));
    // A teacher and one student; one prepare, one inference shard, one selection.
    assert_eq!(value(&after, "feral_tasks_started_total", &[("kind", "train")]), Some(2.0));
    assert_eq!(value(&after, "feral_tasks_finished_total", &[("kind", "train")]), Some(2.0));
    for kind in ["prepare", "infer", "select"] {
        assert_eq!(value(&after, "feral_tasks_finished_total", &[("kind", kind)]), Some(1.0), "{kind}");
    }
    assert_eq!(value(&after, "feral_tasks_failed_total", &[("kind", "train")]), None);
    assert_eq!(value(&after, "feral_task_duration_seconds_count", &[("kind", "train")]), Some(2.0));
    let train_seconds = value(&after, "feral_task_duration_seconds_sum", &[("kind", "train")]).unwrap_or_default();
    assert!(train_seconds >= 4.0, "two training tasks of 2 s or more took {train_seconds} s");
    assert!(value(&after, "feral_job_phase_duration_seconds_count", &[("phase", "training")]).unwrap_or_default() >= 2.0);
    assert!(value(&after, "feral_rpc_duration_seconds_count", &[("method", "SubmitJob")]) >= Some(1.0));
    assert!(value(&after, "feral_rpc_duration_seconds_count", &[("method", "Heartbeat")]) >= Some(1.0));
    assert!(value(&after, "feral_store_write_duration_seconds_count", &[]).unwrap_or_default() >= 10.0);
    worker.stop().await?;
    coordinator.stop().await
}

/// Encodes `registry` and parses it as [`scrape`] does.
fn parse(registry: &prometheus_client::registry::Registry) -> anyhow::Result<Scrape> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_counts_its_training_steps() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let data = synthetic_dataset(&dir.path().join("data"), 400)?;
    let coordinator = RunningCoordinator::in_memory(dir.path()).await?;
    let metrics = std::sync::Arc::new(feral_worker::metrics::WorkerMetrics::default());
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let before = parse(&registry)?;
    assert_eq!(value(&before, "feral_worker_images_total", &[]), Some(0.0));
    assert_eq!(value(&before, "feral_worker_step_duration_seconds_count", &[]), Some(0.0));

    let runner = feral_worker::runner::TchRunner::observed(metrics.clone());
    let worker = RunningWorker::start(&coordinator.url(), "w1", std::sync::Arc::new(runner));
    let mut jobs = coordinator.jobs().await?;
    let job = submit(&mut jobs, format!("{}steps_per_epoch = 3\n", job_spec(&data, 2))).await?;
    wait_for_state(&jobs, &job.id, &[pb::JobState::Succeeded], Duration::from_secs(300)).await?;

    let after = parse(&registry)?;
    // Two epochs of three steps of 64 labelled images.
    assert_eq!(value(&after, "feral_worker_step_duration_seconds_count", &[]), Some(6.0));
    assert_eq!(value(&after, "feral_worker_images_total", &[]), Some(6.0 * 64.0));
    assert!(value(&after, "feral_worker_images_per_second", &[]).unwrap_or_default() > 0.0);
    assert!(value(&after, "feral_worker_step_duration_seconds_sum", &[]).unwrap_or_default() > 0.0);
    // A lone rank all-reduces nothing.
    assert_eq!(value(&after, "feral_worker_all_reduce_bytes_total", &[]), Some(0.0));
    worker.stop().await?;
    coordinator.stop().await
}

/// 5,000 idle connections to the HTTP port (no token needed to open one) take no more than
/// that listener's own limit of descriptors: gRPC still answers while they are held, the
/// connections beyond the limit are closed at once and counted in `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_http_connections_starve_neither_grpc_nor_the_process() -> anyhow::Result<()> {
    init_tracing();
    feral_proto::limits::raise_fd_limit()?;
    let dir = tempfile::tempdir()?;
    let coordinator = RunningCoordinator::observed(dir.path()).await?;
    let http = coordinator.http.expect("an observed coordinator");
    let mut held = Vec::with_capacity(5000);
    for _ in 0..5000 {
        held.push(tokio::net::TcpStream::connect(http).await?);
    }
    let mut jobs = coordinator.jobs().await?;
    let listed = tokio::time::timeout(Duration::from_secs(30), jobs.list_workers(pb::ListWorkersRequest::default())).await;
    assert!(matches!(listed, Ok(Ok(_))), "gRPC answers while the HTTP port is flooded: {listed:?}");
    drop(held);

    let beyond = (5000 - feral_proto::limits::HTTP_CONNECTIONS) as f64;
    let refused = wait_until("the refusals to show in /metrics", Duration::from_secs(60), || async {
        // The listener frees its places as it sees the flood's connections close.
        let Ok(scraped) = scrape(&coordinator).await else { return Ok(None) };
        Ok(value(&scraped, "feral_connections_refused_total", &[("listener", "http")]))
    })
    .await?;
    assert!(refused >= beyond, "{refused} refusals counted, at least {beyond} expected");
    coordinator.stop().await
}
