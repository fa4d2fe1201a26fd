#!/usr/bin/env bash
# The chaos run (issues 11 and 31), loopback only and bounded in time: one etcd, two
# coordinators and three workers train a two-round job with a two-rank gang, first
# undisturbed, then while a training rank is SIGKILLed, another SIGSTOPped past its lease,
# the leading coordinator SIGSTOPped for four leader leases, the artifact disk (a tmpfs,
# so this needs root) filled until an attempt fails and then freed, the new leader
# SIGKILLed and etcd killed and started again. Prints the time from each fault to its
# detection and recovery, and fails unless the disturbed run ends with the undisturbed
# run's metrics and epoch table. Logs of every process: target/chaos/{undisturbed,disturbed}/logs.
# Usage: scripts/chaos.sh [--seconds 900] [--dir target/chaos]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
cargo build --release -p feral-coordinator -p feral-worker -p feral-tests --bin feral-coordinator --bin feral-worker --bin feral-chaos
exec target/release/feral-chaos "$@"
