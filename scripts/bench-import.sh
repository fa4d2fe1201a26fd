#!/usr/bin/env bash
# Dataset import time: `feral prepare fer2013` against a reference importer in Python
# (scripts/bench_import_ref.py: csv module, np.fromstring, safetensors.numpy.save_file, all
# decoded images held in memory) on the same FER2013 CSV, both doing the same work: read
# and gunzip the file, hash the decompressed text, decode and check every row, split
# (PublicTest rows validate; a stratified seeded LABELED_FRACTION of each class's Training
# rows keeps its label, the rest go to the unlabelled pool with hidden labels), and write
# safetensors shards of SHARD_SIZE samples per split with their sha256 and a manifest.
# Each importer writes into a fresh temporary directory (removed after each run). Feral
# runs with its default threads and, for each other count in FERAL_THREADS, under
# RAYON_NUM_THREADS=N (its reading thread, which gunzips and hashes, comes on top); the
# reference is single-threaded. All runs alternate, REPEATS rounds, so that other load on
# the machine hits all alike; the table shows the median wall time (process start to exit)
# and the peak resident memory (from /usr/bin/time -v, or Python's resource module where
# that is missing). The first round also checks that both wrote the same dataset (the
# same splits, class counts, shards and shard checksums).
#
#   scripts/bench-import.sh [FER2013_CSV(.gz)]   # default ../shared/data/fer2013/fer2013_train_publictest.csv.gz
#   REPEATS=5 FERAL_THREADS="default 1 2" scripts/bench-import.sh
#   BUILD=0 scripts/bench-import.sh              # use target/release/feral as it is
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

csv=$(realpath "${1:-../shared/data/fer2013/fer2013_train_publictest.csv.gz}")
REPEATS=${REPEATS:-3}
FERAL_THREADS=${FERAL_THREADS:-"default 1"}
LABELED_FRACTION=${LABELED_FRACTION:-0.1}
SEED=${SEED:-7}
SHARD_SIZE=${SHARD_SIZE:-4096}
PYTHON=${PYTHON:-.venv/bin/python}
BUILD=${BUILD:-1}

[ "$BUILD" = 0 ] || cargo build --release -p feral-cli >&2
feral=target/release/feral
results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT
split=(--labeled-fraction "$LABELED_FRACTION" --seed "$SEED" --shard-size "$SHARD_SIZE")

# measure NAME ROUND ENV... -- COMMAND...: runs COMMAND (with ENV) into a fresh $results/out,
# appends "name wall_s peak_rss_kib" to $results/runs.txt, keeps its output in $results/NAME-ROUND.log.
measure() {
    local name=$1 round=$2; shift 2
    local env=()
    while [ "$1" != -- ]; do env+=("$1"); shift; done
    shift
    rm -rf "$results/out"
    local started ended rss
    started=$(date +%s%N)
    if [ -x /usr/bin/time ]; then
        env "${env[@]}" /usr/bin/time -v -o "$results/time.txt" "$@" >"$results/$name-$round.log" 2>&1 ||
            { cat "$results/$name-$round.log" >&2; echo "$name failed" >&2; exit 1; }
        ended=$(date +%s%N)
        rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$results/time.txt")
    else
        env "${env[@]}" "$PYTHON" -c 'import resource, subprocess, sys
code = subprocess.call(sys.argv[2:], stdout=open(sys.argv[1], "w"), stderr=subprocess.STDOUT)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(code)' "$results/$name-$round.log" "$@" 2>"$results/time.txt" ||
            { cat "$results/$name-$round.log" >&2; echo "$name failed" >&2; exit 1; }
        ended=$(date +%s%N)
        rss=$(tail -1 "$results/time.txt")
    fi
    echo "$name $(( (ended - started) / 1000000 )) $rss" | awk '{printf "%s %.3f %s\n", $1, $2 / 1000, $3}' >>"$results/runs.txt"
    if [ "$round" = 1 ]; then cp "$results/out/manifest.json" "$results/$name.manifest.json"; fi
    rm -rf "$results/out"
}

cat "$csv" >/dev/null  # the file in the page cache before the first timed run
loads=()
for round in $(seq "$REPEATS"); do
    echo "round $round/$REPEATS: feral (threads: $FERAL_THREADS), then the python reference ..." >&2
    for threads in $FERAL_THREADS; do
        env=()
        [ "$threads" = default ] || env=(RAYON_NUM_THREADS="$threads")
        measure "feral@$threads" "$round" "${env[@]}" -- "$feral" prepare fer2013 --csv "$csv" --out "$results/out" "${split[@]}"
    done
    measure "python@1" "$round" PYTHONWARNINGS=ignore -- "$PYTHON" scripts/bench_import_ref.py --csv "$csv" --out "$results/out" "${split[@]}"
    loads+=("$(cut -d' ' -f1 /proc/loadavg)")
done

rows=$(sed -n 's/^read \([0-9]*\) rows in .*/\1/p' "$results/feral@$(echo "$FERAL_THREADS" | cut -d' ' -f1)-1.log")
"$PYTHON" - "$results" "$rows" <<'PY'
import json, statistics, sys

results, rows = sys.argv[1], int(sys.argv[2])
runs = {}
for line in open(f"{results}/runs.txt"):
    name, wall, rss = line.split()
    runs.setdefault(name, []).append((float(wall), int(rss)))
feral_default = statistics.median(w for w, _ in runs[next(n for n in runs if n.startswith("feral"))])
print("| importer | threads | median s | rows/s | peak RSS MiB | time vs feral (default) | runs (s) |")
print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
for name, values in runs.items():
    impl, threads = name.split("@")
    wall = statistics.median(w for w, _ in values)
    rss = max(r for _, r in values) / 1024
    if impl == "feral":
        label = "`feral prepare fer2013`"
        threads = ("default" if threads == "default" else f"RAYON_NUM_THREADS={threads}") + ", + reading thread"
    else:
        label, threads = "Python reference (csv, numpy, safetensors)", "1"
    runs_s = " ".join(f"{w:.2f}" for w, _ in values)
    print(f"| {label} | {threads} | {wall:.2f} | {rows / wall:,.0f} | {rss:.0f} | {wall / feral_default:.2f}x | {runs_s} |")

def summary(path):
    m = json.load(open(path))
    return m["source_sha256"], {s: (i["samples"], i["class_counts"], [(x["file"], x["samples"], x["sha256"]) for x in i["shards"]])
                                for s, i in m["splits"].items()}
names = list(runs)
feral_src, feral_splits = summary(f"{results}/{names[0]}.manifest.json")
ref_src, ref_splits = summary(f"{results}/python@1.manifest.json")
shape = lambda splits: {s: (n, c, [(f, k) for f, k, _ in shards]) for s, (n, c, shards) in splits.items()}
same_shape = shape(feral_splits) == shape(ref_splits)
same_bytes = feral_splits == ref_splits
print()
print(f"{rows} rows; " + ", ".join(f"{s} {n} in {len(sh)} shard(s)" for s, (n, _, sh) in feral_splits.items()))
print(f"same splits, class counts and shard sizes: {'yes' if same_shape else 'NO'}; "
      f"same shard sha256: {'yes' if same_bytes else 'no'}; same source sha256: {'yes' if feral_src == ref_src else 'NO'}")
PY
echo "median of $REPEATS alternating runs each; wall time from process start to exit; peak RSS the largest of the runs"
echo "1-minute load average after each round: ${loads[*]} (above 1 per core: other work shared the machine)"
echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), no GPU used"
