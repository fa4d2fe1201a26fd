#!/usr/bin/env bash
# The method on real faces: FER2013 with 10% of the training rows labelled (stratified,
# seed 7), PublicTest split into a val half (chooses feedback weights and the best round)
# and a test half (only reported), the compact CNN, bf16 autocast, one CPU worker.
# Variants (the same budget in optimiser steps unless the name says otherwise):
#   a-weak-1x, a-weak-2x, a-strong-1x, a-strong-2x: supervised on the 10% only, weak or
#       strong augmentation, at 1x and 2x the semi-supervised budget
#   b-offline:   the offline rounds alone (selected pseudo-labels on weak views)
#   c-full:      the full method (online debiased consistency on strong views, feedback)
#   c-online-teacher: (c) with online consistency in the teacher round too
#   c-mu4:       (c) with mu = 4 pool images per labelled image (FixMatch uses 7)
#   c-strong-labelled: (c) with the strong view on labelled batches too
#   c-lambda-u2: (c) with the pool's loss weighed twice (lambda_u = 2)
#   d-no-debias: (c) without debiasing;  e-no-feedback: (c) without feedback
#   f-ceiling:   supervised on 100% of the training labels, 1x budget (f-ceiling-2x: 2x)
# Each variant runs for every seed in SEEDS (default "7"). Writes a results table to stdout
# and the numbers to benchmarks/method-fer2013.json (JSON=path to write elsewhere), where
# rows of other variants or seeds from earlier runs are kept.
# Usage: scripts/bench-method.sh [FER2013_CSV(.gz)]
#   VARIANTS="a-weak-1x c-full" SEEDS="7 8" ROUNDS=2 EPOCHS=12 STEPS=45 WIDTH=32 OUT=dir
#   THREADS=2 (libtorch threads per job: 1 lets two copies of this script share two cores)
#   BIN=dir: run the binaries in dir (a frozen copy, so builds can go on while it runs)
#   COMMIT=rev: the commit those binaries were built from (default: this tree's)
#   TRAIN=lines, MODEL=lines, SEMI=lines: extra [train], [model] or [semi_supervised] keys
#     for every variant, e.g. TRAIN=$'weight_decay = 0.05\n' MODEL=$'dropout = 0.5\n'
#     SEMI=$'online_min_threshold = 0.6\n'
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
csv=$(realpath "${1:-../shared/data/fer2013/fer2013_train_publictest.csv.gz}")
out=$(realpath -m "${OUT:-target/bench-method}")
json=$(realpath -m "${JSON:-benchmarks/method-fer2013.json}")
rounds=${ROUNDS:-2} epochs=${EPOCHS:-12} steps=${STEPS:-45} width=${WIDTH:-32} threads=${THREADS:-2}
variants=${VARIANTS:-a-weak-1x a-strong-1x a-weak-2x a-strong-2x c-full f-ceiling b-offline d-no-debias e-no-feedback}
seeds=${SEEDS:-7}

bash scripts/bootstrap.sh
# The commit the binaries are built from (the tree may move on while the variants run).
commit=${COMMIT:-$(git describe --always --dirty --abbrev=7)}
if [ -n "${BIN:-}" ]; then
  bin=$(realpath "$BIN")
else
  cargo build --release -p feral-cli -p feral-coordinator -p feral-worker
  bin=target/release
fi
mkdir -p "$out/logs" "$(dirname "$json")"
prepare() {  # dir labeled-fraction
  [ -f "$1/manifest.json" ] || "$bin/feral" prepare fer2013 --csv "$csv" --out "$1" --labeled-fraction "$2" --seed 7 --test-fraction 0.5 >/dev/null
}
prepare "$out/data" 0.1
prepare "$out/data-all-labels" 1.0

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
"$bin/feral-coordinator" --listen 127.0.0.1:$port --store memory --artifact-root "$out/artifacts" >"$out/logs/coordinator.log" 2>&1 &
pids=($!)
"$bin/feral-worker" --coordinator "$url" --id bench-worker --devices cpu --allowed-roots "$out" >"$out/logs/worker.log" 2>&1 &
pids+=($!)
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for _ in $(seq 100); do "$bin/feral" --coordinator "$url" workers 2>/dev/null | grep -q bench-worker && break; sleep 0.2; done

spec() {  # name seed dataset rounds epochs [extra lines]
  printf 'version = 1\nname = "%s"\ndataset = "%s"\n\n[model]\nwidth = %s\n%s\n[train]\nepochs = %s\nbatch_size = 64\nsteps_per_epoch = %s\nthreads = %s\nprecision = "bf16"\nseed = %s\n%s%s\n[semi_supervised]\nrounds = %s\npatience = 0\n%s%s' \
    "$1" "$3" "$width" "${MODEL:-}" "$5" "$steps" "$threads" "$2" "${TRAIN:-}" "${7:-}" "$4" "${6:-}" "${SEMI:-}"
}
budget=$((epochs * (rounds + 1)))
strong=$'[train.strong]\nlabelled = true\n'
results=()
for seed in $seeds; do
  for variant in $variants; do
    name=$variant-s$seed
    case $variant in
      a-weak-1x)     kind=supervised; spec "$name" "$seed" "$out/data" 0 "$budget" ;;
      a-weak-2x)     kind=supervised; spec "$name" "$seed" "$out/data" 0 $((2 * budget)) ;;
      a-strong-1x)   kind=supervised; spec "$name" "$seed" "$out/data" 0 "$budget" "" "$strong" ;;
      a-strong-2x)   kind=supervised; spec "$name" "$seed" "$out/data" 0 $((2 * budget)) "" "$strong" ;;
      b-offline)     kind=ablation;   spec "$name" "$seed" "$out/data" "$rounds" "$epochs" $'online = false\n' ;;
      c-full)        kind=method;     spec "$name" "$seed" "$out/data" "$rounds" "$epochs" ;;
      c-online-teacher) kind=method;  spec "$name" "$seed" "$out/data" "$rounds" "$epochs" $'online_teacher = true\n' ;;
      c-mu4)         kind=method;     spec "$name" "$seed" "$out/data" "$rounds" "$epochs" $'mu = 4\n' ;;
      c-strong-labelled) kind=method; spec "$name" "$seed" "$out/data" "$rounds" "$epochs" "" "$strong" ;;
      c-lambda-u2)   kind=method;     spec "$name" "$seed" "$out/data" "$rounds" "$epochs" $'lambda_u = 2\n' ;;
      d-no-debias)   kind=ablation;   spec "$name" "$seed" "$out/data" "$rounds" "$epochs" $'debias = false\n' ;;
      e-no-feedback) kind=ablation;   spec "$name" "$seed" "$out/data" "$rounds" "$epochs" $'feedback = false\n' ;;
      f-ceiling)     kind=ceiling;    spec "$name" "$seed" "$out/data-all-labels" 0 "$budget" ;;
      f-ceiling-2x)  kind=ceiling;    spec "$name" "$seed" "$out/data-all-labels" 0 $((2 * budget)) ;;
      *) echo "unknown variant $variant" >&2; exit 2 ;;
    esac >"$out/$name.toml"
    started=$(date +%s)
    job=$("$bin/feral" --coordinator "$url" submit "$out/$name.toml" | awk '{print $3}')
    "$bin/feral" --coordinator "$url" watch "$job" >"$out/$name.watch.txt" || true
    "$bin/feral" --coordinator "$url" status "$job" >"$out/$name.txt"
    seconds=$(( $(date +%s) - started ))
    echo "== $name ($kind): $(head -1 "$out/$name.txt"), $seconds s"
    results+=("$name $kind $seed $seconds $out/artifacts/$job")
  done
done

# One JSON document: every variant's chosen round (best val macro-F1) with its test numbers.
python3 - "$json" "$commit" "${results[@]}" <<'EOF'
import json, pathlib, sys
path, commit, rows = sys.argv[1], sys.argv[2], sys.argv[3:]
variants = []
for row in rows:
    name, kind, seed, seconds, artifacts = row.split(" ", 4)
    # Each round's model is in the directory of the attempt that finished it (the newest).
    rounds = sorted((d for d in pathlib.Path(artifacts).glob("r*") if d.name[1:].isdigit()), key=lambda d: int(d.name[1:]))
    cards = [max(r.glob("a*/model.json"), key=lambda p: p.stat().st_mtime, default=None) for r in rounds]
    cards = [json.loads(p.read_text()) for p in cards if p is not None]
    if not cards:
        print(f"{name}: no round produced a model", file=sys.stderr)
        continue
    best = max(range(len(cards)), key=lambda i: (cards[i]["validation"]["macro_f1"], -i))
    card = cards[best]
    classes = card["classes"]
    test = card.get("test") or {}
    variants.append({
        "name": name.rsplit("-s", 1)[0], "kind": kind, "seed": int(seed),
        "best_round": best,
        "test_macro_f1": test.get("macro_f1"), "test_accuracy": test.get("accuracy"),
        "val_macro_f1": card["validation"]["macro_f1"],
        "per_class_f1": dict(zip(classes, test.get("per_class_f1", []))),
        "online_mask": [{"round": c["round"], "rate": c["online"]["mask_rate"], "precision": c["online"]["mask_precision"]}
                        for c in cards if c.get("online")],
        "seconds": int(seconds),
    })
# Runs of other variants or seeds already in the file stay (each row names its commit).
for v in variants:
    v["commit"] = commit
done = {(v["name"], v["seed"]) for v in variants}
old = json.loads(pathlib.Path(path).read_text()) if pathlib.Path(path).exists() else {"variants": []}
kept = [v for v in old["variants"] if (v["name"], v["seed"]) not in done]
pathlib.Path(path).write_text(json.dumps({"commit": commit, "variants": kept + variants}, indent=2) + "\n")
print(f"| variant | seed | test macro-F1 | test accuracy | disgust F1 | fear F1 | val macro-F1 | best round | online mask (rate / precision) | time |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for v in variants:
    f = lambda x: "-" if x is None else f"{x:.3f}"
    mask = ", ".join(f"r{m['round']} {m['rate']:.2f} / {f(m['precision'])}" for m in v["online_mask"]) or "-"
    print(f"| {v['name']} | {v['seed']} | {f(v['test_macro_f1'])} | {f(v['test_accuracy'])} | {f(v['per_class_f1'].get('disgust'))} "
          f"| {f(v['per_class_f1'].get('fear'))} | {f(v['val_macro_f1'])} | {v['best_round']} | {mask} | {v['seconds']} s |")
print(f"wrote {path}")
EOF
