//! The chaos run (`scripts/chaos.sh`): a real cluster on loopback (one etcd, two
//! `feral-coordinator` processes, three `feral-worker` processes) trains a two-round job with
//! a two-rank gang twice: once undisturbed, once while, on a schedule, a training rank is
//! SIGKILLed, another is SIGSTOPped for longer than its lease, the leading coordinator is
//! SIGSTOPped for several leader leases (then continued: fenced, it exits and is started
//! again), the artifact disk (a tmpfs) fills up until an attempt fails on it and is then
//! freed, the new leader is SIGKILLed, and etcd is killed and started again. Runs are deterministic given the spec,
//! so the disturbed run must end with the undisturbed run's metrics, number for number.
//! Prints the time from each fault to its detection and recovery, as the coordinator's
//! API shows them (polled every 50 ms); exits 1 when the job fails or a metric differs.
//!
//! ```sh
//! cargo build --release -p feral-cli -p feral-coordinator -p feral-worker -p feral-tests --bin feral-chaos
//! target/release/feral-chaos [--dir target/chaos] [--seconds 900]
//! ```
//! (One scenario, read top to bottom: it is longer than most files, and kept whole.)

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use feral_common::prepare::{prepare_synthetic, SyntheticSplits};
use feral_common::synthetic::SyntheticConfig;
use feral_proto::v1 as pb;
use feral_proto::v1::job_service_client::JobServiceClient;
use tonic::transport::{Channel, Endpoint};

/// Worker heartbeat and lease, and the coordinators' leader lease (seconds).
const HEARTBEAT_MS: u64 = 500;
const LEASE_MS: u64 = 3000;
const LEADER_LEASE_S: u64 = 2;
const POLL: Duration = Duration::from_millis(50);

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process that can be killed, paused and started again with the same command
/// line; its output goes (appended) to one log file. Killed when dropped.
struct Process {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    fn start(name: &str, program: &Path, args: Vec<String>, logs: &Path) -> anyhow::Result<Self> {
        let mut process = Self { name: name.to_owned(), program: program.to_owned(), args, log: logs.join(format!("{name}.log")), child: None };
        process.restart()?;
        Ok(process)
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("cannot start {} ({})", self.name, self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process has exited (by itself: it was not killed from here).
    fn exited(&mut self) -> Option<()> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()).map(|_| ())
    }

    /// Sends `signal` (`STOP`, `CONT`) to the process.
    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.child.as_ref().with_context(|| format!("{} is not running", self.name))?.id();
        let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} ({}) failed", self.name);
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A paused process cannot die of SIGKILL until it is continued on some kernels' view
        // of its state; SIGCONT first is harmless.
        let _ = self.signal("CONT");
        self.kill();
    }
}

/// One etcd, two coordinators on it, three workers that know both coordinators.
struct Cluster {
    etcd: Process,
    coordinators: Vec<(Process, String)>,
    workers: Vec<Process>,
    channels: Vec<Channel>,
}

impl Cluster {
    async fn start(dir: &Path) -> anyhow::Result<Self> {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let bin = std::env::current_exe()?;
        let sibling = |name: &str| -> anyhow::Result<PathBuf> {
            let path = bin.with_file_name(name);
            anyhow::ensure!(path.exists(), "{} is missing: cargo build --release -p feral-coordinator -p feral-worker", path.display());
            Ok(path)
        };
        let (client, peer) = (free_port()?, free_port()?);
        let etcd_args = [
            "--name",
            "chaos",
            "--data-dir",
            &dir.join("etcd").display().to_string(),
            "--listen-client-urls",
            &format!("http://127.0.0.1:{client}"),
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{client}"),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-cluster",
            &format!("chaos=http://127.0.0.1:{peer}"),
        ];
        let etcd = Process::start("etcd", Path::new("etcd"), etcd_args.iter().map(|a| a.to_string()).collect(), &logs)
            .context("etcd (install etcd-server: bash scripts/bootstrap.sh)")?;
        let mut coordinators = Vec::new();
        for i in 1..=2 {
            let port = free_port()?;
            let args = [
                "--listen".to_owned(),
                format!("127.0.0.1:{port}"),
                "--store".to_owned(),
                format!("etcd://127.0.0.1:{client}/chaos"),
                "--artifact-root".to_owned(),
                dir.join("artifacts").display().to_string(),
                "--heartbeat-interval-ms".to_owned(),
                HEARTBEAT_MS.to_string(),
                "--lease-ttl-ms".to_owned(),
                LEASE_MS.to_string(),
                "--leader-lease-s".to_owned(),
                LEADER_LEASE_S.to_string(),
            ];
            let process = Process::start(&format!("coordinator-{i}"), &sibling("feral-coordinator")?, args.to_vec(), &logs)?;
            coordinators.push((process, format!("http://127.0.0.1:{port}")));
        }
        let both = coordinators.iter().map(|(_, url)| url.as_str()).collect::<Vec<_>>().join(",");
        let mut workers = Vec::new();
        for i in 1..=3 {
            // Gang peers reach each other on loopback (the host name may not resolve).
            // The dataset lies beside the run's directory, under the chaos directory.
            let root = dir.parent().unwrap_or(dir).display().to_string();
            let args =
                ["--coordinator", &both, "--id", &format!("chaos-worker-{i}"), "--devices", "cpu", "--advertise-host", "127.0.0.1", "--allowed-roots", &root];
            workers.push(Process::start(&format!("worker-{i}"), &sibling("feral-worker")?, args.iter().map(|a| a.to_string()).collect(), &logs)?);
        }
        let channels = coordinators
            .iter()
            .map(|(_, url)| Ok(Endpoint::from_shared(url.clone())?.connect_timeout(Duration::from_secs(1)).timeout(Duration::from_secs(2)).connect_lazy()))
            .collect::<anyhow::Result<_>>()?;
        let cluster = Self { etcd, coordinators, workers, channels };
        wait("three live workers", Duration::from_secs(120), || async {
            Ok(cluster.workers_seen().await.filter(|w| w.iter().filter(|w| w.state == pb::WorkerState::Live as i32).count() == 3))
        })
        .await?;
        Ok(cluster)
    }

    /// The index of the coordinator that answers as leader, with its client.
    async fn leader(&self) -> Option<(usize, JobServiceClient<Channel>)> {
        for (i, channel) in self.channels.iter().enumerate() {
            let mut client = JobServiceClient::new(channel.clone());
            if client.list_jobs(pb::ListJobsRequest { page_size: 1, page_token: String::new() }).await.is_ok() {
                return Some((i, client));
            }
        }
        None
    }

    async fn job(&self, id: &str) -> Option<pb::Job> {
        let (_, mut client) = self.leader().await?;
        client.get_job(pb::GetJobRequest { job_id: id.to_owned() }).await.ok().map(tonic::Response::into_inner)
    }

    async fn workers_seen(&self) -> Option<Vec<pb::Worker>> {
        let (_, mut client) = self.leader().await?;
        client.list_workers(pb::ListWorkersRequest::default()).await.ok().map(|r| r.into_inner().workers)
    }

    fn worker(&mut self, id: &str) -> anyhow::Result<&mut Process> {
        let index: usize = id.rsplit('-').next().and_then(|n| n.parse().ok()).with_context(|| format!("worker id {id}"))?;
        self.workers.get_mut(index - 1).with_context(|| format!("no worker {id}"))
    }
}

/// Polls `check` every [`POLL`] until it gives `Some`; an error after `timeout`.
async fn wait<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The training ranks running now, as the live workers' heartbeats list them:
/// (worker id, attempt) for each task of round `round`'s training.
fn training_ranks(workers: &[pb::Worker], round: u32) -> Vec<(String, u32)> {
    workers
        .iter()
        .filter(|w| w.state == pb::WorkerState::Live as i32)
        .flat_map(|w| w.tasks.iter().map(move |t| (w, t)))
        .filter(|(_, task)| task.kind == pb::TaskKind::Train as i32 && task.round == round)
        .map(|(w, task)| (w.id.clone(), task.attempt))
        .collect()
}

/// Waits until both ranks of round `round`'s training run one attempt (at least `after`)
/// and the job has at least `epochs` epochs of that round: (the ranks' workers, attempt).
async fn gang_training(cluster: &Cluster, job: &str, round: u32, after: u32, epochs: usize, timeout: Duration) -> anyhow::Result<(Vec<String>, u32)> {
    wait(&format!("round {round} training (attempt > {after}, {epochs} epochs)"), timeout, || async {
        let (Some(job), Some(workers)) = (cluster.job(job).await, cluster.workers_seen().await) else { return Ok(None) };
        check_not_failed(&job)?;
        let done = job.epochs.iter().filter(|e| e.round == round).count();
        let ranks: Vec<(String, u32)> = training_ranks(&workers, round).into_iter().filter(|(_, a)| *a > after).collect();
        let attempt = ranks.first().map(|(_, a)| *a);
        Ok((ranks.len() == 2 && ranks.iter().all(|(_, a)| Some(*a) == attempt) && done >= epochs)
            .then(|| (ranks.into_iter().map(|(w, _)| w).collect(), attempt.unwrap_or(0))))
    })
    .await
}

fn check_not_failed(job: &pb::Job) -> anyhow::Result<()> {
    if job.state == pb::JobState::Failed as i32 || job.state == pb::JobState::Cancelled as i32 {
        bail!("the job ended {:?}: {}", pb::JobState::try_from(job.state), job.state_reason);
    }
    Ok(())
}

/// A fault's times: from the fault to each milestone, in seconds.
struct Figures(Vec<(String, f64)>);

impl Figures {
    fn mark(&mut self, fault: &str, milestone: &str, since: Instant) {
        let seconds = since.elapsed().as_secs_f64();
        println!("  {fault}: {milestone} after {seconds:.2} s");
        self.0.push((format!("{fault}: {milestone}"), seconds));
    }
}

/// A rank's worker is killed (or paused past its lease) mid-round: time to the coordinator
/// marking it lost, to no live worker running the old attempt any more (the gang aborted),
/// and to both ranks of the next attempt running (training resumed), each timed from the
/// fault on its own (a survivor may abort before the loss is detected).
async fn lose_a_rank(cluster: &mut Cluster, figures: &mut Figures, job: &str, round: u32, fault: &str, pause: bool) -> anyhow::Result<(String, u32)> {
    let (ranks, attempt) = gang_training(cluster, job, round, 0, 1, Duration::from_secs(300)).await?;
    let victim = ranks[0].clone();
    let faulted = Instant::now();
    if pause {
        cluster.worker(&victim)?.signal("STOP")?
    } else {
        cluster.worker(&victim)?.kill()
    }
    println!("{fault}: {victim} (a rank of round {round}'s attempt {attempt})");
    let milestones = ["worker marked lost", "gang aborted", "training resumed (next attempt on both ranks)"];
    let mut seen = [false; 3];
    let deadline = Instant::now() + Duration::from_secs(180);
    while !seen.iter().all(|s| *s) {
        anyhow::ensure!(Instant::now() < deadline, "{fault}: only {seen:?} of {milestones:?} within 180 s");
        tokio::time::sleep(POLL).await;
        let Some(workers) = cluster.workers_seen().await else { continue };
        let ranks = training_ranks(&workers, round);
        let next: Vec<u32> = ranks.iter().map(|(_, a)| *a).filter(|a| *a > attempt).collect();
        let now = [
            workers.iter().any(|w| w.id == victim && w.state == pb::WorkerState::Lost as i32),
            // The survivors: a killed worker's last heartbeat lists its task until it is lost.
            !ranks.iter().any(|(w, a)| *a == attempt && *w != victim),
            next.len() == 2 && next[0] == next[1],
        ];
        for (i, milestone) in milestones.iter().enumerate() {
            if now[i] && !seen[i] {
                seen[i] = true;
                figures.mark(fault, milestone, faulted);
            }
        }
    }
    Ok((victim, attempt))
}

/// A tmpfs mounted at a directory (the disturbed run's artifact root), unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let status = Command::new("mount").args(["-t", "tmpfs", "-o", "size=512m", "tmpfs"]).arg(dir).status()?;
        anyhow::ensure!(status.success(), "mount -t tmpfs {} failed ({status}): the chaos run needs root for its full-disk fault", dir.display());
        Ok(Self(dir.to_path_buf()))
    }

    /// Fills the disk with one file until a write finds no space; returns the file.
    fn fill(&self) -> anyhow::Result<PathBuf> {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path)?;
        let block = vec![0u8; 1 << 20];
        loop {
            match file.write_all(&block) {
                Ok(()) => {}
                Err(error) if error.raw_os_error() == Some(28) => break,
                Err(error) => return Err(error.into()),
            }
        }
        // What is left of the last block, a page at a time.
        while file.write_all(&block[..4096]).is_ok() {}
        Ok(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("--lazy").arg(&self.0).status();
    }
}

/// Runs the job on a fresh cluster, with the faults when `chaos`; its final job record.
async fn run(dir: &Path, spec: &str, chaos: bool, figures: &mut Figures) -> anyhow::Result<pb::Job> {
    // Both runs keep their artifacts on the same kind of disk; the disturbed one fills it.
    let disk = Some(Tmpfs::mount(&dir.join("artifacts"))?);
    let mut cluster = Cluster::start(dir).await?;
    let (_, mut client) = wait("a leader", Duration::from_secs(60), || async { Ok(cluster.leader().await) }).await?;
    let job = client.submit_job(pb::SubmitJobRequest { spec_toml: spec.to_owned() }).await?.into_inner().job.context("no job")?.id;
    println!("submitted {job} ({})", if chaos { "with faults" } else { "undisturbed" });
    if chaos {
        // 1. A rank of the teacher's gang is killed; it comes back once it is marked lost.
        let (killed, _) = lose_a_rank(&mut cluster, figures, &job, 0, "SIGKILL of a worker", false).await?;
        cluster.worker(&killed)?.restart()?;
        // 2. A rank of round 1's gang is paused past its lease, then continued: it must be
        //    told to stop the attempt that was replaced, and count for nothing.
        let (paused, replaced) = lose_a_rank(&mut cluster, figures, &job, 1, "SIGSTOP of a worker", true).await?;
        cluster.worker(&paused)?.signal("CONT")?;
        let continued = Instant::now();
        wait("the continued worker live again, running nothing of the replaced attempt", Duration::from_secs(120), || async {
            let workers = cluster.workers_seen().await.unwrap_or_default();
            let back = workers.iter().find(|w| w.id == paused && w.state == pb::WorkerState::Live as i32);
            let stale = |t: &pb::TaskKey| t.kind == pb::TaskKind::Train as i32 && t.round == 1 && t.attempt == replaced;
            Ok(back.filter(|w| !w.tasks.iter().any(stale)).map(|_| ()))
        })
        .await?;
        figures.mark("SIGSTOP of a worker", "continued worker live, its replaced attempt stopped (after SIGCONT)", continued);
        // 3. The leader is paused for four leader leases while round 1 trains: the standby
        //    takes over, the workers' calls to the paused one time out and move to it, and
        //    training goes on. Continued, the old leader finds its writes fenced and exits;
        //    it is started again as a standby.
        let before = wait("round 1 training", Duration::from_secs(300), || async {
            Ok(cluster.job(&job).await.filter(|j| j.round == 1 && j.epochs.iter().any(|e| e.round == 1)).map(|j| j.epochs.len()))
        })
        .await?;
        let (leader, _) = cluster.leader().await.context("no leader")?;
        cluster.coordinators[leader].0.signal("STOP")?;
        let paused_at = Instant::now();
        println!("SIGSTOP of the leader: coordinator-{} (round 1 training, {before} epochs recorded)", leader + 1);
        let (new_leader, _) = wait("a new leader", Duration::from_secs(60), || async { Ok(cluster.leader().await.filter(|(i, _)| *i != leader)) }).await?;
        figures.mark("SIGSTOP of the leader", &format!("coordinator-{} serves as leader", new_leader + 1), paused_at);
        wait("an epoch recorded by the new leader", Duration::from_secs(120), || async {
            Ok(cluster.job(&job).await.filter(|j| j.epochs.len() > before || j.round > 1 || j.state == pb::JobState::Succeeded as i32))
        })
        .await?;
        figures.mark("SIGSTOP of the leader", "next epoch recorded (workers moved to the new leader)", paused_at);
        let pause = Duration::from_secs(4 * LEADER_LEASE_S);
        tokio::time::sleep(pause.saturating_sub(paused_at.elapsed())).await;
        cluster.coordinators[leader].0.signal("CONT")?;
        let continued = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(60);
        while cluster.coordinators[leader].0.exited().is_none() {
            anyhow::ensure!(Instant::now() < deadline, "the continued old leader did not exit within 60 s (its writes must be fenced)");
            tokio::time::sleep(POLL).await;
        }
        figures.mark("SIGSTOP of the leader", "continued old leader fenced and exited (after SIGCONT)", continued);
        cluster.coordinators[leader].0.restart()?;
        // 4. The artifact disk fills up: the next write fails, the job retries with back-off
        //    and says why; once space is freed, it goes on from its last checkpoint.
        let disk = disk.as_ref().context("the disturbed run has its artifacts on a tmpfs")?;
        let before = cluster.job(&job).await.map_or(0, |j| j.epochs.len());
        let filled = Instant::now();
        let filler = disk.fill()?;
        println!("artifact disk full ({before} epochs recorded)");
        let reason = wait("an attempt failed on the full disk", Duration::from_secs(120), || async {
            Ok(cluster.job(&job).await.filter(|j| j.last_failure.contains("No space left")).map(|j| j.last_failure))
        })
        .await?;
        figures.mark("full artifact disk", "an attempt failed, its reason shown", filled);
        println!("  last failure: {reason}");
        std::fs::remove_file(&filler)?;
        let freed = Instant::now();
        wait("progress after space is freed", Duration::from_secs(180), || async {
            Ok(cluster.job(&job).await.filter(|j| j.epochs.len() > before || j.state == pb::JobState::Succeeded as i32).map(|_| ()))
        })
        .await?;
        figures.mark("full artifact disk", "next epoch recorded (after the space was freed)", freed);
        // 5. The leader is killed once round 2 has begun; it is started again as a standby.
        wait("round 2", Duration::from_secs(300), || async { Ok(cluster.job(&job).await.filter(|j| j.round >= 2)) }).await?;
        let (leader, _) = cluster.leader().await.context("no leader")?;
        let killed = Instant::now();
        cluster.coordinators[leader].0.kill();
        println!("SIGKILL of the leader: coordinator-{} (round 2 begun)", leader + 1);
        let (new_leader, _) = wait("a new leader", Duration::from_secs(60), || async { Ok(cluster.leader().await) }).await?;
        figures.mark("SIGKILL of the leader", &format!("coordinator-{} serves as leader", new_leader + 1), killed);
        cluster.coordinators[leader].0.restart()?;
        // 6. etcd is killed and started again during round 2's training.
        let before = wait("round 2 training", Duration::from_secs(300), || async {
            Ok(cluster.job(&job).await.filter(|j| j.epochs.iter().any(|e| e.round == 2)).map(|j| j.epochs.len()))
        })
        .await?;
        let restarted = Instant::now();
        cluster.etcd.restart()?;
        println!("etcd killed and started again (round 2 training, {before} epochs recorded)");
        wait("an epoch after the etcd restart", Duration::from_secs(120), || async {
            Ok(cluster.job(&job).await.filter(|j| j.epochs.len() > before || j.state == pb::JobState::Succeeded as i32))
        })
        .await?;
        figures.mark("etcd restart", "next epoch recorded", restarted);
    }
    let done = wait("the job to end", Duration::from_secs(600), || async {
        let job = cluster.job(&job).await;
        Ok(job.filter(|j| [pb::JobState::Succeeded, pb::JobState::Failed, pb::JobState::Cancelled].iter().any(|s| *s as i32 == j.state)))
    })
    .await?;
    check_not_failed(&done)?;
    Ok(done)
}

/// What must come out the same: every round's validation metrics and pseudo-label audit,
/// the result, and the epoch table (each epoch of the kept model, once, in order).
fn outcome(job: &pb::Job) -> Vec<String> {
    let metrics = |m: Option<&pb::Metrics>| m.map(|m| format!("macro-F1 {:.6}, accuracy {:.6}", m.macro_f1, m.accuracy)).unwrap_or_default();
    let mut lines: Vec<String> = job
        .rounds
        .iter()
        .map(|r| format!("round {}: {}; pseudo-labels selected {:?}", r.round, metrics(r.validation.as_ref()), r.selection.as_ref().map(|s| s.selected)))
        .collect();
    lines.push(format!("result: {}", metrics(job.result.as_ref().and_then(|r| r.validation.as_ref()))));
    let epochs: Vec<String> = job.epochs.iter().map(|e| format!("r{}e{}", e.round, e.epoch)).collect();
    lines.push(format!("epochs: {}", epochs.join(" ")));
    lines
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut dir, mut seconds) = (PathBuf::from("target/chaos"), 900u64);
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--dir" => dir = PathBuf::from(value),
            "--seconds" => seconds = value.parse().with_context(|| format!("--seconds takes a whole number, got {value:?}"))?,
            _ => bail!("unknown flag {flag:?} (flags: --dir, --seconds)"),
        }
    }
    // Job specs take absolute paths only: the data lives under --dir, wherever it was typed.
    let dir = std::path::absolute(&dir).with_context(|| format!("--dir {} cannot be resolved", dir.display()))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    let data = dir.join("data");
    let config = SyntheticConfig { samples: 2400, image_size: 32, imbalance_ratio: 4.0, label_noise: 0.05, seed: 5 };
    let splits = SyntheticSplits { val_fraction: 0.2, labeled_fraction: 0.25, shard_size: 600, ..SyntheticSplits::default() };
    prepare_synthetic(&data, &config, &splits)?;
    let spec = format!(
        "version = 1\nname = \"chaos\"\ndataset = {:?}\n\n[model]\nwidth = 16\n\n[train]\nepochs = 4\nbatch_size = 32\nsteps_per_epoch = 30\nthreads = 1\n\n\
         [semi_supervised]\nrounds = 2\npatience = 0\n\n[resources]\nworkers = 2\nmax_attempts = 10\n",
        data.display().to_string()
    );
    let mut figures = Figures(Vec::new());
    let everything = async {
        let calm = run(&dir.join("undisturbed"), &spec, false, &mut figures).await.context("the undisturbed run")?;
        let stormy = run(&dir.join("disturbed"), &spec, true, &mut figures).await.context("the run with faults")?;
        anyhow::Ok((calm, stormy))
    };
    let (calm, stormy) = tokio::time::timeout(Duration::from_secs(seconds), everything)
        .await
        .with_context(|| format!("the chaos run took more than --seconds {seconds} (logs: {})", dir.display()))??;

    println!("\n| fault | milestone | seconds after the fault |\n| --- | --- | --- |");
    for (what, seconds) in &figures.0 {
        let (fault, milestone) = what.split_once(": ").unwrap_or((what, ""));
        println!("| {fault} | {milestone} | {seconds:.2} |");
    }
    let (calm, stormy) = (outcome(&calm), outcome(&stormy));
    println!("\nundisturbed vs with faults:");
    for (a, b) in calm.iter().zip(&stormy) {
        println!("  {} {a}{}", if a == b { "same" } else { "DIFF" }, if a == b { String::new() } else { format!("  vs  {b}") });
    }
    if calm != stormy {
        bail!("the run with faults did not end with the undisturbed run's metrics (logs: {})", dir.display());
    }
    println!("the run with faults ended with the undisturbed run's metrics");
    Ok(())
}
