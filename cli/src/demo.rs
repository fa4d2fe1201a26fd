//! `feral demo`: the whole system on one machine. Generates the synthetic dataset (once),
//! starts a coordinator and N CPU workers as child processes, submits a small job, watches
//! it like `feral watch`, prints the result, and stops the children whatever happens.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use feral_common::dataset::Manifest;
use feral_common::method::MaskAudit;
use feral_common::prepare::SyntheticSplits;
use feral_common::synthetic::SyntheticConfig;
use feral_common::text::printable;
use feral_proto::v1 as pb;

use crate::children::Children;
use crate::client::{connect, rpc_error, Target};
use crate::jobs::{all_jobs, all_workers, report_final, submit_spec};
use crate::manifest::describe_manifest;
use crate::prepare::generate_synthetic;
use crate::watch::watch_job;
use crate::{render, table};

/// How long the workers get to register.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Directory for the dataset, the coordinator's state, artifacts and logs.
    #[arg(long, default_value = "demo-run")]
    pub dir: PathBuf,
    /// Number of CPU workers to start (1 to 16).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Number of synthetic images to generate (at least 100).
    #[arg(long, default_value_t = 6000)]
    pub samples: usize,
    /// Training epochs of each round of the demo job (at least 1).
    #[arg(long, default_value_t = 5)]
    pub epochs: u32,
    /// Fraction of the training images that keep their label; the rest form the
    /// unlabelled pool that the pseudo-labelling rounds draw from.
    #[arg(long, default_value_t = 0.1)]
    pub labeled_fraction: f64,
    /// Pseudo-labelling rounds after the teacher (0: supervised only).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Port for the coordinator on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Port for the coordinator's dashboard and `/metrics` on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    pub http_port: u16,
    /// Devices of each worker (`cpu`, `cuda:0`, `cuda:0,cuda:1`, or `auto`).
    #[arg(long, default_value = "cpu")]
    pub devices: String,
    /// Keep the coordinator, its dashboard and the workers up after the job, until Ctrl-C.
    #[arg(long)]
    pub keep: bool,
}

impl DemoArgs {
    fn validate(&self) -> anyhow::Result<()> {
        if !(1..=16).contains(&self.workers) {
            anyhow::bail!("--workers must be between 1 and 16, got {}", self.workers);
        }
        if self.samples < 100 {
            anyhow::bail!("--samples must be at least 100, got {}", self.samples);
        }
        if self.epochs == 0 {
            anyhow::bail!("--epochs must be at least 1, got 0");
        }
        if !(self.labeled_fraction > 0.0 && self.labeled_fraction <= 1.0) {
            anyhow::bail!("--labeled-fraction must be in (0, 1], got {}", self.labeled_fraction);
        }
        if self.rounds > 0 && self.labeled_fraction >= 1.0 {
            anyhow::bail!("--rounds {} needs unlabelled data: set --labeled-fraction below 1", self.rounds);
        }
        Ok(())
    }
}

/// `feral demo`: exits 0 only when the demo job succeeded.
pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    args.validate()?;
    let dir = std::path::absolute(&args.dir).with_context(|| format!("--dir {} cannot be resolved", args.dir.display()))?;
    let mut children = Children::default();
    let started = Instant::now();
    let outcome = tokio::select! {
        outcome = run_demo(&args, &dir, &mut children) => outcome,
        signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}")),
    };
    if outcome.is_ok() {
        println!("the demo took {:.0} s", started.elapsed().as_secs_f64());
    }
    let outcome = match outcome {
        Ok(code) if args.keep && !children.is_empty() => {
            println!("--keep: the coordinator, its dashboard and the workers stay up; Ctrl-C stops them");
            let signal = interrupted().await;
            println!("{signal}: the demo ends");
            Ok(code)
        }
        outcome => outcome,
    };
    if !children.is_empty() {
        println!("stopping the workers and the coordinator");
    }
    children.stop();
    outcome
}

async fn run_demo(args: &DemoArgs, dir: &Path, children: &mut Children) -> anyhow::Result<ExitCode> {
    let logs = dir.join("logs");
    tokio::fs::create_dir_all(&logs).await.with_context(|| format!("cannot create {}", logs.display()))?;
    let data = ensure_dataset(dir, args.samples, args.labeled_fraction).await?;
    warn_unlabelled_classes(&data)?;
    let coordinator_bin = sibling_binary("feral-coordinator")?;
    let worker_bin = sibling_binary("feral-worker")?;

    let port = if args.port == 0 { free_port()? } else { args.port };
    let mut http_port = args.http_port;
    while http_port == 0 || http_port == port {
        http_port = free_port()?;
    }
    let url = format!("http://127.0.0.1:{port}");
    let target = Target::open(url.clone());
    println!("starting coordinator on 127.0.0.1:{port} (log: {})", logs.join("coordinator.log").display());
    let coordinator_args = [
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--store".to_owned(),
        dir.join("state.redb").display().to_string(),
        "--artifact-root".to_owned(),
        dir.join("artifacts").display().to_string(),
        "--heartbeat-interval-ms".to_owned(),
        "500".to_owned(),
        "--lease-ttl-ms".to_owned(),
        "5000".to_owned(),
        "--http-listen".to_owned(),
        format!("127.0.0.1:{http_port}"),
    ];
    let env = [("RUST_LOG", "info"), ("NO_COLOR", "1")];
    children.spawn("feral-coordinator", &coordinator_bin, &coordinator_args, &env, &logs.join("coordinator.log"))?;

    println!("starting {} (logs: {}/worker-N.log)", count(args.workers, "worker"), logs.display());
    let worker_ids: Vec<String> = (1..=args.workers).map(|i| format!("demo-worker-{i}")).collect();
    for (index, id) in worker_ids.iter().enumerate() {
        let worker_args = [
            "--coordinator".to_owned(),
            url.clone(),
            "--id".to_owned(),
            id.clone(),
            "--devices".to_owned(),
            args.devices.clone(),
            // The demo's dataset and artifacts are all under its directory.
            "--allowed-roots".to_owned(),
            dir.display().to_string(),
        ];
        let log = logs.join(format!("worker-{}.log", index + 1));
        children.spawn(id, &worker_bin, &worker_args, &env, &log)?;
    }
    wait_for_workers(&target, &worker_ids, children, &logs).await?;
    println!("{} registered", count(worker_ids.len(), "worker"));
    cancel_leftover_jobs(&target).await?;

    let spec_path = dir.join("job.toml");
    let spec = job_toml(&data, args.epochs, args.rounds)?;
    tokio::fs::write(&spec_path, &spec).await.with_context(|| format!("cannot write {}", spec_path.display()))?;
    let job = submit_spec(&target, spec).await?;
    println!("submitted job {} ({})", printable(&job.id), spec_path.display());
    println!("dashboard: http://127.0.0.1:{http_port}/#/jobs/{}", printable(&job.id));

    let job = tokio::select! {
        job = watch_job(&target, &job.id) => job?,
        error = coordinator_exit(children) => return Err(error),
    };
    let code = report_final(&job);
    if let Some(result) = job.result.as_ref().filter(|_| job.state() == pb::JobState::Succeeded) {
        let metrics = result.validation.clone().unwrap_or_default();
        println!();
        println!(
            "demo finished: validation accuracy {:.1}%, macro-F1 {:.3}; model at {}",
            metrics.accuracy * 100.0,
            metrics.macro_f1,
            printable(&result.model_path)
        );
        if let Some(online) = online_summary(&job.rounds) {
            println!("{online}");
        }
        let model_dir = Path::new(&result.model_path).parent().unwrap_or(Path::new("."));
        println!("use the model (model.pt, TorchScript; model.json describes it): feral predict|eval|export {}", printable(&model_dir.display().to_string()));
    }
    if !args.keep {
        println!(
            "the dashboard stops with the demo: see this run again with `feral-coordinator --store {} --artifact-root {} --http-listen 127.0.0.1:{http_port}`, or run the demo with --keep",
            dir.join("state.redb").display(),
            dir.join("artifacts").display()
        );
    }
    Ok(code)
}

/// The online pseudo-labels of the student rounds, summed: how many pool labels made by the
/// EMA model passed the thresholds and were learnt, and how precise they were where the
/// synthetic pool kept its true labels. `None` when no round trained online.
fn online_summary(rounds: &[pb::RoundSummary]) -> Option<String> {
    let masks: Vec<MaskAudit> = rounds.iter().filter_map(|round| round.online).map(MaskAudit::from).collect();
    if masks.is_empty() {
        return None;
    }
    let total = masks.iter().fold(MaskAudit::default(), |sum, mask| MaskAudit {
        seen: sum.seen.saturating_add(mask.seen),
        masked_in: sum.masked_in.saturating_add(mask.masked_in),
        with_hidden_label: sum.with_hidden_label.saturating_add(mask.with_hidden_label),
        correct: sum.correct.saturating_add(mask.correct),
    });
    let precision = total.precision().map_or_else(|| "unknown".to_owned(), table::percent);
    Some(format!(
        "online pseudo-labels: {} learnt in {} ({} of the pool labels the EMA model made, precision {precision}); per round in the ONLINE columns above",
        table::count(total.masked_in),
        count(masks.len(), "student round"),
        table::percent(total.rate()),
    ))
}

/// Warns about every class without a labelled training image: the model cannot learn it
/// from labels (a small `--samples` with a small `--labeled-fraction`).
fn warn_unlabelled_classes(data: &Path) -> anyhow::Result<()> {
    let manifest = Manifest::load(data)?;
    let counts = manifest.splits.get(&feral_common::dataset::Split::Train).map(|s| s.class_counts.clone()).unwrap_or_default();
    for (class, _) in manifest.classes.iter().zip(&counts).filter(|(_, n)| **n == 0) {
        println!("warning: class `{class}` has no labelled training image; raise --samples or --labeled-fraction");
    }
    Ok(())
}

/// `1 worker`, `2 workers`.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The settings the demo dataset was generated with, recorded next to it.
fn dataset_settings(config: &SyntheticConfig, splits: &SyntheticSplits) -> String {
    format!("{config:?}\n{splits:?}\n")
}

/// `<dir>/data`, generated unless a valid dataset with the same settings is already there.
async fn ensure_dataset(dir: &Path, samples: usize, labeled_fraction: f64) -> anyhow::Result<PathBuf> {
    let data = dir.join("data");
    let settings_path = dir.join("data.settings");
    let config = SyntheticConfig { samples, ..SyntheticConfig::default() };
    let splits = SyntheticSplits { labeled_fraction, ..SyntheticSplits::default() };
    let settings = dataset_settings(&config, &splits);
    let recorded = tokio::fs::read_to_string(&settings_path).await.unwrap_or_default();
    if recorded == settings {
        if let Ok(manifest) = Manifest::load(&data) {
            let total: u64 = manifest.splits.values().map(|info| info.samples).sum();
            println!("reusing the synthetic dataset in {} ({total} images)", data.display());
            return Ok(data);
        }
    }
    if tokio::fs::try_exists(&data).await.unwrap_or(false) {
        tokio::fs::remove_dir_all(&data).await.with_context(|| format!("cannot remove the old dataset {}", data.display()))?;
    }
    println!("generating {samples} synthetic images into {}", data.display());
    let started = Instant::now();
    let manifest = generate_synthetic(&data, config, splits, 0).await?;
    tokio::fs::write(&settings_path, settings).await.with_context(|| format!("cannot write {}", settings_path.display()))?;
    print!("{}", describe_manifest(&manifest));
    println!("dataset ready in {:.1}s", started.elapsed().as_secs_f64());
    Ok(data)
}

/// A binary installed next to the running `feral`.
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find where the feral binary is")?;
    let dir = exe.parent().context("the feral binary has no parent directory")?;
    let path = dir.join(name);
    if !path.is_file() {
        anyhow::bail!("{name} not found next to feral in {}; build the workspace first: cargo build --release", dir.display());
    }
    Ok(path)
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port on 127.0.0.1")?;
    Ok(listener.local_addr().context("cannot read the free port")?.port())
}

/// Waits until every one of `worker_ids` is live, failing early when a child exits.
async fn wait_for_workers(url: &Target, worker_ids: &[String], children: &mut Children, logs: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + REGISTER_TIMEOUT;
    let mut live = 0;
    loop {
        if let Some(exited) = children.newly_exited().into_iter().next() {
            anyhow::bail!("{exited}");
        }
        if let Ok(mut client) = connect(url).await {
            if let Ok(workers) = all_workers(&mut client).await {
                live = workers.iter().filter(|w| w.state() == pb::WorkerState::Live && worker_ids.contains(&w.id)).count();
                if live == worker_ids.len() {
                    return Ok(());
                }
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "only {live} of {} workers registered within {} s; see the logs in {} (coordinator.log, worker-N.log)",
                worker_ids.len(),
                REGISTER_TIMEOUT.as_secs(),
                logs.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Cancels jobs left unfinished by an earlier, interrupted demo in the same directory, so
/// they do not compete with the new one.
async fn cancel_leftover_jobs(url: &Target) -> anyhow::Result<()> {
    let mut client = connect(url).await?;
    let jobs = all_jobs(&mut client).await?;
    for job in jobs.iter().filter(|job| !render::is_final(job.state())) {
        println!("cancelling job {} left over from an earlier run", printable(&job.id));
        client.cancel_job(pb::CancelJobRequest { job_id: job.id.clone() }).await.map_err(rpc_error)?;
    }
    Ok(())
}

/// Resolves with an error when the coordinator exits; reports workers that exit.
async fn coordinator_exit(children: &mut Children) -> anyhow::Error {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for exited in children.newly_exited() {
            if exited.name == "feral-coordinator" {
                return anyhow::anyhow!("{exited}");
            }
            println!("warning: {exited}");
        }
    }
}

/// The demo job spec: a small CNN, a fixed number of steps per epoch (the labelled set
/// is small), and `rounds` pseudo-labelling rounds with the method's defaults.
fn job_toml(data: &Path, epochs: u32, rounds: u32) -> anyhow::Result<String> {
    let dataset = data.to_str().with_context(|| format!("dataset path {} is not valid UTF-8", data.display()))?;
    Ok(format!(
        "version = 1\nname = \"demo\"\ndataset = {}\n\n[train]\nepochs = {epochs}\nbatch_size = 64\nsteps_per_epoch = 40\n\n[model]\nwidth = 16\n\n[semi_supervised]\nrounds = {rounds}\npatience = 0\n",
        toml_string(dataset)
    ))
}

/// A TOML basic string with quotes, backslashes and control characters escaped.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Resolves on Ctrl-C or SIGTERM with the signal's name.
async fn interrupted() -> &'static str {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "Ctrl-C";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = terminate.recv() => "SIGTERM",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use feral_common::spec::JobSpec;

    #[test]
    fn job_spec_is_valid_and_has_the_demo_settings() {
        let data = Path::new("/tmp/odd \"dir\"\\data");
        let spec = JobSpec::from_toml(&job_toml(data, 3, 2).expect("utf-8 path")).expect("valid spec");
        assert_eq!(spec.name, "demo");
        assert_eq!(spec.dataset, data);
        assert_eq!((spec.train.epochs, spec.train.batch_size, spec.model.width), (3, 64, 16));
        assert_eq!(spec.semi_supervised.rounds, 2);
    }

    #[test]
    fn dataset_settings_change_with_the_sample_count() {
        let splits = SyntheticSplits::default();
        let small = SyntheticConfig { samples: 3000, ..SyntheticConfig::default() };
        let large = SyntheticConfig { samples: 6000, ..SyntheticConfig::default() };
        assert_eq!(dataset_settings(&small, &splits), dataset_settings(&small.clone(), &splits));
        assert_ne!(dataset_settings(&small, &splits), dataset_settings(&large, &splits));
    }

    #[test]
    fn demo_flags_are_checked() {
        let args = DemoArgs {
            dir: "d".into(),
            workers: 2,
            samples: 6000,
            epochs: 6,
            labeled_fraction: 0.1,
            rounds: 3,
            port: 0,
            http_port: 0,
            devices: "cpu".into(),
            keep: false,
        };
        assert!(args.validate().is_ok());
        let bad = |args: DemoArgs| args.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(bad(DemoArgs { workers: 0, ..args.clone() }).contains("--workers"));
        assert!(bad(DemoArgs { samples: 50, ..args.clone() }).contains("--samples"));
        assert!(bad(DemoArgs { epochs: 0, ..args.clone() }).contains("--epochs"));
        assert!(bad(DemoArgs { labeled_fraction: 0.0, ..args.clone() }).contains("--labeled-fraction"));
        assert!(bad(DemoArgs { labeled_fraction: 1.0, ..args.clone() }).contains("--rounds"));
    }

    #[test]
    fn the_summary_adds_up_the_online_pseudo_labels_of_the_student_rounds() {
        let online = |masked_in, correct| pb::OnlineMask { seen: 10_000, masked_in, with_hidden_label: masked_in, correct };
        let rounds = [
            pb::RoundSummary { round: 0, ..Default::default() },
            pb::RoundSummary { round: 1, online: Some(online(4_000, 3_500)), ..Default::default() },
            pb::RoundSummary { round: 2, online: Some(online(6_000, 5_500)), ..Default::default() },
        ];
        assert_eq!(
            online_summary(&rounds).as_deref(),
            Some("online pseudo-labels: 10,000 learnt in 2 student rounds (50.0% of the pool labels the EMA model made, precision 90.0%); per round in the ONLINE columns above")
        );
        let blind = [pb::RoundSummary { round: 1, online: Some(pb::OnlineMask { seen: 4, masked_in: 1, ..Default::default() }), ..Default::default() }];
        assert!(online_summary(&blind).is_some_and(|line| line.contains("1 learnt in 1 student round (25.0%") && line.contains("precision unknown")));
        assert_eq!(online_summary(&rounds[..1]), None, "no online line when no round trained online");
    }

    #[test]
    fn counts_are_pluralised() {
        assert_eq!(count(1, "worker"), "1 worker");
        assert_eq!(count(3, "worker"), "3 workers");
    }

    #[test]
    fn free_port_is_nonzero() {
        assert_ne!(free_port().expect("free port"), 0);
    }
}
