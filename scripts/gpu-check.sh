#!/usr/bin/env bash
# The GPU check (issue 13), for a machine with a GPU and PyTorch 2.11 but no Rust: the
# binaries are built elsewhere (`cargo build --release -p feral-cli -p feral-coordinator
# -p feral-worker`) and carried: with debug line tables they are too large to carry, so
#   mkdir -p gpu-bin && for b in feral feral-coordinator feral-worker feral-bench-train \
#     feral-bench-allreduce; do strip -o gpu-bin/$b target/release/$b; done
# and run with BIN=gpu-bin. libtorch comes from the machine's own PyTorch. In under five
# minutes it prints:
#   1. ResNet-18 training images/s on 112×112×3 faces, fp32 and bf16: Feral (tch) beside
#      PyTorch eager and torch.compile, same GPU, batch and data;
#   2. a one-rank NCCL all-reduce through Feral's `Nccl`;
#   3. the demo on --devices cuda:0.
# Usage: scripts/gpu-check.sh            (DEVICE=cuda:0 BATCH=128 STEPS=30 PYTHON=python3)
# DEVICE=cpu runs the same plumbing on a CPU (small, slow; to test this script).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DEVICE=${DEVICE:-cuda:0}
BATCH=${BATCH:-128}
STEPS=${STEPS:-30}
WARMUP=${WARMUP:-10}
REPEATS=${REPEATS:-3}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
bin=${BIN:-target/release}
out=$(realpath -m target/gpu-check)
mkdir -p "$out"
say() { printf '\n== %s\n' "$*"; }

# libtorch (and the NCCL and CUDA libraries of PyTorch's wheels) from this machine's PyTorch.
torch_lib=$("$PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') || { echo "no PyTorch for $PYTHON" >&2; exit 1; }
nvidia_libs=$("$PYTHON" - <<'EOF'
import glob, os, site
dirs = set()
for root in site.getsitepackages() + [site.getusersitepackages()]:
    dirs.update(os.path.dirname(p) for p in glob.glob(os.path.join(root, "nvidia", "*", "lib", "*.so*")))
print(":".join(sorted(dirs)))
EOF
)
nccl_dir=$(tr ':' '\n' <<<"$nvidia_libs" | grep '/nccl/lib' | head -n1)
if [ -n "$nccl_dir" ] && [ ! -e "$nccl_dir/libnccl.so" ]; then
  # cudarc loads libnccl.so; the wheel ships libnccl.so.2.
  mkdir -p "$out/lib" && ln -sf "$nccl_dir/libnccl.so.2" "$out/lib/libnccl.so"
fi
export LD_LIBRARY_PATH=$out/lib:$torch_lib${nvidia_libs:+:$nvidia_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
for tool in feral feral-coordinator feral-worker feral-bench-train feral-bench-allreduce; do
  [ -x "$bin/$tool" ] || { echo "missing $bin/$tool: build it here or carry it (BIN=)" >&2; exit 1; }
done
status=0

side=112
[ "$DEVICE" = cpu ] && side=${SIDE:-32}
say "1. ResNet-18 training, ${side}x${side}x3, batch $BATCH, $DEVICE: images/s (median of $REPEATS runs of $STEPS steps)"
"$bin/feral-bench-train" --write-data "$out/faces.safetensors" --samples $((BATCH * 4)) --size "$side" --channels 3 || exit 1
common=(--data "$out/faces.safetensors" --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --repeats "$REPEATS" --csv)
printf '%-14s %-6s %12s\n' implementation precision images/s | tee "$out/train.txt"
for precision in fp32 bf16; do
  for side_of in feral torch torch-compile; do
    case $side_of in
      feral) row=$(timeout 300 "$bin/feral-bench-train" --mode step --device "$DEVICE" --arch resnet18 --precision "$precision" "${common[@]}" 2>"$out/$side_of-$precision.err" | tail -n1) ;;
      torch) row=$(timeout 300 "$PYTHON" scripts/bench_train_torch.py --device "$DEVICE" --arch resnet18 --precision "$precision" "${common[@]}" 2>"$out/$side_of-$precision.err" | tail -n1) ;;
      torch-compile) row=$(timeout 300 "$PYTHON" scripts/bench_train_torch.py --compile --device "$DEVICE" --arch resnet18 --precision "$precision" "${common[@]}" 2>"$out/$side_of-$precision.err" | tail -n1) ;;
    esac
    rate=$(cut -d, -f9 <<<"$row")
    if [ -z "$rate" ]; then rate="failed (see $out/$side_of-$precision.err)"; status=1; fi
    printf '%-14s %-6s %12s\n' "$side_of" "$precision" "$rate" | tee -a "$out/train.txt"
  done
done

say "2. NCCL all-reduce through Feral's Nccl, one rank on $DEVICE"
if [ "$DEVICE" = cpu ]; then
  echo "skipped: no GPU"
else
  timeout 120 "$bin/feral-bench-allreduce" --nccl "$DEVICE" --sizes-mb 1,16,256 --iters 20 || status=1
fi

say "3. the demo on --devices $DEVICE"
timeout 240 "$bin/feral" demo --dir "$out/demo" --workers 1 --devices "$DEVICE" --epochs 3 --rounds 1 --samples 3000 >"$out/demo.log" 2>&1
demo=$?
grep -E '^demo finished|online pseudo-labels|images/s' "$out/demo.log" | tail -n 4
[ $demo -eq 0 ] || { echo "the demo failed ($demo): $out/demo.log"; tail -n 20 "$out/demo.log"; status=1; }
say "done (status $status); outputs in $out"
exit $status
