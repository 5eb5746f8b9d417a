#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine (Debian packages), bound to 127.0.0.1,
# with accounting (submitit polls job states with sacct only).  For tests and CI, as root.
#
#   bash scripts/slurm_cluster.sh start    # idempotent: a second start only checks
#   bash scripts/slurm_cluster.sh status
#   bash scripts/slurm_cluster.sh stop     # by the PIDs in the pid files
#   source "$SLURM_PREFIX/env.sh"          # after start: sets SLURM_CONF
#
# Everything lives under SLURM_PREFIX (default /tmp/dgmm-lab-slurm).  Ports: SLURM_PORT_BASE
# (default 6817) for slurmctld, +1 slurmd, +2 slurmdbd, +3 MariaDB.
set -euo pipefail

PREFIX=${SLURM_PREFIX:-/tmp/dgmm-lab-slurm}
BASE=${SLURM_PORT_BASE:-6817}
CTLD_PORT=$BASE; D_PORT=$((BASE + 1)); DBD_PORT=$((BASE + 2)); DB_PORT=$((BASE + 3))
HOST=$(hostname -s)
MUNGE_SOCK=$PREFIX/munge/munge.socket
DB_SOCK=$PREFIX/db/mysqld.sock
export SLURM_CONF=$PREFIX/etc/slurm.conf

say() { printf '[slurm_cluster %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { say "ERROR: $*"; exit 1; }
# a killed daemon stays a zombie until PID 1 reaps it, and kill -0 succeeds on zombies
running() {  # a daemon may delete its pid file while we look
  local pid; pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$pid/stat" 2>/dev/null
}
wait_until() {  # wait_until WHAT SECONDS COMMAND...
  local what=$1 limit=$(( $(date +%s) + $2 )); shift 2
  until "$@" >/dev/null 2>&1; do [ "$(date +%s)" -lt "$limit" ] || die "timed out waiting for $what"; sleep 0.25; done
}
# Daemons get stdio on a log file and no other inherited descriptor: otherwise they keep
# the caller's pipes (a CI runner's output) open and the caller never finishes.
detach() {  # detach LOGNAME COMMAND...
  local name=$1; shift
  ( for fd in /proc/self/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-"; done
    exec "$@" </dev/null >>"$PREFIX/log/$name.out" 2>&1 ) || true
}

install_packages() {
  local pkgs=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server) missing=() p
  for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return
  say "installing ${missing[*]}"
  local policy=0
  # keep apt from starting the packaged services with their default configuration
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; policy=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$PREFIX/log/apt.log" 2>&1 \
    || { tail -20 "$PREFIX/log/apt.log"; [ $policy = 1 ] && rm -f /usr/sbin/policy-rc.d; die "apt-get install failed"; }
  [ $policy = 1 ] && rm -f /usr/sbin/policy-rc.d
  return 0
}

write_configs() {
  local cpus mem
  cpus=$(nproc); mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.85}' /proc/meminfo)
  cat >"$SLURM_CONF" <<EOF
ClusterName=dgmmlab
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job waits cred_expire seconds before it starts again (default 120)
AuthInfo=socket=$MUNGE_SOCK,cred_expire=10
SlurmctldPort=$CTLD_PORT
SlurmdPort=$D_PORT
StateSaveLocation=$PREFIX/state/ctld
SlurmdSpoolDir=$PREFIX/state/d
SlurmctldPidFile=$PREFIX/run/slurmctld.pid
SlurmdPidFile=$PREFIX/run/slurmd.pid
SlurmctldLogFile=$PREFIX/log/slurmctld.log
SlurmdLogFile=$PREFIX/log/slurmd.log
# no cgroups in these sandboxes
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCK
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=5
MinJobAge=300
NodeName=$HOST NodeAddr=127.0.0.1 NodeHostname=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$PREFIX/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$PREFIX/run/slurmdbd.pid
LogFile=$PREFIX/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$PREFIX/etc/slurmdbd.conf"
  printf 'export SLURM_CONF=%q\n' "$SLURM_CONF" >"$PREFIX/env.sh"
}

start() {
  mkdir -p "$PREFIX"/{etc,log,run,state/ctld,state/d,munge,db}
  exec 9>"$PREFIX/.lock"; flock -w 300 9 || die "another start holds $PREFIX/.lock"
  install_packages
  write_configs

  if ! running "$PREFIX/munge/munged.pid"; then
    # munged wants its socket folder open to all, its key and logs closed to others
    mkdir -p "$PREFIX/munge/private"
    [ -s "$PREFIX/munge/private/munge.key" ] || dd if=/dev/urandom of="$PREFIX/munge/private/munge.key" bs=1024 count=1 status=none
    chown -R munge:munge "$PREFIX/munge"; chmod 755 "$PREFIX/munge"; chmod 700 "$PREFIX/munge/private"
    chmod 400 "$PREFIX/munge/private/munge.key"
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
    detach munged runuser -u munge -- munged --socket="$MUNGE_SOCK" --key-file="$PREFIX/munge/private/munge.key" \
      --pid-file="$PREFIX/munge/munged.pid" --log-file="$PREFIX/munge/private/munged.log" \
      --seed-file="$PREFIX/munge/private/seed"
    wait_until munged 30 bash -c "munge -n -S '$MUNGE_SOCK' | unmunge -S '$MUNGE_SOCK'"
  fi

  local sql=(mariadb --no-defaults -S "$DB_SOCK" -uroot)
  if ! running "$PREFIX/db/mysqld.pid"; then
    if [ ! -d "$PREFIX/db/data/mysql" ]; then
      mariadb-install-db --no-defaults --datadir="$PREFIX/db/data" --user=root --auth-root-authentication-method=normal \
        --skip-test-db >"$PREFIX/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $PREFIX/log)"
    fi
    rm -f "$DB_SOCK"
    detach mariadbd setsid -f mariadbd --no-defaults --user=root --datadir="$PREFIX/db/data" --socket="$DB_SOCK" \
      --pid-file="$PREFIX/db/mysqld.pid" --bind-address=127.0.0.1 --port="$DB_PORT" \
      --log-error="$PREFIX/log/mariadb.log" --innodb-buffer-pool-size=64M
    wait_until mariadbd 60 "${sql[@]}" -e 'select 1'
  fi
  "${sql[@]}" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
                  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
                  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
                  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

  running "$PREFIX/run/slurmdbd.pid" || { detach slurmdbd slurmdbd; wait_until slurmdbd 60 sacctmgr -n list cluster; }
  if running "$PREFIX/run/slurmctld.pid"; then scontrol reconfigure >/dev/null 2>&1 || true
  else detach slurmctld slurmctld; wait_until slurmctld 60 scontrol ping; fi
  running "$PREFIX/run/slurmd.pid" || { detach slurmd slurmd; wait_until slurmd 60 running "$PREFIX/run/slurmd.pid"; }

  local limit=$(( $(date +%s) + 60 )) state
  until sinfo -h -n "$HOST" -o %t 2>/dev/null | grep -Eq '^(idle|mix|alloc)$'; do
    state=$(sinfo -h -n "$HOST" -o %t 2>/dev/null || true)
    case $state in down*|drain*|fail*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;; esac
    [ "$(date +%s)" -lt "$limit" ] || die "node $HOST not usable (state $state); logs in $PREFIX/log"
    sleep 0.25
  done
  wait_until "cluster registration" 60 bash -c "sacctmgr -n -P list cluster format=cluster | grep -qx dgmmlab"
  say "ready: partition debug on $HOST ($(nproc) CPUs); source $PREFIX/env.sh"
}

stop() {
  [ -d "$PREFIX" ] || { say "nothing at $PREFIX"; return 0; }
  if running "$PREFIX/run/slurmctld.pid"; then
    local jobs; jobs=$(squeue -h -o %A 2>/dev/null | sort -u)
    [ -z "$jobs" ] || { scancel $jobs 2>/dev/null || true; sleep 2; }
  fi
  local f pid i
  for f in run/slurmd.pid run/slurmctld.pid run/slurmdbd.pid db/mysqld.pid munge/munged.pid; do
    running "$PREFIX/$f" || { rm -f "$PREFIX/$f"; continue; }
    pid=$(cat "$PREFIX/$f"); kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do running "$PREFIX/$f" || break; sleep 0.2; done
    running "$PREFIX/$f" && kill -KILL "$pid" 2>/dev/null
    rm -f "$PREFIX/$f"; say "stopped ${f##*/} (pid $pid)"
  done
}

status() {
  local f ok=0
  for f in munge/munged.pid db/mysqld.pid run/slurmdbd.pid run/slurmctld.pid run/slurmd.pid; do
    if running "$PREFIX/$f"; then say "${f##*/}: running (pid $(cat "$PREFIX/$f"))"; else say "${f##*/}: stopped"; ok=1; fi
  done
  [ $ok = 0 ] && sinfo
  return $ok
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
