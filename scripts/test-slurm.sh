#!/usr/bin/env bash
# deploy/slurm/feral.sbatch under a real one-host Slurm (issue 13): installs Debian's
# slurmctld, slurmd and munge if missing, starts munged (as user munge) and both Slurm
# daemons on loopback with a generated slurm.conf (proctrack/linuxproc, task/none,
# select/cons_tres), then
#   1. sbatch's the user's script, unchanged, with two workers (two tasks on this node) on
#      a job that trains a two-rank gang with a pseudo-label round: it must succeed;
#   2. sbatch's it again on a longer job and `scancel`s the Slurm job once Feral trains:
#      every Feral process of that job must be gone.
# Stops everything it started. Needs root (munged, slurmd). Logs: target/slurm/.
# Usage: scripts/test-slurm.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
say() { printf '[test-slurm] %s\n' "$*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

# slurmd 22.05 initialises its cgroup plugin whatever the proctrack and task plugins are; a
# chroot without a cgroup filesystem (the fresh-machine tool's) cannot run it at all.
if ! mountpoint -q /sys/fs/cgroup 2>/dev/null; then
  say "SKIPPED: no cgroup filesystem at /sys/fs/cgroup, which slurmd needs (a chroot or container without one)"
  exit 0
fi
bash scripts/bootstrap.sh
missing=()
for tool in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
cargo build --release -p feral-cli -p feral-coordinator -p feral-worker
bin=$repo/target/release

dir=$repo/target/slurm
rm -rf "$dir" && mkdir -p "$dir"/{etc,state,spool,data,artifacts,logs,jobs}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- munge (Slurm's authentication) -------------------------------------------------------
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
chown munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
started_munge=
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  started_munge=yes
fi
for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
munge -n | unmunge >/dev/null || fail "munged does not answer"

# --- slurm.conf: this host as the one node, daemons on free loopback ports -----------------
host=$(hostname -s)
node=$(slurmd -C | head -n1)   # NodeName=HOST CPUs=… RealMemory=… as slurmd finds them
export SLURM_CONF=$dir/etc/slurm.conf
cat >"$SLURM_CONF" <<EOF
ClusterName=feraltest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
KillWait=10
MinJobAge=600
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

# A step that fails shows the daemons' logs.
trap 'say "a step failed (line $LINENO); Slurm logs follow"; tail -n 30 "$dir"/slurm*.log >&2 2>/dev/null' ERR
cleanup() {
  set +e
  scontrol shutdown >/dev/null 2>&1
  for pidfile in "$dir/slurmctld.pid" "$dir/slurmd.pid"; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
  done
  [ -n "$started_munge" ] && [ -f /run/munge/munged.pid ] && kill "$(cat /run/munge/munged.pid)" 2>/dev/null
  pkill -f -- "--artifact-root $dir/artifacts" 2>/dev/null
  pkill -f -- "--id slurm-" 2>/dev/null
  true
}
trap cleanup EXIT
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 150); do sinfo -h -N -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated)' && break; sleep 0.2; done
sinfo -h -N -o '%N %T' | grep -q idle || { cat "$dir"/slurm*.log >&2; fail "the Slurm node did not come up idle"; }
say "Slurm up: $(sinfo -h -N -o '%N %T %c CPUs')"

# --- the data and the two job specs ----------------------------------------------------------
"$bin/feral" prepare synthetic --out "$dir/data/faces" --samples 1200 --labeled-fraction 0.1 >/dev/null
spec() {  # name epochs
  printf 'version = 1\nname = "%s"\ndataset = "%s"\n\n[model]\nwidth = 16\n\n[train]\nepochs = %s\nbatch_size = 32\nthreads = 1\n\n[resources]\nworkers = 2\n\n[semi_supervised]\nrounds = 1\npatience = 0\n' \
    "$1" "$dir/data/faces" "$2" >"$dir/jobs/$1.toml"
}
spec slurm-gang 2
spec slurm-cancelled 200

submit() {  # spec: prints the Slurm job id
  FERAL_HOME=$repo FERAL_DATA=$dir/data FERAL_ARTIFACTS=$dir/artifacts FERAL_LOGS=$dir/logs/$1 \
  FERAL_PORT=$(free_port) FERAL_COORDINATOR_HOST=127.0.0.1 FERAL_ADVERTISE_HOST=127.0.0.1 \
    sbatch --parsable --export=ALL --chdir="$dir/logs" --output="$dir/logs/$1.out" \
      --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --time=00:20:00 \
      deploy/slurm/feral.sbatch "$dir/jobs/$1.toml"
}
job_state() { scontrol show job "$1" -o 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
wait_done() {  # slurm job id, seconds
  local state
  for _ in $(seq $((${2} * 2))); do
    state=$(job_state "$1")
    case $state in PENDING|RUNNING|CONFIGURING|COMPLETING|SUSPENDED|'') sleep 0.5 ;; *) echo "$state"; return ;; esac
  done
  echo TIMEOUT
}

# 1. A two-worker gang with a pseudo-label round, to success.
started=$(date +%s)
id=$(submit slurm-gang)
say "Slurm job $id: two workers, a two-rank gang, one pseudo-label round"
state=$(wait_done "$id" 900)
cat "$dir/logs/slurm-gang.out" >&2 || true
[ "$state" = COMPLETED ] || fail "Slurm job $id ended $state (logs: $dir/logs)"
grep -q 'job .* succeeded' "$dir/logs/slurm-gang.out" || fail "the Feral job did not report success"
[ "$(ls "$dir"/logs/slurm-gang/worker-*.log | wc -l)" = 2 ] || fail "expected two worker logs"
say "1. passed: the sbatch script trained the job to success in $(( $(date +%s) - started )) s"

# 2. scancel stops every Feral process of the job.
id=$(submit slurm-cancelled)
say "Slurm job $id: cancelled once it trains"
for _ in $(seq 600); do
  grep -q 'epoch' "$dir/logs/slurm-cancelled.out" 2>/dev/null && break
  # One reading of the state (it moves on between readings), and the passing states as
  # wait_done knows them: CONFIGURING, or none while scontrol has not caught up, is not an end.
  state=$(job_state "$id")
  case $state in PENDING|RUNNING|CONFIGURING|COMPLETING|SUSPENDED|'') ;; *) fail "Slurm job $id ended before training: $state" ;; esac
  sleep 0.5
done
grep -q 'epoch' "$dir/logs/slurm-cancelled.out" || fail "job $id never trained"
pgrep -f -- "--id slurm-$id-" >/dev/null || fail "no worker process of job $id found while it trains"
scancel "$id"
cancelled=$(date +%s)
state=$(wait_done "$id" 120)
[ "$state" = CANCELLED ] || fail "Slurm job $id ended $state after scancel"
for _ in $(seq 120); do
  pgrep -f -- "--id slurm-$id-" >/dev/null || pgrep -f -- "--artifact-root $dir/artifacts" >/dev/null || break
  sleep 0.5
done
if pgrep -af -- "--id slurm-$id-" || pgrep -af -- "--artifact-root $dir/artifacts"; then
  fail "Feral processes of job $id outlived scancel"
fi
say "2. passed: scancel stopped the workers and the coordinator within $(( $(date +%s) - cancelled )) s"
say "passed"
