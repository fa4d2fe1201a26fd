#!/usr/bin/env bash
# Time to accuracy (issue 13): the same supervised job (compact CNN width 32, FER2013 with
# 10% of the training rows labelled, class-uniform batches of 64 per rank, STEPS steps an
# epoch, fp32, one libtorch thread per rank) with 2 CPU ranks through Feral (a coordinator
# and two workers started here, one 2-rank gang) and through `torchrun --nproc-per-node 2`
# PyTorch DDP with gloo (scripts/ddp_reference.py). Each clock starts before anything of
# its side is launched (Feral: before the coordinator starts; DDP: before torchrun). Prints
# the validation macro-F1 by epoch, the time each side first reaches the macro-F1 both
# reach, the time to the end, and the final macro-F1, for each seed; with several seeds
# also the same for the curves averaged over the seeds (one seed's ratio at equal
# macro-F1 turns on the last epochs' wobble of either curve).
# Usage: scripts/bench-ddp.sh [FER2013_CSV(.gz)]   (EPOCHS=12 STEPS=45 SEEDS=7 OUT=target/bench-ddp)
# Each seed in SEEDS (SEED is read too) seeds both sides' sampling, augmentation and
# initialisation (not the 10% split); its run is kept in OUT/sSEED.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
csv=$(realpath "${1:-../shared/data/fer2013/fer2013_train_publictest.csv.gz}")
out=$(realpath -m "${OUT:-target/bench-ddp}")
epochs=${EPOCHS:-12} steps=${STEPS:-45} seeds=${SEEDS:-${SEED:-7}}
bash scripts/bootstrap.sh
cargo build --release -p feral-cli -p feral-coordinator -p feral-worker
bin=target/release
mkdir -p "$out"
[ -f "$out/data/manifest.json" ] || "$bin/feral" prepare fer2013 --csv "$csv" --out "$out/data" --labeled-fraction 0.1 --seed 7 --test-fraction 0.5 >/dev/null
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

race() {  # seed: one race, its files in $out/s$seed
local seed=$1 dir=$out/s$1
mkdir -p "$dir/logs"
rm -f "$dir"/logs/*.log
# --- Feral --------------------------------------------------------------------------
printf 'version = 1\nname = "race"\ndataset = "%s"\n\n[model]\nwidth = 32\n\n[train]\nepochs = %s\nbatch_size = 64\nsteps_per_epoch = %s\nthreads = 1\nseed = %s\n\n[semi_supervised]\nrounds = 0\n\n[resources]\nworkers = 2\n' \
  "$out/data" "$epochs" "$steps" "$seed" >"$dir/race.toml"
local port url job feral_start feral_end ddp_start ddp_end
port=$(free_port) url=http://127.0.0.1:$port
feral_start=$(date +%s.%N)
"$bin/feral-coordinator" --listen 127.0.0.1:$port --store memory --artifact-root "$dir/artifacts" >"$dir/logs/coordinator.log" 2>&1 &
pids=($!)
for i in 1 2; do
  RUST_LOG=info NO_COLOR=1 "$bin/feral-worker" --coordinator "$url" --id race-worker-$i --devices cpu --advertise-host 127.0.0.1 --allowed-roots "$out" >"$dir/logs/worker-$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 300); do [ "$("$bin/feral" --coordinator "$url" workers 2>/dev/null | grep -c race-worker)" = 2 ] && break; sleep 0.1; done
job=$("$bin/feral" --coordinator "$url" submit "$dir/race.toml" | awk '{print $3}')
"$bin/feral" --coordinator "$url" watch "$job" >"$dir/feral-watch.txt"
feral_end=$(date +%s.%N)
kill "${pids[@]}" 2>/dev/null || true
wait 2>/dev/null || true
pids=()

# --- torchrun DDP -------------------------------------------------------------------
ddp_start=$(date +%s.%N)
OMP_NUM_THREADS=1 .venv/bin/torchrun --nproc-per-node 2 --master-addr 127.0.0.1 --master-port "$(free_port)" \
  scripts/ddp_reference.py --data "$out/data" --epochs "$epochs" --steps "$steps" --batch 64 --threads 1 --seed "$seed" >"$dir/ddp.txt" 2>"$dir/logs/ddp.log"
ddp_end=$(date +%s.%N)
echo "$feral_start $feral_end $ddp_start $ddp_end" >"$dir/clock.txt"
}

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
dirs=()
for seed in $seeds; do
  race "$seed"
  dirs+=("$out/s$seed")
done

python3 - "${dirs[@]}" <<'PY'
import datetime, pathlib, re, sys

def read(dir):
    """(feral, ddp, clock): epoch rows (epoch, seconds since launch, val macro-F1) of each side."""
    dir = pathlib.Path(dir)
    feral_start, feral_end, ddp_start, ddp_end = map(float, (dir / "clock.txt").read_text().split())
    feral = []
    for log in sorted((dir / "logs").glob("worker-*.log")):
        for line in log.read_text().splitlines():
            m = re.match(r"(\S+)\s+INFO feral_worker::agent: epoch finished task_id=\S+/rank0 epoch=(\d+) .*val_macro_f1=([0-9.]+)", line)
            if m:
                stamp = datetime.datetime.fromisoformat(m[1].replace("Z", "+00:00")).timestamp()
                feral.append((int(m[2]), stamp - feral_start, float(m[3])))
    feral.sort()
    ddp = [(int(e), float(t) - ddp_start, float(f)) for e, t, f in (l.split()[1:] for l in (dir / "ddp.txt").read_text().splitlines() if l.startswith("epoch "))]
    if not feral or not ddp:
        sys.exit(f"missing epochs: feral {len(feral)}, ddp {len(ddp)} (logs in {dir}/logs)")
    return feral, ddp, (feral_end - feral_start, ddp_end - ddp_start)

def compare(title, feral, ddp, ends):
    print(f"\n{title}\n\n| epoch | feral s | feral val macro-F1 | DDP s | DDP val macro-F1 |\n| ---: | ---: | ---: | ---: | ---: |")
    for (e, ft, ff), (_, dt, df) in zip(feral, ddp):
        print(f"| {e} | {ft:.1f} | {ff:.3f} | {dt:.1f} | {df:.3f} |")
    target = min(max(f for *_, f in feral), max(f for *_, f in ddp))
    reach = lambda rows: next(t for _, t, f in rows if f >= target)
    fr, dr = reach(feral), reach(ddp)
    print(f"\nmacro-F1 both reach: {target:.3f}; first reached after {fr:.1f} s (Feral) and {dr:.1f} s (DDP): Feral / DDP = {fr / dr:.2f}")
    print(f"launch to end: {ends[0]:.1f} s (Feral) and {ends[1]:.1f} s (DDP): Feral / DDP = {ends[0] / ends[1]:.2f}")
    print(f"final val macro-F1: {feral[-1][2]:.3f} (Feral), {ddp[-1][2]:.3f} (DDP)")

runs = [(pathlib.Path(d).name, *read(d)) for d in sys.argv[1:]]
for name, feral, ddp, ends in runs:
    compare(f"## {name}", feral, ddp, ends)
if len(runs) > 1:
    epochs = min(min(len(f), len(d)) for _, f, d, _ in runs)
    mean = lambda side: [(e + 1, sum(r[side][e][1] for r in runs) / len(runs), sum(r[side][e][2] for r in runs) / len(runs)) for e in range(epochs)]
    ends = tuple(sum(r[3][i] for r in runs) / len(runs) for i in (0, 1))
    compare(f"## mean over {len(runs)} seeds (each epoch's seconds and macro-F1 averaged)", mean(1), mean(2), ends)
PY
