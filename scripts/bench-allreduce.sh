#!/usr/bin/env bash
# Benchmarks the all-reduce of Feral's TCP ring against PyTorch's gloo: f32 tensors, ranks
# as separate processes on 127.0.0.1, the same sizes, warm-up and iteration rule for both,
# the time of the slowest rank; then prints one side-by-side table.
#
#   scripts/bench-allreduce.sh
#   SIZES_MB=1,16 RANKS="2" ITERS=50 REPEATS=3 scripts/bench-allreduce.sh
#
# Bus bandwidth = 2(n-1)/n x bytes / time (GB/s, 1e9): what each rank's links carry.
# REPEATS > 1 alternates feral and gloo runs and keeps each one's best run per size, which
# evens out interference from other work on a shared machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SIZES_MB=${SIZES_MB:-1,4,16,64,256}
RANKS=${RANKS:-"2 4"}
ITERS=${ITERS:-30}
WARMUP=${WARMUP:-2}
# Fewer iterations for big sizes: iterations = clamp(ITER_BUDGET_MB / size, 3, ITERS).
ITER_BUDGET_MB=${ITER_BUDGET_MB:-2048}
REPEATS=${REPEATS:-1}
PYTHON=${PYTHON:-.venv/bin/python}

cargo build --release -p feral-worker --bin feral-bench-allreduce >&2
results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT
common=(--sizes-mb "$SIZES_MB" --iters "$ITERS" --warmup "$WARMUP" --iter-budget-mb "$ITER_BUDGET_MB" --csv)
for repeat in $(seq "$REPEATS"); do
    for ranks in $RANKS; do
        echo "run $repeat/$REPEATS: feral tcp ring, $ranks ranks ..." >&2
        target/release/feral-bench-allreduce --ranks "$ranks" "${common[@]}" >"$results/feral-$ranks-$repeat.csv"
        echo "run $repeat/$REPEATS: gloo, $ranks ranks ..." >&2
        "$PYTHON" scripts/bench_allreduce_gloo.py --ranks "$ranks" "${common[@]}" >"$results/gloo-$ranks-$repeat.csv"
    done
done

"$PYTHON" - "$results" <<'EOF'
import csv
import glob
import sys

rows = {}
for path in sorted(glob.glob(f"{sys.argv[1]}/*.csv")):
    with open(path) as handle:
        for row in csv.DictReader(handle):
            key = (int(row["ranks"]), int(row["bytes"]), row["implementation"])
            if key not in rows or float(row["busbw_gbps"]) > float(rows[key]["busbw_gbps"]):
                rows[key] = row  # the best of the repeats

print(f"{'size MiB':>9} {'ranks':>5} {'iters':>5} {'feral ms':>9} {'gloo ms':>9} "
      f"{'feral GB/s':>10} {'gloo GB/s':>9} {'ratio':>6}")
for ranks, size in sorted({(ranks, size) for ranks, size, _ in rows}):
    feral, gloo = rows.get((ranks, size, "feral")), rows.get((ranks, size, "gloo"))
    if feral is None or gloo is None:
        continue
    feral_bw, gloo_bw = float(feral["busbw_gbps"]), float(gloo["busbw_gbps"])
    print(f"{size / 2**20:>9g} {ranks:>5} {feral['iterations']:>5} {float(feral['seconds']) * 1e3:>9.2f} "
          f"{float(gloo['seconds']) * 1e3:>9.2f} {feral_bw:>10.3f} {gloo_bw:>9.3f} {feral_bw / gloo_bw:>6.2f}")
EOF
cores=$(nproc)
echo "best of $REPEATS run(s) each; machine: $cores cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), load average now $(cut -d' ' -f1-3 /proc/loadavg); ranks above $cores oversubscribe the cores"
