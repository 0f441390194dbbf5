#!/usr/bin/env bash
# Start a private single-node SLURM cluster on this machine for the `slurm` tests (Debian 12, root).
#
#   bash .ci/slurm_up.sh      # idempotent: installs what is missing, starts what is not running,
#                             # returns once the node accepts jobs (exit 0), else prints logs (exit 1)
#   bash .ci/slurm_down.sh    # stops exactly the daemons this script started
#
# Pieces, all on loopback (127.0.0.1) and with no systemd:
#   munged                  authentication between the SLURM daemons
#   mariadbd + slurmdbd     accounting: submitit polls `sacct` to notice cancelled / killed / timed-out
#                           jobs; without it a killed job's result is awaited forever
#   slurmctld, slurmd       controller and compute daemon for the one node
#
# Settings chosen for tests (each fixes a hang or a long wait seen on this setup):
#   AuthInfo=cred_expire=10          a requeued job restarts after ~11 s, not ~121 s
#   EnforcePartLimits=ALL            a request the node cannot satisfy is refused at sbatch time
#                                    instead of pending for ever
#   KillWait=5                       submitit ignores SIGTERM; cancelled jobs get SIGKILL after 5 s
#   FirstJobId from the clock        job ids never repeat after a state wipe, so an old
#                                    submitit folder keyed by job id cannot hand back stale results
#
# Environment: DEGFLOW_SLURM_ROOT (state, logs, pidfiles; default /tmp/degflow-slurm),
# DEGFLOW_SLURM_CPUS (CPUs the node advertises; default: nproc), DEGFLOW_SLURM_WAIT_S (default 60).
set -euo pipefail

ROOT=${DEGFLOW_SLURM_ROOT:-/tmp/degflow-slurm}
CPUS=${DEGFLOW_SLURM_CPUS:-$(nproc)}
WAIT_S=${DEGFLOW_SLURM_WAIT_S:-60}
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
NODE=$(hostname -s)
DB_PASSWORD=degflow-ci
REGISTRY=$ROOT/daemons          # "name pidfile" of every daemon this script started

say() { echo "[slurm_up] $*" >&2; }
fail() {
  say "FAILED: $*"
  for f in "$ROOT"/log/*.log; do [ -f "$f" ] && { echo "== last lines of $f" >&2; tail -n 15 "$f" >&2; }; done
  exit 1
}
running() { # running PIDFILE NAME: the pidfile names a live process called NAME
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] &&
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}
remember() { grep -qxF "$1 $2" "$REGISTRY" 2>/dev/null || echo "$1 $2" >> "$REGISTRY"; }
until_ok() { # until_ok SECONDS WHAT COMMAND...: poll COMMAND until it succeeds
  local limit=$1 what=$2; shift 2
  local deadline=$(( SECONDS + limit ))
  until "$@" >/dev/null 2>&1; do
    (( SECONDS < deadline )) || fail "no $what after ${limit}s"
    sleep 0.25
  done
}

[ "$(id -u)" -eq 0 ] || fail "needs root (it installs packages and starts daemons)"
mkdir -p "$ROOT"/{state,spool,log} /etc/slurm

install_packages() {
  local missing=() pair
  for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge \
              slurmdbd:slurmdbd mariadbd:mariadb-server; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || fail "missing ${missing[*]} and no apt-get to install them"
  say "installing ${missing[*]}"
  local own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then   # keep package scripts from starting daemons themselves
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && own_policy=1
  fi
  local attempt ok=0
  for attempt in 1 2 3; do
    if DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
       DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
      ok=1; break
    fi
    say "apt-get failed (attempt $attempt of 3)"; sleep 5
  done
  [ $own_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ $ok = 1 ] || fail "could not install ${missing[*]}"
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    install -d -o munge -g munge -m 700 /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
  if ! running /run/munge/munged.pid munged; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged --origin=127.0.0.1   # no DNS lookup of the hostname
    remember munged /run/munge/munged.pid
  fi
  until_ok 10 munge bash -c 'munge -n | unmunge'
}

start_database() {
  install -d -o mysql -g root -m 755 /run/mysqld
  if ! mariadb-admin ping >/dev/null 2>&1; then
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >/dev/null
    say "starting mariadbd (unix socket only)"
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking --socket=/run/mysqld/mysqld.sock \
      --pid-file=/run/mysqld/mysqld.pid --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
      --log-error="$ROOT/log/mariadb.log" </dev/null >/dev/null 2>&1 &
    remember mariadbd /run/mysqld/mysqld.pid
    until_ok 60 mariadb mariadb-admin ping
  fi
  # ALTER as well: CREATE ... IF NOT EXISTS keeps an old password, and slurmdbd then never connects
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
              ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

write_if_changed() { # write_if_changed FILE MODE < content; returns 0 when the file changed
  local tmp; tmp=$(mktemp)
  cat > "$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 1; fi
  install -m "$2" "$tmp" "$1"; rm -f "$tmp"
}

write_config() {
  [ -s "$ROOT/first_job_id" ] || echo $(( $(date +%s) % 1000000 * 100 + 1 )) > "$ROOT/first_job_id"
  local changed=0
  write_if_changed /etc/slurm/slurm.conf 644 <<EOF && changed=1
# written by degflow .ci/slurm_up.sh: a one-node test cluster on loopback
ClusterName=degflow-ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
EnforcePartLimits=ALL
KillWait=5
FirstJobId=$(cat "$ROOT/first_job_id")
SlurmdParameters=config_overrides
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool
SlurmctldPidFile=$ROOT/slurmctld.pid
SlurmdPidFile=$ROOT/slurmd.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  write_if_changed /etc/slurm/slurmdbd.conf 600 <<EOF && changed=1
# written by degflow .ci/slurm_up.sh
AuthType=auth/munge
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=$ROOT/log/slurmdbd.log
PidFile=$ROOT/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
EOF
  if [ $changed = 1 ]; then   # daemons started earlier read the old config: restart them
    local d pid
    for d in slurmd slurmctld slurmdbd; do
      running "$ROOT/$d.pid" "$d" || continue
      say "configuration changed: restarting $d"
      pid=$(cat "$ROOT/$d.pid"); kill "$pid"
      for _ in $(seq 100); do running "$ROOT/$d.pid" "$d" || break; sleep 0.1; done
    done
  fi
}

start_slurm() {
  if ! running "$ROOT/slurmdbd.pid" slurmdbd; then
    say "starting slurmdbd"; slurmdbd; remember slurmdbd "$ROOT/slurmdbd.pid"
  fi
  until_ok 60 slurmdbd sacctmgr -n show cluster
  if ! running "$ROOT/slurmctld.pid" slurmctld; then
    say "starting slurmctld"; slurmctld; remember slurmctld "$ROOT/slurmctld.pid"
  fi
  until_ok 30 slurmctld scontrol ping
  if ! running "$ROOT/slurmd.pid" slurmd; then
    say "starting slurmd"; slurmd; remember slurmd "$ROOT/slurmd.pid"
  fi
  local deadline=$(( SECONDS + WAIT_S )) state=""
  while :; do
    state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n 1)
    case $state in
      idle|mixed|allocated) break ;;
      down*|drain*|fail*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    (( SECONDS < deadline )) || fail "node $NODE is '${state:-unknown}' after ${WAIT_S}s, not idle"
    sleep 0.25
  done
  say "up in ${SECONDS}s: node $NODE ($CPUS CPUs, ${MEM_MB} MB) is $state, partition debug"
}

install_packages
start_munge
start_database
write_config
start_slurm
