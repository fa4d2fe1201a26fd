"""All-reduce benchmark of PyTorch's gloo backend, the counterpart of
`feral-bench-allreduce`: the same f32 sizes (MiB), warm-up, iteration rule and output,
with ranks as processes (torch.multiprocessing spawn) talking over 127.0.0.1.

    .venv/bin/python scripts/bench_allreduce_gloo.py --ranks 2 --sizes-mb 1,4,16 --iters 20
"""

import argparse
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

MIB = 1024 * 1024


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--sizes-mb", default="1,4,16,64,256")
    parser.add_argument("--iters", type=int, default=20, help="timed all-reduces per size (at most)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed all-reduces per size")
    parser.add_argument("--iter-budget-mb", type=float, default=None,
                        help="fewer iterations for big sizes: clamp(budget / size, 3, iters)")
    parser.add_argument("--csv", action="store_true")
    return parser.parse_args()


def size_in_bytes(size_mb):
    return max(int(size_mb * MIB) // 4, 1) * 4


def iterations(args, size_bytes):
    if args.iter_budget_mb is None:
        return args.iters
    return min(max(int(args.iter_budget_mb * MIB / size_bytes), 3), max(args.iters, 3))


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_rank(rank, args, port, sizes):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.ranks)
    world = args.ranks
    results = []
    for size_mb in sizes:
        size_bytes = size_in_bytes(size_mb)
        tensor = torch.full((size_bytes // 4,), float(rank + 1), dtype=torch.float32)
        dist.all_reduce(tensor)
        expected = world * (world + 1) / 2
        if bool((tensor != expected).any()):
            raise RuntimeError(f"rank {rank}: the first all-reduce of {size_bytes} bytes is not {expected} everywhere")
        for _ in range(1, args.warmup):
            dist.all_reduce(tensor)
        dist.all_reduce(torch.zeros(1))  # barrier
        count = iterations(args, size_bytes)
        started = time.perf_counter()
        for _ in range(count):
            dist.all_reduce(tensor)
        seconds = torch.tensor([(time.perf_counter() - started) / count], dtype=torch.float64)
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)  # the slowest rank, as the feral benchmark
        results.append((size_mb, size_bytes, count, seconds.item()))
    if rank == 0:
        report(args, results)
    dist.destroy_process_group()


def report(args, results):
    n = args.ranks
    if args.csv:
        print("implementation,ranks,bytes,iterations,seconds,busbw_gbps")
    else:
        print(f"gloo, {n} ranks (processes on 127.0.0.1), f32")
        print(f"{'size MiB':>10} {'iters':>6} {'ms/all-reduce':>14} {'busbw GB/s':>14}")
    for size_mb, size_bytes, count, seconds in results:
        bus_bandwidth = 2 * (n - 1) / n * size_bytes / seconds / 1e9
        if args.csv:
            print(f"gloo,{n},{size_bytes},{count},{seconds:.6f},{bus_bandwidth:.4f}")
        else:
            print(f"{size_mb:>10g} {count:>6} {seconds * 1e3:>14.3f} {bus_bandwidth:>14.3f}")
    print(end="", flush=True)


def main():
    args = parse_args()
    sizes = [float(s) for s in args.sizes_mb.split(",") if s]
    mp.spawn(run_rank, args=(args, free_port(), sizes), nprocs=args.ranks, join=True)


if __name__ == "__main__":
    main()
