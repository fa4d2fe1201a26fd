#!/usr/bin/env bash
# The measurement reference for self-supervised pretraining: lightly's BYOL and MoCo v2
# pretrain Feral's compact CNN on every training face of the dataset that `feral prepare
# fer2013` writes for scripts/bench-method.sh (labelled split + pool, labels unused), with a
# k-NN probe on val after each epoch; then Feral's supervised recipe fine-tunes it on the 10%
# labelled split, and the same fine-tuning from random initialisation (same seed, same
# batches) is the control (scripts/ssl_reference.py says what is done and where it differs
# from Feral). The question: does the pretrained start beat the random one on test macro-F1
# by more than the spread between seeds? One row per objective, seed and start ("pretrained"
# or "random"; a random row's k-NN is the probe of the untrained backbone). The random start
# does not depend on the objective: its rows for a seed should agree across objectives.
# lightly and what it imports go into a venv of their own (SSL_VENV, default target/ssl-venv),
# pinned. Pretrained backbones are kept under OUT and reused when a run is repeated.
# Usage: scripts/bench-ssl.sh [FER2013_CSV(.gz)]
#   OBJECTIVES="byol moco" SEEDS="7 8" EPOCHS=20 THREADS=1 FINETUNE_STEPS=3240 BATCH=128
#   STARTS="pretrained random": the starts fine-tuned (the random one does not depend on the
#     pretraining: a longer pretraining of a seed already measured may leave it out)
#   OUT=target/bench-ssl JSON=benchmarks/pretrain-fer2013.json
#   DATA=dir: a prepared dataset (default: target/bench-usb/data if it has a manifest,
#     else OUT/data, prepared from the CSV)
#   BIN=dir: the `feral` binary that prepares the dataset (default: built here)
#   LIMIT=N: pretrain on the first N pool images only (smoke tests only: its rows measure nothing)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
csv=$(realpath -m "${1:-../shared/data/fer2013/fer2013_train_publictest.csv.gz}")
out=$(realpath -m "${OUT:-target/bench-ssl}")
json=$(realpath -m "${JSON:-benchmarks/pretrain-fer2013.json}")
venv=$(realpath -m "${SSL_VENV:-target/ssl-venv}")
objectives=${OBJECTIVES:-byol moco} seeds=${SEEDS:-7 8} epochs=${EPOCHS:-20} threads=${THREADS:-1}
finetune_steps=${FINETUNE_STEPS:-3240} batch=${BATCH:-128} limit=${LIMIT:-} starts=${STARTS:-pretrained random}

# --- lightly's venv -----------------------------------------------------------------------
if ! "$venv/bin/python" -c 'import importlib.metadata as m; assert m.version("lightly") == "1.6.0"' 2>/dev/null; then
  echo "[bench-ssl] installing lightly 1.6.0 into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q uv
  # torch as the main venv pins it, and its torchvision; lightly with its own requirements
  # (hydra-core, pytorch-lightning, tqdm), pinned to the versions that resolved.
  UV_NATIVE_TLS=1 "$venv/bin/uv" pip install -q --python "$venv/bin/python" torch==2.11.0 torchvision==0.26.0 \
    numpy==2.4.6 safetensors==0.8.0 pillow==13.0.0 lightly==1.6.0 hydra-core==1.3.8 pytorch-lightning==2.6.6 \
    tqdm==4.70.1
fi

# --- the dataset (the same one scripts/bench-method.sh and bench-usb.sh prepare) ------------
if [ -n "${DATA:-}" ]; then
  data=$(realpath -m "$DATA")
elif [ -f target/bench-usb/data/manifest.json ]; then
  data=$(realpath target/bench-usb/data)
else
  data=$out/data
fi
mkdir -p "$out/logs" "$(dirname "$json")"
if [ ! -f "$data/manifest.json" ]; then
  if [ -n "${BIN:-}" ]; then
    feral=$(realpath "$BIN")/feral
  else
    cargo build --release -p feral-cli
    feral=target/release/feral
  fi
  "$feral" prepare fer2013 --csv "$csv" --out "$data" --labeled-fraction 0.1 --seed 7 --test-fraction 0.5 >/dev/null
fi

results=()
for seed in $seeds; do
  for objective in $objectives; do
    name=$objective-e$epochs-s$seed${limit:+-l$limit}
    "$venv/bin/python" scripts/ssl_reference.py --data "$data" --objective "$objective" --epochs "$epochs" \
      --seed "$seed" --threads "$threads" --batch-size "$batch" --finetune-steps "$finetune_steps" --starts $starts \
      ${limit:+--limit "$limit"} --backbone "$out/backbone-$name.pt" --out "$out/$name.json" \
      >"$out/logs/$name.log" 2>&1
    echo "== $name: $(tail -1 "$out/logs/$name.log")"
    results+=("$out/$name.json")
  done
done

# One row per objective, seed and start; rows of other runs stay.
python3 - "$json" "${results[@]}" <<'EOF'
import json, pathlib, statistics, sys
path, files = pathlib.Path(sys.argv[1]), sys.argv[2:]
rows = []
for f in files:
    r = json.loads(pathlib.Path(f).read_text())
    for start in ("pretrained", "random"):
        if start not in r:
            continue
        m = r[start]
        knn = r["knn"][-1] if start == "pretrained" else r["knn"][0]
        rows.append({
            "name": f"ssl-{r['objective']}", "kind": start, "objective": r["objective"], "seed": r["seed"],
            "epochs": r["epochs"], "batch_size": r["batch_size"], "limit": r["limit"],
            "test_macro_f1": m["test"]["macro_f1"], "test_accuracy": m["test"]["accuracy"],
            "val_macro_f1": m["val"]["macro_f1"], "per_class_f1": m["test"]["per_class_f1"],
            "knn_accuracy": knn["accuracy"], "knn_macro_f1": knn["macro_f1"],
            "seconds": round(m["seconds"]), "finetune_steps": r["finetune_steps"],
            "pretrain_seconds": round(r["pretrain_seconds"]) if start == "pretrained" else 0,
            "pretrain_images_per_second": r["images_per_second"], "threads": r["threads"],
            "commit": f"lightly {r['lightly']}, torch {r['torch']}",
        })
key = lambda v: (v["name"], v["kind"], v["seed"], v["epochs"], v["finetune_steps"], v.get("limit"))
done = {key(v) for v in rows}
old = json.loads(path.read_text()) if path.exists() else {"variants": []}
kept = [v for v in old["variants"] if key(v) not in done]
path.write_text(json.dumps({"variants": kept + rows}, indent=2) + "\n")
f = lambda x: f"{x:.3f}"
print("| objective | start | seed | epochs | test macro-F1 | test accuracy | disgust F1 | fear F1 | sad F1 | val macro-F1 | k-NN accuracy | fine-tune time | pretrain time |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for v in rows:
    c = v["per_class_f1"]
    print(f"| {v['objective']} | {v['kind']} | {v['seed']} | {v['epochs']} | {f(v['test_macro_f1'])} | {f(v['test_accuracy'])} "
          f"| {f(c['disgust'])} | {f(c['fear'])} | {f(c['sad'])} | {f(v['val_macro_f1'])} | {f(v['knn_accuracy'])} "
          f"| {v['seconds']} s | {v['pretrain_seconds']} s |")
for objective in dict.fromkeys(v["objective"] for v in rows):
    by = {k: {v["seed"]: v["test_macro_f1"] for v in rows if v["objective"] == objective and v["kind"] == k}
          for k in ("pretrained", "random")}
    paired = sorted(by["pretrained"].keys() & by["random"].keys())
    if paired:
        gain = statistics.mean(by["pretrained"][s] - by["random"][s] for s in paired)
        spread = max(max(d.values()) - min(d.values()) for d in by.values() if d)
        print(f"{objective}: pretrained - random test macro-F1 {gain:+.3f} (mean over seeds {paired}); "
              f"seed spread (max - min within a start) {spread:.3f}")
print(f"wrote {path}")
EOF
