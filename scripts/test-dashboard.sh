#!/usr/bin/env bash
# The dashboard in a real browser (issue 12): runs a small demo (coordinator, one CPU worker,
# a teacher and one pseudo-label round on generated faces) and, while it trains, drives its
# dashboard in Debian's Chromium with playwright-core (tests/browser/dashboard.test.mjs):
# the round and epoch advance on the page without a reload or polling, and the curves, the
# confusion matrix and the pseudo-label histogram are drawn. Screenshots and the demo's
# output: target/dashboard/. Part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
cargo build --release -p feral-cli -p feral-coordinator -p feral-worker
# Node.js from the venv when bootstrap put it there (no Node.js 20 or newer on the system).
[ -x .venv/bin/node ] && export PATH="$PWD/.venv/bin:$PATH"
out=$(realpath -m target/dashboard)
rm -rf "$out" && mkdir -p "$out"
target/release/feral demo --dir "$out/run" --workers 1 --samples 1500 --epochs 4 --rounds 1 >"$out/demo.log" 2>&1 &
demo=$!
trap 'kill "$demo" 2>/dev/null || true' EXIT
url=
for _ in $(seq 1200); do
  url=$(sed -n 's/^dashboard: //p' "$out/demo.log" | head -n1)
  [ -n "$url" ] && break
  kill -0 "$demo" 2>/dev/null || { cat "$out/demo.log"; echo "the demo ended before its job started" >&2; exit 1; }
  sleep 0.5
done
[ -n "$url" ] || { cat "$out/demo.log"; echo "the demo printed no dashboard address within 10 minutes" >&2; exit 1; }
echo "dashboard test on $url"
FERAL_DASHBOARD_URL=$url FERAL_SCREENSHOTS=$out node --test tests/browser/dashboard.test.mjs
wait "$demo" || { cat "$out/demo.log"; echo "the demo job did not succeed" >&2; exit 1; }
echo "screenshots: $out/*.png"
