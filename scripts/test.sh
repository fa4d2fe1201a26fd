#!/usr/bin/env bash
# Runs the whole test suite: bootstraps (apt packages, torch venv, cargo config) if needed,
# then `cargo test` over the workspace in the one profile the project uses (release).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
cargo test --release --workspace "$@"
