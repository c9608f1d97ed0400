#!/usr/bin/env bash
# A real one-node SLURM cluster for the tests: munge, MariaDB, slurmdbd (accounting), slurmctld
# and slurmd from Debian packages, two fake GPUs through gres, no systemd. Runs as root.
#
#   tests/slurm/cluster.sh start    # cold start (prints the seconds it took)
#   tests/slurm/cluster.sh status   # exit 0 when every daemon answers, else 1 with the reason
#   tests/slurm/cluster.sh stop     # stops the daemons by PID, removes the config it wrote
#
# Packages: tests/slurm/install.sh. State, logs, sockets and PID files live under one folder,
# $EMTRAIT_SLURM_DIR (default /tmp/emtrait-slurm). The config must sit at /etc/slurm/slurm.conf:
# the Snakemake jobstep helper strips SLURM_CONF before its inner srun, so a config elsewhere is
# not seen inside jobs. The script refuses to overwrite a slurm.conf it did not write.
set -euo pipefail

ROOT=${EMTRAIT_SLURM_DIR:-/tmp/emtrait-slurm}
ETC=/etc/slurm
MARK="# written by emtrait tests/slurm/cluster.sh"
CLUSTER=emtrait
ACCOUNT=emtrait-test
CTLD_PORT=${EMTRAIT_SLURMCTLD_PORT:-16817}
SLURMD_PORT=${EMTRAIT_SLURMD_PORT:-16818}
DBD_PORT=${EMTRAIT_SLURMDBD_PORT:-16819}
DB_PORT=${EMTRAIT_MARIADB_PORT:-13306}
NODE=$(hostname -s)
DAEMONS=(mariadbd slurmdbd slurmctld slurmd)   # started in this order, stopped in reverse

log() { printf '[cluster.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s until it succeeds.
wait_for() {
  local limit=$1 what=$2 t0=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    (( SECONDS - t0 < limit )) || die "$what did not come up within ${limit}s (logs: $ROOT/log)"
    sleep 0.2
  done
}

# spawn NAME COMMAND...: run a daemon in the foreground of its own session; remember its PID.
spawn() {
  local name=$1
  shift
  setsid "$@" >"$ROOT/log/$name.out" 2>&1 </dev/null &
  echo $! >"$ROOT/run/$name.pid"
}

alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

ours() { [[ ! -e $1 ]] || head -n1 "$1" | grep -qF "$MARK"; }

write_config() {
  ours "$ETC/slurm.conf" || die "$ETC/slurm.conf exists and was not written by this script"
  mkdir -p "$ETC"
  cat >"$ETC/slurm.conf" <<EOF
$MARK (state under $ROOT)
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$ROOT/munge/munge.socket
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool
SlurmctldPidFile=$ROOT/run/slurmctld.daemon.pid
SlurmdPidFile=$ROOT/run/slurmd.daemon.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd.log
# no cgroups without systemd: plain process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
# the node declares more CPUs/memory than this host has, so production-sized requests
# (cpus_per_gpu=4) still fit; memory requests are enforced by polling (OverMemoryKill)
SlurmdParameters=config_overrides
# every task prints the GPUs SLURM bound to it into the job's output (the tests read it)
TaskProlog=$ROOT/task_prolog.sh
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# the munge socket used towards slurmdbd (AuthInfo covers only slurmctld/slurmd traffic)
AccountingStoragePass=$ROOT/munge/munge.socket
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=16 RealMemory=64000 Gres=gpu:2 State=UNKNOWN
PartitionName=gpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$ETC/gres.conf" <<EOF
$MARK
NodeName=$NODE Name=gpu File=$ROOT/dev/nvidia[0-1]
EOF
  cat >"$ETC/slurmdbd.conf" <<EOF
$MARK
AuthType=auth/munge
AuthInfo=socket=$ROOT/munge/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$ROOT/run/slurmdbd.daemon.pid
LogFile=$ROOT/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=unused
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$ETC/slurmdbd.conf"
}

start() {
  if status >/dev/null 2>&1; then log "already running"; return 0; fi
  local t0
  t0=$(date +%s.%N)
  for cmd in munged slurmctld slurmd slurmdbd mariadbd mariadb-install-db sinfo sacctmgr; do
    command -v "$cmd" >/dev/null || die "$cmd not found: run tests/slurm/install.sh first"
  done
  stop_daemons quiet
  rm -rf "$ROOT"
  mkdir -p "$ROOT"/{munge,mysql,state,spool,log,run,dev}
  chmod 700 "$ROOT/munge"
  ln -s /dev/null "$ROOT/dev/nvidia0"   # fake GPUs: gres needs device files; symlinks to
  ln -s /dev/null "$ROOT/dev/nvidia1"   # /dev/null pass its check (regular files do not)
  write_config
  cat >"$ROOT/task_prolog.sh" <<'PROLOG'
#!/bin/sh
echo "print [task prolog] job=$SLURM_JOB_ID step=${SLURM_STEP_ID:-batch} CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset}"
PROLOG
  chmod 755 "$ROOT/task_prolog.sh"

  dd if=/dev/urandom of="$ROOT/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$ROOT/munge/munge.key"
  munged --force --key-file="$ROOT/munge/munge.key" --socket="$ROOT/munge/munge.socket" \
    --pid-file="$ROOT/run/munged.pid" --log-file="$ROOT/log/munged.log" \
    --seed-file="$ROOT/munge/munge.seed"

  # MariaDB only serves slurmdbd: TCP on localhost, no grant tables, no durability.
  mariadb-install-db --no-defaults --datadir="$ROOT/mysql" --user=root --skip-test-db \
    --auth-root-authentication-method=socket >"$ROOT/log/mariadb-install.out" 2>&1 \
    || die "mariadb-install-db failed: $ROOT/log/mariadb-install.out"
  spawn mariadbd mariadbd --no-defaults --datadir="$ROOT/mysql" --user=root \
    --socket="$ROOT/run/mysql.sock" --port="$DB_PORT" --bind-address=127.0.0.1 \
    --pid-file="$ROOT/run/mariadbd.daemon.pid" --log-error="$ROOT/log/mariadbd.log" \
    --skip-grant-tables --skip-log-bin --innodb-buffer-pool-size=64M \
    --innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 --innodb-flush-method=nosync
  wait_for 60 mariadbd mariadb-admin --no-defaults --socket="$ROOT/run/mysql.sock" ping

  spawn slurmdbd slurmdbd -D
  wait_for 60 slurmdbd sacctmgr -i list cluster
  sacctmgr -i add cluster "$CLUSTER" >/dev/null
  sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=tests Organization=emtrait \
    >/dev/null
  sacctmgr -i add user root DefaultAccount="$ACCOUNT" Account="$ACCOUNT" >/dev/null

  spawn slurmctld slurmctld -D -i
  wait_for 60 slurmctld scontrol ping
  spawn slurmd slurmd -D
  wait_for 60 "node $NODE" node_ready
  awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b - a }' >"$ROOT/start_seconds"
  log "cluster up in $(cat "$ROOT/start_seconds") s (node $NODE, 2 fake GPUs, account $ACCOUNT)"
}

node_ready() {
  local state
  state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null) || return 1
  [[ $state == idle || $state == mix || $state == alloc ]]
}

status() {
  local name
  [[ -d $ROOT ]] || { echo "not running: $ROOT does not exist"; return 1; }
  alive "$ROOT/run/munged.pid" || { echo "not running: munged is down"; return 1; }
  for name in "${DAEMONS[@]}"; do
    alive "$ROOT/run/$name.pid" || { echo "not running: $name is down (logs: $ROOT/log)"; return 1; }
  done
  ours "$ETC/slurm.conf" && [[ -e $ETC/slurm.conf ]] \
    || { echo "not running: $ETC/slurm.conf is missing or foreign"; return 1; }
  timeout 10 scontrol ping >/dev/null 2>&1 || { echo "not running: slurmctld does not answer"; return 1; }
  node_ready || { echo "not running: node $NODE is not idle/mix/alloc"; return 1; }
  timeout 10 sacct -n -X -S now >/dev/null 2>&1 || { echo "not running: sacct does not answer"; return 1; }
  echo "running: node $NODE, state under $ROOT"
}

# stop_daemons [quiet]: TERM every daemon by its PID file, wait, then KILL what is left.
stop_daemons() {
  local name pidfile pid i
  for name in slurmd slurmctld slurmdbd mariadbd munged; do
    pidfile=$ROOT/run/$name.pid
    alive "$pidfile" || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -9 "$pid" 2>/dev/null || true
      [[ ${1:-} == quiet ]] || log "$name (pid $pid) needed SIGKILL"
    fi
    rm -f "$pidfile"
  done
}

stop() {
  stop_daemons
  local f
  for f in slurm.conf gres.conf slurmdbd.conf; do
    if [[ -e $ETC/$f ]] && ours "$ETC/$f"; then rm -f "$ETC/$f"; fi
  done
  log "stopped (logs kept in $ROOT/log)"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
