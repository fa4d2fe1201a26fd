//! The dashboard's HTTP side (coordinator `dashboard`): the page and its assets, the JSON
//! API, and the job's server-sent events following a running job to its end, on a real
//! coordinator with a scripted worker; with tokens, the API refuses callers the job API
//! would refuse. (`scripts/test-dashboard.sh` drives the page itself in Chromium.)

use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use feral_common::task::TaskKind;
use feral_coordinator::auth::Tokens;
use feral_coordinator::Access;
use feral_tests::scripted::ScriptedRunner;
use feral_tests::*;
use serde_json::Value;

/// GETs `path` with an optional bearer token: (status, content type, body).
async fn get(coordinator: &RunningCoordinator, path: &str, token: Option<&str>) -> anyhow::Result<(u16, String, String)> {
    let url = format!("http://{}{path}", coordinator.http.expect("an observed coordinator"));
    let token = token.map(|t| format!("Bearer {t}"));
    tokio::task::spawn_blocking(move || -> anyhow::Result<(u16, String, String)> {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
        let mut request = agent.get(&url);
        if let Some(token) = &token {
            request = request.header("authorization", token);
        }
        let mut response = request.call()?;
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        Ok((response.status().as_u16(), content_type, response.body_mut().read_to_string()?))
    })
    .await?
}

async fn get_json(coordinator: &RunningCoordinator, path: &str) -> anyhow::Result<Value> {
    let (status, content_type, body) = get(coordinator, path, None).await?;
    anyhow::ensure!(status == 200 && content_type == "application/json", "{path}: {status} {content_type} {body}");
    Ok(serde_json::from_str(&body)?)
}

/// Reads the job's event stream until it ends by itself: the data of every `job` event.
async fn follow(coordinator: &RunningCoordinator, job: &str) -> anyhow::Result<Vec<Value>> {
    follow_at(coordinator.http.expect("an observed coordinator"), job.to_owned(), None).await
}

/// [`follow`] at the HTTP address `http`, telling `opened` when the first event has come.
async fn follow_at(http: std::net::SocketAddr, job: String, opened: Option<tokio::sync::oneshot::Sender<()>>) -> anyhow::Result<Vec<Value>> {
    let url = format!("http://{http}/api/jobs/{job}/events");
    let reading = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Value>> {
        let response = ureq::get(&url).header("accept", "text/event-stream").call()?;
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        anyhow::ensure!(content_type.starts_with("text/event-stream"), "content type {content_type}");
        let (mut events, mut name, mut opened) = (Vec::new(), String::new(), opened);
        for line in BufReader::new(response.into_body().into_reader()).lines() {
            let line = line?;
            if let Some(event) = line.strip_prefix("event:") {
                name = event.trim().to_owned();
            } else if let Some(data) = line.strip_prefix("data:") {
                anyhow::ensure!(name == "job", "unexpected event {name:?}: {data}");
                events.push(serde_json::from_str(data.trim())?);
                if let Some(opened) = opened.take() {
                    let _ = opened.send(());
                }
            }
        }
        Ok(events)
    });
    tokio::time::timeout(Duration::from_secs(120), reading).await.map_err(|_| anyhow::anyhow!("the event stream did not end within 120 s"))??
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_a_job_live_to_its_end() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let coordinator = RunningCoordinator::observed(dir.path()).await?;

    let (status, content_type, page) = get(&coordinator, "/", None).await?;
    assert_eq!((status, content_type.as_str()), (200, "text/html; charset=utf-8"));
    assert!(page.contains("/dashboard.js") && page.contains("/dashboard.css"), "the page loads its script and style");
    for (asset, kind) in [("/dashboard.js", "text/javascript"), ("/dashboard.css", "text/css")] {
        let (status, content_type, body) = get(&coordinator, asset, None).await?;
        assert!(status == 200 && content_type.starts_with(kind) && !body.is_empty(), "{asset}: {status} {content_type}");
    }
    assert_eq!(get_json(&coordinator, "/api/jobs").await?, Value::Array(Vec::new()));

    // Three epochs a training task, each task a second long: the stream sees it run.
    let runner = ScriptedRunner { epochs: 3, slow: vec![TaskKind::Train], delay: Duration::from_secs(1), ..ScriptedRunner::fast(1) };
    let worker = RunningWorker::start(&coordinator.url(), "w1", Arc::new(runner));
    let mut jobs = coordinator.jobs().await?;
    let spec = format!("{}\n[semi_supervised]\nrounds = 1\npatience = 0\n", job_spec(dir.path(), 3));
    let job = submit(&mut jobs, spec).await?;

    let events = follow(&coordinator, &job.id).await?;
    let states: Vec<&str> = events.iter().map(|e| e["state"].as_str().unwrap_or_default()).collect();
    assert!(states.len() >= 3, "an event at once and one per change: {states:?}");
    assert_eq!(states.last(), Some(&"succeeded"), "the stream ends after the final state: {states:?}");
    assert!(states.contains(&"training"), "{states:?}");
    let rounds: Vec<u64> = events.iter().map(|e| e["round"].as_u64().unwrap_or_default()).collect();
    assert!(rounds.windows(2).all(|w| w[0] <= w[1]) && rounds.last() == Some(&1), "rounds advance to 1: {rounds:?}");
    let epochs: Vec<usize> = events.iter().map(|e| e["epochs"].as_array().map_or(0, Vec::len)).collect();
    assert!(epochs.windows(2).all(|w| w[0] <= w[1]), "epochs only accumulate: {epochs:?}");
    assert_eq!(epochs.last(), Some(&6), "three epochs in each of two rounds: {epochs:?}");

    let last = events.last().expect("events");
    assert_eq!(last["id"], job.id.as_str());
    assert_eq!(last["rounds_planned"], 1);
    assert_eq!(last["rounds"].as_array().map(Vec::len), Some(2), "the teacher and one student");
    assert_eq!(last["best_round"], 1, "the scripted student scores higher");
    let classes = last["class_names"].as_array().map_or(0, Vec::len);
    assert!(classes > 0, "class names: {last}");
    assert_eq!(last["latest"]["per_class_f1"].as_array().map(Vec::len), Some(classes));
    // The scripted worker reports no confusion counts; real ones are drawn in the browser test.
    assert!(last["latest"]["confusion"].is_array(), "{last}");
    assert_eq!(last["rounds"][1]["selected_per_class"].as_array().map(Vec::len), Some(classes), "the student round's selection");

    // The same job from the other endpoints.
    let listed = get_json(&coordinator, "/api/jobs").await?;
    assert_eq!(listed[0]["id"], job.id.as_str());
    assert_eq!(listed[0]["state"], "succeeded");
    assert_eq!(get_json(&coordinator, &format!("/api/jobs/{}", job.id)).await?["epochs"], last["epochs"]);
    let workers = get_json(&coordinator, "/api/workers").await?;
    assert_eq!(workers[0]["id"], "w1");
    assert_eq!(workers[0]["state"], "live");
    assert_eq!(workers[0]["slots"][0], "cpu");
    assert!(workers[0]["heartbeat_age_s"].as_f64().is_some_and(|age| age < 60.0));

    // Unknown and malformed ids are named in the error.
    let (status, _, body) = get(&coordinator, "/api/jobs/job-000000000000", None).await?;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("job-000000000000"), "{body}");
    let (status, _, body) = get(&coordinator, "/api/jobs/a%20b/events", None).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("is not a job id"), "{body}");

    worker.stop().await?;
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_the_dashboard_api_needs_a_submitter_token() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let access = Access { tokens: Some(Arc::new(Tokens::parse(TEST_TOKENS).map_err(anyhow::Error::msg)?)), ..Access::default() };
    let coordinator = RunningCoordinator::observed_with(dir.path(), access).await?;
    for path in ["/api/jobs", "/api/events", "/api/workers", "/api/jobs/job-000000000000/events"] {
        let (status, _, body) = get(&coordinator, path, None).await?;
        assert_eq!(status, 401, "{path} without a token: {body}");
        assert!(body.contains("needs a bearer token"), "{body}");
        let (status, _, body) = get(&coordinator, path, Some("not-a-known-token-at-all")).await?;
        assert_eq!(status, 401, "{path} with an unknown token: {body}");
        let (status, _, body) = get(&coordinator, path, Some("w1-0123456789abcdef")).await?;
        assert_eq!(status, 403, "{path} with a worker's token: {body}");
        assert!(body.contains("`w1` has role worker"), "{body}");
    }
    let (status, _, body) = get(&coordinator, "/api/jobs", Some("alice-0123456789abcdef")).await?;
    assert_eq!((status, body.as_str()), (200, "[]"));
    // The page itself holds no data: it loads, then asks for the token.
    assert_eq!(get(&coordinator, "/", None).await?.0, 200);
    // `/metrics` names jobs: it asks for a known token too (of any role: a scraper's).
    let (status, _, body) = get(&coordinator, "/metrics", None).await?;
    assert_eq!(status, 401, "{body}");
    assert_eq!(get(&coordinator, "/metrics", Some("not-a-known-token-at-all")).await?.0, 401);
    assert_eq!(get(&coordinator, "/metrics", Some("w1-0123456789abcdef")).await?.0, 200);
    coordinator.stop().await
}

/// The job list's event stream (`/api/events`): the list at once, again when a job is
/// submitted, and to each submitter only their own jobs; it ends with the coordinator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_list_stream_is_live_and_shows_a_submitter_only_their_jobs() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let access = Access { tokens: Some(Arc::new(Tokens::parse(TEST_TOKENS).map_err(anyhow::Error::msg)?)), ..Access::default() };
    let coordinator = RunningCoordinator::observed_with(dir.path(), access).await?;
    let url = format!("http://{}/api/events", coordinator.http.expect("an observed coordinator"));
    let (sink, mut lists) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let response = ureq::get(&url).header("authorization", "Bearer alice-0123456789abcdef").header("accept", "text/event-stream").call()?;
        let mut name = String::new();
        for line in BufReader::new(response.into_body().into_reader()).lines() {
            let line = line?;
            if let Some(event) = line.strip_prefix("event:") {
                name = event.trim().to_owned();
            } else if let Some(data) = line.strip_prefix("data:") {
                anyhow::ensure!(name == "list", "unexpected event {name:?}: {data}");
                if sink.send(serde_json::from_str(data.trim())?).is_err() {
                    break;
                }
            }
        }
        Ok(())
    });
    let mut next = async || tokio::time::timeout(Duration::from_secs(60), lists.recv()).await.ok().flatten().context("no list event within 60 s");
    let first = next().await?;
    assert_eq!((first["jobs"].clone(), first["workers"].clone()), (Value::Array(vec![]), Value::Array(vec![])), "{first}");

    let submit_as = async |secret: &str| -> anyhow::Result<String> {
        let channel = tonic::transport::Channel::from_shared(coordinator.url())?.connect().await?;
        let mut client = feral_proto::v1::job_service_client::JobServiceClient::new(feral_proto::credentials::BearerToken::new(secret)?.channel(channel));
        let spec_toml = job_spec(dir.path(), 3);
        let job = client.submit_job(feral_proto::v1::SubmitJobRequest { spec_toml }).await?.into_inner().job.context("no job")?;
        Ok(job.id)
    };
    let bobs = submit_as("bob-0123456789abcdef").await?;
    let alices = submit_as("alice-0123456789abcdef").await?;
    // No worker: both stay queued; alice's list shows hers as soon as it exists, never bob's.
    let list = loop {
        let list = next().await?;
        let ids: Vec<&str> = list["jobs"].as_array().context("jobs")?.iter().filter_map(|j| j["id"].as_str()).collect();
        assert!(!ids.contains(&bobs.as_str()), "alice's list shows bob's job: {list}");
        if ids.contains(&alices.as_str()) {
            break list;
        }
    };
    assert_eq!(list["jobs"][0]["state"], "queued", "{list}");
    assert_eq!(list["jobs"][0]["eta_seconds"], Value::Null, "no epoch yet, no estimate: {list}");
    coordinator.stop().await?;
    // The stream ends with the server.
    tokio::time::timeout(Duration::from_secs(60), reader).await.context("the list stream outlived the coordinator")???;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_event_stream_ends_when_the_coordinator_shuts_down() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let coordinator = RunningCoordinator::observed(dir.path()).await?;
    // No worker: the job stays queued, and its stream would stay open.
    let mut jobs = coordinator.jobs().await?;
    let job = submit(&mut jobs, job_spec(dir.path(), 3)).await?;
    let (opened, open) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(follow_at(coordinator.http.expect("an observed coordinator"), job.id.clone(), Some(opened)));
    tokio::time::timeout(Duration::from_secs(60), open).await.map_err(|_| anyhow::anyhow!("no first event within 60 s"))??;
    coordinator.stop().await?;
    // The stream ends with the server (before, it stayed open after the coordinator stopped).
    let events = reader.await??;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["state"], "queued");
    Ok(())
}

/// Every answer of the dashboard forbids inline code and framing by another site, and a
/// loopback listener answers to loopback names only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_sends_a_content_security_policy_and_refuses_framing() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let coordinator = RunningCoordinator::observed(dir.path()).await?;
    let http = coordinator.http.expect("an observed coordinator");
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for path in ["/", "/dashboard.js", "/api/jobs", "/api/jobs/job-000000000000"] {
            let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
            let response = agent.get(format!("http://{http}{path}")).call()?;
            let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            let policy = header("content-security-policy");
            assert!(
                policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'") && !policy.contains("unsafe-inline"),
                "{path}: {policy:?}"
            );
            assert_eq!(header("x-frame-options"), "DENY", "{path}");
            assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        }
        // A loopback listener answers to loopback names only: a page served under another
        // name that resolves here (DNS rebinding) gets nothing.
        use std::io::{Read, Write};
        for (host, status) in [("evil.example", "421"), ("localhost", "200")] {
            let mut stream = std::net::TcpStream::connect(http)?;
            stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
            write!(stream, "GET /api/jobs HTTP/1.1\r\nHost: {host}:{}\r\nConnection: close\r\n\r\n", http.port())?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{host}: {answer}");
        }
        Ok(())
    })
    .await??;
    coordinator.stop().await
}
