#!/usr/bin/env bash
# Stop the test cluster that .ci/slurm_up.sh started: cancel its jobs, then stop each daemon
# listed in its registry by PID (only if that PID still runs the daemon of that name).
# Daemons it did not start are left alone. DEGFLOW_SLURM_PURGE=1 also deletes the state folder.
set -uo pipefail

ROOT=${DEGFLOW_SLURM_ROOT:-/tmp/degflow-slurm}
REGISTRY=$ROOT/daemons
say() { echo "[slurm_down] $*" >&2; }

pidfile_of() { awk -v name="$1" '$1 == name {file = $2} END {print file}' "$REGISTRY" 2>/dev/null; }
alive() { # alive PID NAME
  [[ $1 =~ ^[0-9]+$ ]] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] &&
    [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

if [ -n "$(pidfile_of slurmctld)" ] && scontrol ping >/dev/null 2>&1; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | xargs)
  if [ -n "$jobs" ]; then
    say "cancelling jobs $jobs"
    scancel $jobs 2>/dev/null
    for _ in $(seq 75); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi

for name in slurmd slurmctld slurmdbd mariadbd munged; do
  pidfile=$(pidfile_of "$name")
  [ -n "$pidfile" ] || continue
  pid=$(cat "$pidfile" 2>/dev/null)
  alive "$pid" "$name" || continue
  say "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 150); do alive "$pid" "$name" || break; sleep 0.2; done
  if alive "$pid" "$name"; then say "$name did not stop within 30 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null; fi
done
rm -f "$REGISTRY"
if [ "${DEGFLOW_SLURM_PURGE:-0}" = 1 ]; then rm -rf "$ROOT"; fi
say "stopped"
