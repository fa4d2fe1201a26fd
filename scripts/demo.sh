#!/usr/bin/env bash
# The demo: bootstraps if needed, builds, then runs a local coordinator, two workers and a
# training job on generated data (`feral demo --help` lists its options).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
cargo build --release -p feral-cli -p feral-coordinator -p feral-worker
exec target/release/feral demo "$@"
