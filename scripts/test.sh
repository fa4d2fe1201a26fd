#!/usr/bin/env bash
# Runs the whole test suite: bootstraps (apt packages, torch venv, cargo config) if needed,
# checks formatting (`cargo fmt --check`, rustfmt.toml) and lints (`cargo clippy` on every
# target, warnings as errors), then `cargo test` over the workspace in the one profile the project uses (release), then
# the chaos run (scripts/chaos.sh: real processes on loopback, about three minutes), the
# Kubernetes manifests' offline check (scripts/check-deploy.sh), the dashboard in Chromium
# (scripts/test-dashboard.sh, about two minutes) and the sbatch script under a real one-host
# Slurm (scripts/test-slurm.sh, about a minute), unless arguments for cargo test are given.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
cargo fmt --all --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace "$@"
if [ $# -eq 0 ]; then
  bash scripts/chaos.sh
  bash scripts/check-deploy.sh
  bash scripts/test-dashboard.sh
  bash scripts/test-slurm.sh
fi
