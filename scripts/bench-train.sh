#!/usr/bin/env bash
# Training throughput of the worker's real step (forward, cross-entropy, backward, AdamW)
# for the default compact CNN (width 32) on 48x48 grayscale batches of 64, against the same
# architecture and optimiser in PyTorch eager, at each intra-op thread count and batch
# memory layout (channels-last, as the worker's loader makes batches, and N x C x H x W), on
# the same images (synthetic by default; DATA=file.safetensors with `images` u8 NxHxWxC and `labels`
# i64 to use others). Warm-up steps are excluded. The two sides alternate, one timed run
# of STEPS steps each, REPEATS times, so that other load on the machine hits both alike;
# the table shows the median run. Prints one side-by-side table.
#
#   scripts/bench-train.sh
#   THREADS="1 2 4" LAYOUTS=channels-last STEPS=50 REPEATS=7 scripts/bench-train.sh
#   PRECISIONS="fp32 bf16" scripts/bench-train.sh   # bf16: autocast on both sides
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

THREADS=${THREADS:-"1 2"}
LAYOUTS=${LAYOUTS:-"channels-last nchw"}
PRECISIONS=${PRECISIONS:-fp32}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-5}
REPEATS=${REPEATS:-5}
BATCH=${BATCH:-64}
PYTHON=${PYTHON:-.venv/bin/python}

cargo build --release -p feral-worker --bin feral-bench-train >&2
bin=target/release/feral-bench-train
results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT
data=${DATA:-$results/data.safetensors}
[ -f "$data" ] || "$bin" --write-data "$data" --samples 2048
common=(--data "$data" --steps "$STEPS" --warmup "$WARMUP" --repeats 1 --batch "$BATCH" --csv)
loads=()
for repeat in $(seq "$REPEATS"); do
    for precision in $PRECISIONS; do
    for layout in $LAYOUTS; do
        for threads in $THREADS; do
            echo "run $repeat/$REPEATS, $layout, $precision, $threads threads: feral (tch), then pytorch eager ..." >&2
            run=$layout-$precision-$threads-$repeat
            "$bin" --mode step --threads "$threads" --layout "$layout" --precision "$precision" "${common[@]}" >"$results/feral-$run.csv"
            "$PYTHON" scripts/bench_train_torch.py --threads "$threads" --layout "$layout" --precision "$precision" "${common[@]}" >"$results/torch-$run.csv"
        done
    done
    done
    loads+=("$(cut -d' ' -f1 /proc/loadavg)")
done

"$PYTHON" - "$results" <<'PY'
import csv, glob, statistics, sys

rates, batch = {}, 64
for path in sorted(glob.glob(f"{sys.argv[1]}/*.csv")):
    with open(path) as handle:
        for row in csv.DictReader(handle):
            key = (row["layout"], int(row["threads"]), row["implementation"])
            rates.setdefault(key, []).append(float(row["images_per_s"]))
            batch = int(row["batch"])
print(f"{'layout':<18} {'threads':>7} {'feral img/s':>11} {'torch img/s':>11} {'feral/torch':>11} {'feral ms/step':>13} {'torch ms/step':>13}"
      f"  {'feral runs':<30} torch runs")
for layout, threads in sorted({(l, t) for l, t, _ in rates}):
    feral, torch = rates.get((layout, threads, "feral")), rates.get((layout, threads, "torch"))
    if not feral or not torch:
        continue
    f, t = statistics.median(feral), statistics.median(torch)
    runs = lambda values: " ".join(f"{v:.0f}" for v in values)
    print(f"{layout:<18} {threads:>7} {f:>11.1f} {t:>11.1f} {f / t:>11.2f} {batch / f * 1e3:>13.1f} {batch / t * 1e3:>13.1f}"
          f"  {runs(feral):<30} {runs(torch)}")
PY
echo "batch $BATCH, 48x48x1, compact CNN width 32, AdamW; median of $REPEATS alternating runs of $STEPS steps, each after $WARMUP warm-up steps"
echo "1-minute load average after each round: ${loads[*]} (above 1 per core: other work shared the machine)"
echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), no GPU used"
