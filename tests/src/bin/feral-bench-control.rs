//! The control plane under load: 200 simulated workers heartbeating at 1 Hz against a
//! coordinator (in-memory store, loopback gRPC) that holds 0, 500 or 10,000 queued jobs;
//! prints heartbeat and submit latency percentiles side by side.
//!
//! `cargo run --release -p feral-tests --bin feral-bench-control [-- SECONDS]`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use feral_coordinator::control::Settings;
use feral_coordinator::store::MemoryStore;
use feral_proto::v1 as pb;
use feral_tests::RunningCoordinator;

const WORKERS: usize = 200;
const QUEUED: [usize; 3] = [0, 500, 10_000];

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(10);
    println!("| queued jobs | submit p50 | submit p99 | heartbeat p50 | heartbeat p99 | heartbeats |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for queued in QUEUED {
        let dir = tempfile::tempdir()?;
        let settings = Settings { artifact_root: dir.path().join("artifacts"), heartbeat_interval_ms: 1000, lease_ttl_ms: 600_000 };
        let coordinator = RunningCoordinator::start(settings, Arc::new(MemoryStore::default()), SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let mut workers = coordinator.workers().await?;
        for i in 0..WORKERS {
            let slots = vec![pb::Slot { device: "cpu".into(), name: "cpu".into() }];
            workers.register(pb::RegisterRequest { worker_id: format!("sim-{i:03}"), hostname: "bench".into(), slots }).await?;
        }
        // The jobs queue behind the 200 that the workers' one slot each can take.
        let mut jobs = coordinator.jobs().await?;
        let spec = format!("version = 1\nname = \"queued\"\ndataset = {:?}\n", dir.path().join("nowhere").display().to_string());
        let mut submits = Vec::with_capacity(queued);
        for _ in 0..queued {
            let started = Instant::now();
            jobs.submit_job(pb::SubmitJobRequest { spec_toml: spec.clone() }).await?;
            submits.push(started.elapsed());
        }

        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut beating = Vec::new();
        for i in 0..WORKERS {
            let mut client = workers.clone();
            beating.push(tokio::spawn(async move {
                let (mut latencies, mut running) = (Vec::new(), Vec::new());
                // Spread the workers over the second, as independent processes would be.
                tokio::time::sleep(Duration::from_millis((i * 1000 / WORKERS) as u64)).await;
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                while Instant::now() < deadline {
                    tick.tick().await;
                    let request = pb::HeartbeatRequest { worker_id: format!("sim-{i:03}"), running_task_ids: running.clone() };
                    let started = Instant::now();
                    let reply = client.heartbeat(request).await?.into_inner();
                    latencies.push(started.elapsed());
                    // A simulated worker "runs" what it is given, and stops what it is told to.
                    running.extend(reply.assignments.into_iter().map(|a| a.task_id));
                    running.retain(|t| !reply.cancel_task_ids.contains(t));
                }
                anyhow::Ok(latencies)
            }));
        }
        let mut heartbeats = Vec::new();
        for handle in beating {
            heartbeats.extend(handle.await??);
        }
        let (s50, s99) = (percentile(&mut submits, 0.50), percentile(&mut submits, 0.99));
        let (h50, h99) = (percentile(&mut heartbeats, 0.50), percentile(&mut heartbeats, 0.99));
        println!("| {queued} | {s50} | {s99} | {h50} | {h99} | {} |", heartbeats.len());
        coordinator.stop().await?;
    }
    Ok(())
}

/// The `q` quantile of `samples` in milliseconds ("-" when there are none).
fn percentile(samples: &mut [Duration], q: f64) -> String {
    if samples.is_empty() {
        return "-".to_owned();
    }
    samples.sort();
    let index = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
    format!("{:.2} ms", samples[index].as_secs_f64() * 1000.0)
}
