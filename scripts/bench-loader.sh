#!/usr/bin/env bash
# Does the batch loader keep up with training? Times, on the same images and with the same
# augmentation (flip, pad-4 crop, +-10 degree bilinear rotation, +-20% brightness/contrast),
# batches of 64:
#   - Feral's loader alone, with 1 and 2 loader threads, and with none (each batch made
#     on the calling thread when asked) (LOADER_STEPS batches a run);
#   - PyTorch's DataLoader (numpy augmentation), num_workers 0, 1, 2 (the same);
#   - the training step alone (as scripts/bench-train.sh), at 1 and 2 intra-op threads;
#   - the training step fed by Feral's loader (what a task does), at the same thread
#     counts with 0, 1 and 2 loader threads (STEPS steps a run).
# Every configuration runs once per round, REPEATS rounds, so that other load on the
# machine hits all alike; warm-up excluded; the table shows the median run.
#
#   scripts/bench-loader.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STEPS=${STEPS:-20}
LOADER_STEPS=${LOADER_STEPS:-200}
WARMUP=${WARMUP:-3}
REPEATS=${REPEATS:-5}
BATCH=${BATCH:-64}
PYTHON=${PYTHON:-.venv/bin/python}

cargo build --release -p feral-worker --bin feral-bench-train >&2
bin=target/release/feral-bench-train
results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT
data=${DATA:-$results/data.safetensors}
[ -f "$data" ] || "$bin" --write-data "$data" --samples 2048
train=(--data "$data" --steps "$STEPS" --warmup "$WARMUP" --repeats 1 --batch "$BATCH" --csv)
load=(--data "$data" --steps "$LOADER_STEPS" --warmup "$WARMUP" --repeats 1 --batch "$BATCH" --csv)
run() { local name=$1; shift; "$@" >"$results/$name-$repeat.csv"; }
loads=()
for repeat in $(seq "$REPEATS"); do
    echo "round $repeat/$REPEATS ..." >&2
    for loaders in 0 1 2; do
        run "a-feral-loader-$loaders" "$bin" --mode loader --loader-threads "$loaders" "${load[@]}"
    done
    for workers in 0 1 2; do
        run "b-torch-loader-$workers" "$PYTHON" scripts/bench_loader_torch.py --workers "$workers" "${load[@]}"
    done
    for threads in 1 2; do
        run "c-step-$threads" "$bin" --mode step --threads "$threads" "${train[@]}"
        for loaders in 0 1 2; do
            run "d-pipeline-$threads-$loaders" "$bin" --mode pipeline --threads "$threads" --loader-threads "$loaders" "${train[@]}"
        done
    done
    loads+=("$(cut -d' ' -f1 /proc/loadavg)")
done

"$PYTHON" - "$results" <<'PY'
import csv, glob, statistics, sys

runs = {}
for path in sorted(glob.glob(f"{sys.argv[1]}/*.csv")):
    with open(path) as handle:
        for row in csv.DictReader(handle):
            key = (row["implementation"], row["mode"], int(row["threads"]), int(row["loader_threads"]))
            runs.setdefault(key, []).append(float(row["images_per_s"]))
median = {key: statistics.median(values) for key, values in runs.items()}
step = {threads: rate for (impl, mode, threads, _), rate in median.items() if mode == "step"}
def name(impl, mode, threads, loaders):
    if impl == "torch":
        return f"torch DataLoader, num_workers={loaders}"
    if mode == "loader":
        return "feral loader, inline (no thread)" if loaders == 0 else f"feral loader, {loaders} loader thread(s)"
    if mode == "step":
        return f"feral train step alone, {threads} intra-op"
    if loaders == 0:
        return f"feral step, {threads} intra-op, batches inline"
    return f"feral step fed by loader, {threads} intra-op + {loaders} loader"
order = {"loader": 0, "step": 2, "pipeline": 3}
keys = sorted(median, key=lambda k: (order[k[1]] + (k[0] == "torch"), k[2], k[3]))
print(f"{'what':<46} {'images/s':>9} {'/ step@1':>9} {'/ step@2':>9}  runs")
for key in keys:
    rate = median[key]
    ratios = "".join(f" {rate / step[t]:>9.2f}" if t in step else f" {'-':>9}" for t in (1, 2))
    print(f"{name(*key):<46} {rate:>9.1f}{ratios}  {' '.join(f'{v:.0f}' for v in runs[key])}")
PY
echo "batch $BATCH, 48x48x1; median of $REPEATS rounds; loaders $LOADER_STEPS batches a run, training $STEPS steps a run; $WARMUP warm-up each"
echo "/ step@N: rate over the training step's own rate (compact CNN width 32, AdamW) at N intra-op threads"
echo "1-minute load average after each round: ${loads[*]} (above 1 per core: other work shared the machine)"
echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), no GPU used"
