//! `feral-bench-allreduce`: times the TCP ring's all-reduce of f32 tensors between ranks
//! that are separate processes on 127.0.0.1 (this binary re-executes itself with
//! `--rank`), and prints, per size, the time per all-reduce and the bus bandwidth
//! 2(n − 1)/n × bytes / time. `scripts/bench_allreduce_gloo.py` measures the same for
//! PyTorch's gloo; `scripts/bench-allreduce.sh` runs both side by side.
//!
//! Protocol between the parent and its ranks (one line each, on stdin/stdout): a rank
//! prints `listening <address>`, reads `peers <address>,...`, then prints one
//! `result <bytes> <iterations> <seconds per all-reduce>` per size.
//!
//! `--nccl cuda:N` instead runs one rank of Feral's NCCL collective on that GPU (a check
//! that NCCL loads and reduces through Feral on a machine with one GPU; `scripts/gpu-check.sh`).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use feral_worker::collective::{Collective, Nccl, TcpRing};
use tch::{Device, Kind, Tensor};

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Parser)]
#[command(about = "All-reduce benchmark of Feral's TCP ring, ranks as processes on loopback")]
struct Args {
    /// Number of ranks (processes).
    #[arg(long, default_value_t = 2)]
    ranks: usize,
    /// Tensor sizes in MiB (f32).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,256")]
    sizes_mb: Vec<f64>,
    /// Timed all-reduces per size (at most; see --iter-budget-mb).
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Untimed all-reduces per size before timing.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Fewer iterations for big sizes: iterations = clamp(budget / size, 3, iters).
    #[arg(long)]
    iter_budget_mb: Option<f64>,
    /// Bytes per pipelined segment, in KiB.
    #[arg(long, default_value_t = 1024)]
    segment_kb: usize,
    /// Print CSV (implementation,ranks,bytes,iterations,seconds,busbw_gbps) instead of a table.
    #[arg(long)]
    csv: bool,
    /// Internal: run as this rank.
    #[arg(long, hide = true)]
    rank: Option<usize>,
    /// One rank of Feral's NCCL collective on this GPU (`cuda:N`) instead of the TCP ring.
    #[arg(long)]
    nccl: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.ranks == 0 {
        bail!("--ranks must be at least 1");
    }
    if let Some(device) = &args.nccl {
        return run_nccl(&args, device);
    }
    match args.rank {
        Some(rank) => run_rank(&args, rank),
        None => run_parent(&args),
    }
}

/// One NCCL rank on `device`: every size reduced (and checked), then timed.
fn run_nccl(args: &Args, device: &str) -> anyhow::Result<()> {
    let index: usize = device.strip_prefix("cuda:").and_then(|i| i.parse().ok()).with_context(|| format!("--nccl takes cuda:N, got {device:?}"))?;
    feral_worker::collective::nccl::check_available()?;
    let unique_id = Nccl::unique_id()?;
    let mut nccl = Nccl::new(0, 1, index, &unique_id)?;
    let device = Device::Cuda(index);
    println!("feral nccl, 1 rank on cuda:{index}, f32");
    println!("{:>10} {:>6} {:>14}", "size MiB", "iters", "ms/all-reduce");
    for &size_mb in &args.sizes_mb {
        let bytes = size_in_bytes(size_mb);
        let mut tensor = Tensor::full([(bytes / 4) as i64], 3.0, (Kind::Float, device));
        nccl.all_reduce_sum(&mut tensor)?;
        if tensor.ne(3.0).any().int64_value(&[]) != 0 {
            bail!("the all-reduce of {bytes} bytes on one rank changed the tensor");
        }
        let iterations = iterations(args, bytes);
        let started = Instant::now();
        for _ in 0..iterations {
            nccl.all_reduce_sum(&mut tensor)?;
        }
        tensor.sum(Kind::Float).double_value(&[]); // waits for the GPU
        let seconds = started.elapsed().as_secs_f64() / iterations as f64;
        println!("{size_mb:>10} {iterations:>6} {:>14.3}", seconds * 1e3);
    }
    Ok(())
}

fn iterations(args: &Args, bytes: usize) -> usize {
    match args.iter_budget_mb {
        Some(budget) => ((budget * MIB / bytes as f64) as usize).clamp(3, args.iters.max(3)),
        None => args.iters,
    }
}

fn size_in_bytes(size_mb: f64) -> usize {
    ((size_mb * MIB) as usize / 4).max(1) * 4
}

fn run_parent(args: &Args) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let sizes = args.sizes_mb.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",");
    let mut children = Vec::new();
    for rank in 0..args.ranks {
        let mut command = Command::new(&exe);
        command.args(["--rank", &rank.to_string(), "--ranks", &args.ranks.to_string(), "--sizes-mb", &sizes]);
        command.args(["--iters", &args.iters.to_string(), "--warmup", &args.warmup.to_string()]);
        command.args(["--segment-kb", &args.segment_kb.to_string()]);
        if let Some(budget) = args.iter_budget_mb {
            command.args(["--iter-budget-mb", &budget.to_string()]);
        }
        let child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().context("cannot start a rank")?;
        children.push(RankProcess::new(rank, child)?);
    }
    let mut peers = Vec::new();
    for child in &mut children {
        let line = child.line()?;
        let address = line.strip_prefix("listening ").with_context(|| format!("rank {}: unexpected {line:?}", child.rank))?;
        peers.push(address.to_owned());
    }
    let peers_line = format!("peers {}\n", peers.join(","));
    for child in &mut children {
        let stdin = child.process.stdin.as_mut().context("rank without stdin")?;
        stdin.write_all(peers_line.as_bytes())?;
        stdin.flush()?;
    }
    if args.csv {
        println!("implementation,ranks,bytes,iterations,seconds,busbw_gbps");
    } else {
        println!("feral tcp ring, {} ranks (processes on 127.0.0.1), f32", args.ranks);
        println!("{:>10} {:>6} {:>14} {:>14}", "size MiB", "iters", "ms/all-reduce", "busbw GB/s");
    }
    for &size_mb in &args.sizes_mb {
        let mut slowest = 0.0f64;
        let mut iterations = 0;
        for child in &mut children {
            let line = child.line()?;
            let fields: Vec<&str> = line.split_whitespace().collect();
            let ["result", _bytes, iters, seconds] = fields[..] else {
                bail!("rank {}: unexpected {line:?}", child.rank);
            };
            iterations = iters.parse()?;
            slowest = slowest.max(seconds.parse()?);
        }
        let bytes = size_in_bytes(size_mb);
        let n = args.ranks as f64;
        let bus_bandwidth = 2.0 * (n - 1.0) / n * bytes as f64 / slowest / 1e9;
        if args.csv {
            println!("feral,{},{bytes},{iterations},{slowest:.6},{bus_bandwidth:.4}", args.ranks);
        } else {
            println!("{size_mb:>10} {iterations:>6} {:>14.3} {bus_bandwidth:>14.3}", slowest * 1e3);
        }
    }
    for child in &mut children {
        let status = child.process.wait()?;
        if !status.success() {
            bail!("rank {} exited with {status}", child.rank);
        }
    }
    Ok(())
}

struct RankProcess {
    rank: usize,
    process: Child,
    stdout: BufReader<ChildStdout>,
}

impl Drop for RankProcess {
    /// A rank left behind by an error elsewhere is stopped (a finished one is unaffected).
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl RankProcess {
    fn new(rank: usize, mut process: Child) -> anyhow::Result<Self> {
        let stdout = BufReader::new(process.stdout.take().context("rank without stdout")?);
        Ok(Self { rank, process, stdout })
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("rank {} exited early", self.rank);
        }
        Ok(line.trim().to_owned())
    }
}

fn run_rank(args: &Args, rank: usize) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("listening {}", listener.local_addr()?);
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let peers = line
        .trim()
        .strip_prefix("peers ")
        .context("expected the peers line")?
        .split(',')
        .map(|p| p.parse::<SocketAddr>().with_context(|| format!("bad peer address {p:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut ring = TcpRing::connect(rank, args.ranks, listener, &peers, Duration::from_secs(120))?;
    ring.set_segment_bytes(args.segment_kb * 1024);
    let world = args.ranks as f64;
    for &size_mb in &args.sizes_mb {
        let bytes = size_in_bytes(size_mb);
        let mut tensor = Tensor::full([(bytes / 4) as i64], rank as f64 + 1.0, (Kind::Float, Device::Cpu));
        ring.all_reduce_sum(&mut tensor)?;
        let expected = world * (world + 1.0) / 2.0;
        if tensor.ne(expected).any().int64_value(&[]) != 0 {
            bail!("rank {rank}: the first all-reduce of {bytes} bytes is not {expected} everywhere");
        }
        for _ in 1..args.warmup {
            ring.all_reduce_sum(&mut tensor)?;
        }
        ring.all_reduce_sum(&mut Tensor::zeros([1], (Kind::Float, Device::Cpu)))?; // barrier
        let iterations = iterations(args, bytes);
        let started = Instant::now();
        for _ in 0..iterations {
            ring.all_reduce_sum(&mut tensor)?;
        }
        let seconds = started.elapsed().as_secs_f64() / iterations as f64;
        println!("result {bytes} {iterations} {seconds:.9}");
    }
    Ok(())
}
