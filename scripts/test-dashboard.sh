#!/usr/bin/env bash
# The dashboard in a real browser (issues 12 and 35): runs a small demo with --keep
# (coordinator, one CPU worker, a teacher and one pseudo-label round on generated faces) and,
# while it trains, drives its dashboard in Debian's Chromium with playwright-core
# (tests/browser/dashboard.test.mjs): the round and epoch advance on the job's page without
# a reload or polling, and the curves, the confusion matrix and the pseudo-label histogram
# are drawn; the job list is live (a second, shorter job submitted meanwhile appears and
# finishes on it without a reload); the compare view overlays both jobs' curves and lists
# the spec fields in which they differ. Screenshots and the demo's output:
# target/dashboard/. Part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
cargo build --release -p feral-cli -p feral-coordinator -p feral-worker
# Node.js from the venv when bootstrap put it there (no Node.js 20 or newer on the system).
[ -x .venv/bin/node ] && export PATH="$PWD/.venv/bin:$PATH"
out=$(realpath -m target/dashboard)
rm -rf "$out" && mkdir -p "$out"
target/release/feral demo --keep --dir "$out/run" --workers 1 --samples 1500 --epochs 4 --rounds 1 >"$out/demo.log" 2>&1 &
demo=$!
trap 'kill -TERM "$demo" 2>/dev/null || true' EXIT
url=
for _ in $(seq 1200); do
  url=$(sed -n 's/^dashboard: //p' "$out/demo.log" | head -n1)
  [ -n "$url" ] && break
  kill -0 "$demo" 2>/dev/null || { cat "$out/demo.log"; echo "the demo ended before its job started" >&2; exit 1; }
  sleep 0.5
done
[ -n "$url" ] || { cat "$out/demo.log"; echo "the demo printed no dashboard address within 10 minutes" >&2; exit 1; }
echo "dashboard test on $url"
# The second job: the demo's spec with two epochs and no pseudo-label round; the browser test
# submits it (with `feral submit`) once the job list is open.
port=$(sed -n 's/^starting coordinator on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$out/demo.log" | head -n1)
sed -e 's/^name = .*/name = "demo-short"/' -e 's/^epochs = .*/epochs = 2/' -e 's/^rounds = .*/rounds = 0/' "$out/run/job.toml" >"$out/short.toml"
FERAL_DASHBOARD_URL=$url FERAL_SCREENSHOTS=$out FERAL_BIN=$PWD/target/release/feral \
  FERAL_COORDINATOR=http://127.0.0.1:$port FERAL_SECOND_SPEC=$out/short.toml \
  node --test tests/browser/dashboard.test.mjs
for _ in $(seq 120); do grep -q '^--keep:' "$out/demo.log" && break; sleep 0.5; done
grep -q '^demo finished' "$out/demo.log" || { cat "$out/demo.log"; echo "the demo job did not succeed" >&2; exit 1; }
kill -TERM "$demo"
wait "$demo" || { cat "$out/demo.log"; echo "the demo did not end cleanly on SIGTERM" >&2; exit 1; }
echo "screenshots: $out/*.png"
