//! The control plane under load: simulated workers (1,000 by default) heartbeating at 1 Hz
//! against one `feral-coordinator` process holding queued jobs (10,000 by default), on each
//! store (memory, redb, a real one-member etcd); prints submit and heartbeat latency
//! percentiles, and the coordinator process's CPU (in cores, over the heartbeat window) and
//! resident memory, read from `/proc`. `--variants` adds rows for what TLS and metrics
//! cost: `tls` (both sides speak TLS, certificates made here with rcgen), `metrics` (the
//! coordinator serves `/metrics` and a scraper reads it every second, as Prometheus would),
//! and `tls+metrics`; each is measured beside `plain` in the same run.
//!
//! ```sh
//! cargo build --release -p feral-coordinator -p feral-tests --bin feral-bench-control
//! target/release/feral-bench-control [--seconds 30] [--workers 1000] [--queued 10000] [--stores memory,redb,etcd]
//! target/release/feral-bench-control --stores memory --variants plain,tls,metrics,tls+metrics
//! ```

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use feral_coordinator::store::etcd_process::EtcdProcess;
use feral_proto::v1 as pb;
use feral_proto::v1::job_service_client::JobServiceClient;
use feral_proto::v1::worker_service_client::WorkerServiceClient;
use tonic::transport::Channel;

/// The simulated workers share this many connections, as many workers behind a few hosts'
/// NAT would; one connection each would need a descriptor limit above the usual 1,024.
const CONNECTIONS: usize = 50;

struct Options {
    seconds: u64,
    workers: usize,
    queued: usize,
    stores: Vec<String>,
    variants: Vec<Variant>,
}

/// How the coordinator is reached and watched.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Variant {
    tls: bool,
    metrics: bool,
}

impl Variant {
    fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(match text {
            "plain" => Self { tls: false, metrics: false },
            "tls" => Self { tls: true, metrics: false },
            "metrics" => Self { tls: false, metrics: true },
            "tls+metrics" => Self { tls: true, metrics: true },
            _ => bail!("--variants takes plain, tls, metrics and tls+metrics, got {text:?}"),
        })
    }

    fn name(&self) -> &'static str {
        match (self.tls, self.metrics) {
            (false, false) => "plain",
            (true, false) => "tls",
            (false, true) => "metrics",
            (true, true) => "tls+metrics",
        }
    }
}

fn options() -> anyhow::Result<Options> {
    let stores = vec!["memory".into(), "redb".into(), "etcd".into()];
    let mut options = Options { seconds: 30, workers: 1000, queued: 10_000, stores, variants: vec![Variant::parse("plain")?] };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().with_context(|| format!("{flag} takes a whole number, got {value:?}"));
        match flag.as_str() {
            "--seconds" => options.seconds = number()?,
            "--workers" => options.workers = usize::try_from(number()?)?,
            "--queued" => options.queued = usize::try_from(number()?)?,
            "--stores" => options.stores = value.split(',').map(str::to_owned).collect(),
            "--variants" => options.variants = value.split(',').map(Variant::parse).collect::<anyhow::Result<_>>()?,
            _ => bail!("unknown flag {flag:?} (flags: --seconds, --workers, --queued, --stores, --variants)"),
        }
    }
    if let Some(store) = options.stores.iter().find(|s| !["memory", "redb", "etcd"].contains(&s.as_str())) {
        bail!("--stores takes memory, redb and etcd, got {store:?}");
    }
    Ok(options)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    let coordinator_bin = std::env::current_exe()?.with_file_name("feral-coordinator");
    anyhow::ensure!(coordinator_bin.exists(), "{} is missing: cargo build --release -p feral-coordinator", coordinator_bin.display());
    println!(
        "{} workers at 1 Hz over {} connections, {} queued jobs, {} s of heartbeats per store",
        options.workers, CONNECTIONS, options.queued, options.seconds
    );
    println!("| store | variant | submit p50 | submit p99 | heartbeat p50 | heartbeat p99 | heartbeats | coordinator CPU | RSS (peak) |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for store in &options.stores {
        for variant in &options.variants {
            let dir = tempfile::tempdir()?;
            // Kept alive (and stopped at the end of the row) by holding it.
            let etcd = if store == "etcd" { Some(EtcdProcess::start().await) } else { None };
            let store_arg = match (store.as_str(), &etcd) {
                ("etcd", Some(etcd)) => format!("etcd://{}/feral-bench", etcd.endpoint.trim_start_matches("http://")),
                ("redb", _) => dir.path().join("coordinator.redb").display().to_string(),
                _ => "memory".to_owned(),
            };
            let mut coordinator = Coordinator::start(&coordinator_bin, &store_arg, dir.path(), *variant).await?;
            let scraping = coordinator.scrape_every_second();
            let row = measure(&options, &coordinator).await;
            let scrapes = scraping.map(Scraper::stop).transpose();
            coordinator.stop();
            let row = row.with_context(|| format!("store {store}, {} (coordinator log: {})", variant.name(), coordinator.log_tail()))?;
            let scrapes = scrapes?.map_or(String::new(), |n| format!(" ({n} scrapes)"));
            println!("| {store} | {}{scrapes} | {row} |", variant.name());
        }
    }
    Ok(())
}

async fn measure(options: &Options, coordinator: &Coordinator) -> anyhow::Result<String> {
    let channels: Vec<Channel> = {
        let mut channels = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            channels.push(coordinator.endpoint()?.connect().await?);
        }
        channels
    };
    let mut workers = WorkerServiceClient::new(channels[0].clone());
    for i in 0..options.workers {
        let slots = vec![pb::Slot { device: "cpu".into(), name: "cpu".into() }];
        workers.register(pb::RegisterRequest { worker_id: format!("sim-{i:04}"), hostname: "bench".into(), slots }).await?;
    }
    // The jobs queue behind those that the workers' one slot each can take.
    let mut jobs = JobServiceClient::new(channels[0].clone());
    let spec = format!("version = 1\nname = \"queued\"\ndataset = {:?}\n", coordinator.dir.join("nowhere").display().to_string());
    let mut submits = Vec::with_capacity(options.queued);
    for _ in 0..options.queued {
        let started = Instant::now();
        jobs.submit_job(pb::SubmitJobRequest { spec_toml: spec.clone() }).await?;
        submits.push(started.elapsed());
    }

    let before = coordinator.cpu_seconds()?;
    let window = Instant::now();
    let deadline = window + Duration::from_secs(options.seconds);
    let mut beating = Vec::new();
    for i in 0..options.workers {
        let mut client = WorkerServiceClient::new(channels[i % CONNECTIONS].clone());
        let spread = Duration::from_millis((i * 1000 / options.workers) as u64);
        beating.push(tokio::spawn(async move {
            let (mut latencies, mut running) = (Vec::new(), Vec::new());
            // Spread the workers over the second, as independent processes would be.
            tokio::time::sleep(spread).await;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while Instant::now() < deadline {
                tick.tick().await;
                let request = pb::HeartbeatRequest { worker_id: format!("sim-{i:04}"), running: running.clone(), ..Default::default() };
                let started = Instant::now();
                let reply = client.heartbeat(request).await?.into_inner();
                latencies.push(started.elapsed());
                // A simulated worker "runs" what it is given, and stops what it is told to.
                running.extend(reply.assignments.into_iter().filter_map(|a| a.key));
                running.retain(|t| !reply.cancel.contains(t));
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut heartbeats = Vec::new();
    for handle in beating {
        heartbeats.extend(handle.await??);
    }
    let cores = (coordinator.cpu_seconds()? - before) / window.elapsed().as_secs_f64();
    let (rss, peak) = coordinator.memory_mib()?;
    let (s50, s99) = (percentile(&mut submits, 0.50), percentile(&mut submits, 0.99));
    let (h50, h99) = (percentile(&mut heartbeats, 0.50), percentile(&mut heartbeats, 0.99));
    Ok(format!("{s50} | {s99} | {h50} | {h99} | {} | {cores:.3} cores | {rss:.0} MiB ({peak:.0} MiB)", heartbeats.len()))
}

/// A `feral-coordinator` process on a free loopback port, its log in its directory.
struct Coordinator {
    child: Child,
    url: String,
    dir: std::path::PathBuf,
    ticks_per_second: f64,
    /// The CA of its certificate, with TLS.
    ca: Option<PathBuf>,
    /// Its `/metrics` URL, when it serves one.
    metrics: Option<String>,
}

/// A certificate for 127.0.0.1 and the CA that signed it, as PEM files in `dir`:
/// (CA, certificate, key).
fn certificates(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?.signed_by(&key, &issuer)?;
    let files = (dir.join("ca.pem"), dir.join("coordinator.pem"), dir.join("coordinator.key"));
    std::fs::write(&files.0, issuer.pem())?;
    std::fs::write(&files.1, cert.pem())?;
    std::fs::write(&files.2, key.serialize_pem())?;
    Ok(files)
}

/// Reads `/metrics` once a second on its own thread until stopped.
struct Scraper {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<u64>>,
}

impl Scraper {
    /// How many scrapes were answered; an error if one was not.
    fn stop(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| anyhow::anyhow!("the scraper panicked"))?
    }
}

impl Coordinator {
    async fn start(bin: &Path, store: &str, dir: &Path, variant: Variant) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(dir.join("coordinator.log"))?;
        let mut command = Command::new(bin);
        let (scheme, mut ca, mut metrics) = ("http", None, None);
        let scheme = if variant.tls {
            let (ca_file, cert, key) = certificates(dir)?;
            command.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
            ca = Some(ca_file);
            "https"
        } else {
            scheme
        };
        if variant.metrics {
            let http = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            command.args(["--http-listen", &http.to_string()]);
            metrics = Some(format!("{scheme}://{http}/metrics"));
        }
        let child = command
            .args(["--listen", &format!("127.0.0.1:{port}"), "--store", store])
            .arg("--artifact-root")
            .arg(dir.join("artifacts"))
            // Workers heartbeat every second; none is lost during the bench.
            .args(["--heartbeat-interval-ms", "1000", "--lease-ttl-ms", "600000"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let ticks = Command::new("getconf").arg("CLK_TCK").output().context("getconf CLK_TCK")?;
        let ticks_per_second: f64 = String::from_utf8_lossy(&ticks.stdout).trim().parse().context("CLK_TCK")?;
        let mut coordinator = Self { child, url: format!("{scheme}://127.0.0.1:{port}"), dir: dir.to_owned(), ticks_per_second, ca, metrics };
        // Serving once it answers (on etcd, once it has been elected).
        let started = Instant::now();
        loop {
            if let Some(status) = coordinator.child.try_wait()? {
                bail!("the coordinator exited with {status}: {}", coordinator.log_tail());
            }
            if let Ok(channel) = coordinator.endpoint()?.connect().await {
                if JobServiceClient::new(channel).list_jobs(pb::ListJobsRequest::default()).await.is_ok() {
                    return Ok(coordinator);
                }
            }
            anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "the coordinator did not serve within a minute: {}", coordinator.log_tail());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Where a client connects, trusting the coordinator's CA with TLS.
    fn endpoint(&self) -> anyhow::Result<tonic::transport::Endpoint> {
        let tls = feral_proto::credentials::client_tls(self.ca.as_deref(), None, None)?;
        feral_proto::credentials::endpoint(&self.url, tls.as_ref(), Duration::from_secs(10)).map_err(anyhow::Error::msg)
    }

    /// With metrics, a scraper reading `/metrics` once a second.
    fn scrape_every_second(&self) -> Option<Scraper> {
        let url = self.metrics.clone()?;
        let ca = self.ca.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || -> anyhow::Result<u64> {
            let mut config = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10)));
            if let Some(ca) = ca {
                let ca = ureq::tls::Certificate::from_pem(&std::fs::read(ca)?)?;
                config = config.tls_config(ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(&[ca])).build());
            }
            let agent = config.build().new_agent();
            let mut scrapes = 0;
            while !stopping.load(Ordering::Relaxed) {
                let body = agent.get(&url).call()?.body_mut().read_to_string()?;
                anyhow::ensure!(body.contains("feral_jobs"), "/metrics without feral_jobs");
                scrapes += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            Ok(scrapes)
        });
        Some(Scraper { stop, thread })
    }

    /// User plus system CPU time the process has used, in seconds.
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the command name (which is in parentheses): utime and stime are
        // the 14th and 15th of the line, the 12th and 13th after the name.
        let after_name = stat.rsplit_once(')').context("/proc stat")?.1;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        Ok(ticks / self.ticks_per_second)
    }

    /// Resident memory now and at its peak, in MiB.
    fn memory_mib(&self) -> anyhow::Result<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib = |field: &str| -> anyhow::Result<f64> {
            let line = status.lines().find(|l| l.starts_with(field)).with_context(|| format!("{field} in /proc status"))?;
            Ok(line.split_whitespace().nth(1).context("a value")?.parse::<f64>()? / 1024.0)
        };
        Ok((kib("VmRSS:")?, kib("VmHWM:")?))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("coordinator.log")).unwrap_or_default();
        text.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
