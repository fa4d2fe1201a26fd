#!/usr/bin/env bash
# The method on real faces: FER2013 with 10% of the training rows labelled (stratified,
# seed 7), validated on PublicTest, the same model and training budget for
#   (a) supervised on the 10% only (all epochs in one round),
#   (b) pseudo-label rounds without debiasing or feedback,
#   (c) the full method (debiased pseudo-labels, class-aware selection, feedback).
# Usage: scripts/bench-method.sh [FER2013_CSV(.gz)]   (OUT=dir to keep results elsewhere;
# VARIANTS="c" runs only some of them)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
csv=$(realpath "${1:-../shared/data/fer2013/fer2013_train_publictest.csv.gz}")
out=$(realpath -m "${OUT:-target/bench-method}")
rounds=${ROUNDS:-3} epochs=${EPOCHS:-6} steps=${STEPS:-45} width=${WIDTH:-16}

bash scripts/bootstrap.sh
cargo build --release -p feral-cli -p feral-coordinator -p feral-worker
bin=target/release
mkdir -p "$out/logs"
if [ ! -f "$out/data/manifest.json" ]; then
  "$bin/feral" prepare fer2013 --csv "$csv" --out "$out/data" --labeled-fraction 0.1 --seed 7
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
"$bin/feral-coordinator" --listen 127.0.0.1:$port --store memory --artifact-root "$out/artifacts" >"$out/logs/coordinator.log" 2>&1 &
pids=($!)
"$bin/feral-worker" --coordinator "$url" --id bench-worker --devices cpu >"$out/logs/worker.log" 2>&1 &
pids+=($!)
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
sleep 2

spec() {  # name rounds epochs [semi_supervised lines]
  printf 'version = 1\nname = "%s"\ndataset = "%s"\n\n[model]\nwidth = %s\n\n[train]\nepochs = %s\nbatch_size = 64\nsteps_per_epoch = %s\nthreads = 2\n\n[semi_supervised]\nrounds = %s\npatience = 0\n%s' \
    "$1" "$out/data" "$width" "$3" "$steps" "$2" "${4:-}"
}
spec a-supervised 0 $((epochs * (rounds + 1))) >"$out/a.toml"
spec b-plain-pseudo-labels "$rounds" "$epochs" $'debias = false\nfeedback = false\n' >"$out/b.toml"
spec c-full-method "$rounds" "$epochs" >"$out/c.toml"

for variant in ${VARIANTS:-a b c}; do
  started=$(date +%s)
  job=$("$bin/feral" --coordinator "$url" submit "$out/$variant.toml" | awk '{print $3}')
  "$bin/feral" --coordinator "$url" watch "$job" >"$out/$variant.watch.txt" || true
  "$bin/feral" --coordinator "$url" status "$job" >"$out/$variant.txt"
  echo "== ($variant) $(head -1 "$out/$variant.txt"), $(( $(date +%s) - started )) s"
  sed -n '/^ROUND  VAL ACC/,$p;/^final validation/,/^model:/p' "$out/$variant.txt"
done
echo "results in $out (a.txt, b.txt, c.txt)"
