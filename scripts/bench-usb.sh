#!/usr/bin/env bash
# The race against USB (microsoft/Semi-supervised-learning): USB's own FixMatch, FreeMatch,
# SoftMatch and supervised-only baseline train Feral's compact CNN on the dataset that
# `feral prepare fer2013` writes for scripts/bench-method.sh (10% of the training rows
# labelled, stratified, seed 7; PublicTest halved into val and test), with Feral's batch,
# mu, optimiser, schedule, EMA decay, views and bf16 precision (scripts/usb_reference.py says
# where USB allows no match). Feral's own rows come from scripts/bench-method.sh with
# EPOCHS=24 (3,240 steps), run beside this one with THREADS=1 for timings.
# USB and what it imports go into a venv of their own (USB_VENV, default target/usb-venv),
# pinned; semilearn is installed without its requirement list, which pulls in trackers and
# audio stacks it does not need here.
# Usage: scripts/bench-usb.sh [FER2013_CSV(.gz)]
#   ALGORITHMS="fixmatch freematch softmatch supervised" SEEDS="7 8" STEPS=3240 THREADS=1
#   OUT=target/bench-usb JSON=benchmarks/method-fer2013-usb.json
#   BIN=dir: the `feral` binary that prepares the dataset (default: built here)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
csv=$(realpath "${1:-../shared/data/fer2013/fer2013_train_publictest.csv.gz}")
out=$(realpath -m "${OUT:-target/bench-usb}")
json=$(realpath -m "${JSON:-benchmarks/method-fer2013-usb.json}")
venv=$(realpath -m "${USB_VENV:-target/usb-venv}")
algorithms=${ALGORITHMS:-fixmatch freematch softmatch supervised}
seeds=${SEEDS:-7 8} steps=${STEPS:-3240} threads=${THREADS:-1}

# --- USB's venv -------------------------------------------------------------------------
if ! "$venv/bin/python" -c 'import importlib.metadata as m; assert m.version("semilearn") == "0.3.2"' 2>/dev/null; then
  echo "[bench-usb] installing semilearn 0.3.2 into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q uv
  uv=("$venv/bin/uv" pip install -q --python "$venv/bin/python")
  # torch as the main venv pins it; torchvision/torchaudio builds of that torch.
  UV_NATIVE_TLS=1 "${uv[@]}" torch==2.11.0 numpy==2.4.6 safetensors==0.8.0
  UV_NATIVE_TLS=1 "${uv[@]}" --no-deps semilearn==0.3.2 torchvision==0.26.0 torchaudio==2.11.0
  # What `import semilearn` imports at load time (its datasets, nets and hooks modules).
  UV_NATIVE_TLS=1 "${uv[@]}" scikit-learn==1.9.1 scikit-image==0.26.0 pillow==13.0.0 tqdm==4.70.1 \
    ruamel.yaml==0.19.1 progress==1.6.1 timm==1.0.31 transformers==5.25.0 tensorboard==2.21.0
fi

# --- the dataset (the same one scripts/bench-method.sh prepares) --------------------------
if [ -n "${BIN:-}" ]; then
  feral=$(realpath "$BIN")/feral
else
  cargo build --release -p feral-cli
  feral=target/release/feral
fi
mkdir -p "$out/logs" "$(dirname "$json")"
[ -f "$out/data/manifest.json" ] || "$feral" prepare fer2013 --csv "$csv" --out "$out/data" \
  --labeled-fraction 0.1 --seed 7 --test-fraction 0.5 >/dev/null

results=()
for seed in $seeds; do
  for algorithm in $algorithms; do
    name=$algorithm-s$seed
    "$venv/bin/python" scripts/usb_reference.py --data "$out/data" --algorithm "$algorithm" --seed "$seed" \
      --steps "$steps" --threads "$threads" --out "$out/$name.json" >"$out/logs/$name.log" 2>&1
    echo "== $name: $(tail -1 "$out/logs/$name.log")"
    results+=("$out/$name.json")
  done
done

# Rows in the schema of benchmarks/method-fer2013*.json, kind "peer"; other rows stay.
python3 - "$json" "${results[@]}" <<'EOF'
import json, pathlib, sys
path, files = pathlib.Path(sys.argv[1]), sys.argv[2:]
rows = []
for f in files:
    r = json.loads(pathlib.Path(f).read_text())
    mask = r.get("mask")
    rows.append({
        "name": f"usb-{r['algorithm']}", "kind": "peer", "seed": r["seed"], "best_round": 0,
        "test_macro_f1": r["test"]["macro_f1"], "test_accuracy": r["test"]["accuracy"],
        "val_macro_f1": r["val"]["macro_f1"], "per_class_f1": r["test"]["per_class_f1"],
        "online_mask": [{"round": 0, "rate": mask["rate"], "precision": mask["precision"],
                         "mean_weight": mask["mean_weight"]}] if mask else [],
        "seconds": round(r["seconds"]), "images_per_second": r["images_per_second"],
        "steps": r["steps"], "threads": r["threads"], "commit": f"semilearn {r['semilearn']}",
    })
done = {(v["name"], v["seed"]) for v in rows}
old = json.loads(path.read_text()) if path.exists() else {"variants": []}
kept = [v for v in old["variants"] if (v["name"], v["seed"]) not in done]
path.write_text(json.dumps({"variants": kept + rows}, indent=2) + "\n")
f = lambda x: "-" if x is None else f"{x:.3f}"
print("| algorithm | seed | test macro-F1 | test accuracy | disgust F1 | fear F1 | sad F1 | val macro-F1 | mask rate / precision | time | images/s |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for v in rows:
    m = v["online_mask"][0] if v["online_mask"] else None
    masked = f"{m['rate']:.2f} / {f(m['precision'])}" if m else "-"
    c = v["per_class_f1"]
    print(f"| {v['name']} | {v['seed']} | {f(v['test_macro_f1'])} | {f(v['test_accuracy'])} | {f(c['disgust'])} | {f(c['fear'])} "
          f"| {f(c['sad'])} | {f(v['val_macro_f1'])} | {masked} | {v['seconds']} s | {v['images_per_second']} |")
print(f"wrote {path}")
EOF
