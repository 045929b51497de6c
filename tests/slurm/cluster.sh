#!/usr/bin/env bash
# A real single-node SLURM cluster with accounting, for trying the pipeline and for the tests
# (Debian's slurm-wlm, slurmdbd, mariadb-server and munge; run as root).
#
#   tests/slurm/cluster.sh start [DIR]   install if needed, configure, start (or restart after a config change)
#   tests/slurm/cluster.sh stop  [DIR]   stop the daemons by PID (munged stays)
#   tests/slurm/cluster.sh env   [DIR]   print the export line for SLURM_CONF
#
# It matches the shipped Snakemake profile (slurm/config.yaml): partitions `cpu` (the default) and `gpu`
# (one node in both, with two fake GPUs: character devices, enough for --gpus jobs to be scheduled)
# and the SLURM account `pipeline`. The node is declared with at least 16 CPUs and 64 GB
# (SlurmdParameters=config_overrides) so the profile's requests (8 CPUs, 32 GB) fit on a small
# machine; its jobs share the real cores. slurmdbd keeps accounting in a MariaDB server of its own,
# so sacct and sacctmgr answer as on a production cluster; squeue keeps finished jobs listed for an
# hour (MinJobAge).
#
# State, logs, pid files, the database and the config live under DIR (default /tmp/pipeline-slurm);
# the cluster is isolated by its own SLURM_CONF and ports (PIPELINE_SLURMCTLD_PORT, _SLURMD_PORT,
# _SLURMDBD_PORT, _MARIADB_PORT). start is idempotent: on a running cluster whose configuration is
# unchanged it does nothing; a running cluster with an older configuration is restarted with the new one.
set -euo pipefail
cmd=${1:-start}
DIR=${2:-${PIPELINE_SLURM_DIR:-/tmp/pipeline-slurm}}
CONF=$DIR/slurm.conf
DB=$DIR/mariadb
ACCOUNT=pipeline
CTLD_PORT=${PIPELINE_SLURMCTLD_PORT:-16817}
SLURMD_PORT=${PIPELINE_SLURMD_PORT:-16818}
DBD_PORT=${PIPELINE_SLURMDBD_PORT:-16819}
DB_PORT=${PIPELINE_MARIADB_PORT:-16820}
export SLURM_CONF=$CONF # slurmdbd finds slurmdbd.conf beside it

# shellcheck source=tests/slurm/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

install() {
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v slurmdbd >/dev/null ||
    ! command -v mariadbd >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq slurm-wlm slurmdbd mariadb-server munge >/dev/null
  fi
}

# the configuration files, written to $1 (a folder)
configure() {
  local out=$1 host node cpus mem
  host=$(hostname -s)
  node=$(slurmd -C | head -1 | sed -E 's/ (Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+//g')
  cpus=$(echo "$node" | sed -E 's/.*CPUs=([0-9]+).*/\1/')
  mem=$(echo "$node" | sed -E 's/.*RealMemory=([0-9]+).*/\1/')
  cpus=$((cpus > 16 ? cpus : 16))
  mem=$((mem * 9 / 10 > 65536 ? mem * 9 / 10 : 65536))
  cat >"$out/slurm.conf" <<CONF
ClusterName=pipeline
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
MinJobAge=3600
KillWait=5
InactiveLimit=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
GresTypes=gpu
NodeName=$host CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL MaxTime=INFINITE State=UP
CONF
  cat >"$out/gres.conf" <<CONF
AutoDetect=off
NodeName=$host Name=gpu File=$DIR/dev/nv[0-1]
CONF
  cat >"$out/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$DIR/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=pipeline
StorageLoc=slurm_acct_db
CONF
  chmod 600 "$out/slurmdbd.conf" # slurmdbd refuses a readable one (it holds the database password)
}

start_mariadb() {
  running "$DIR/mariadb.pid" && return 0
  if [ ! -d "$DB/mysql" ]; then
    mariadb-install-db --no-defaults --user=root --datadir="$DB" --auth-root-authentication-method=socket \
      --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 || fail "mariadb-install-db failed"
  fi
  # its own server: TCP on 127.0.0.1 only, its own socket; detached, no inherited stdout/stderr
  setsid mariadbd --no-defaults --user=root --datadir="$DB" --port="$DB_PORT" --bind-address=127.0.0.1 \
    --socket="$DIR/mariadb.sock" --pid-file="$DIR/mariadb.pid" --log-error="$DIR/log/mariadb.log" \
    --innodb-buffer-pool-size=64M --skip-log-bin </dev/null >/dev/null 2>&1 &
  wait_for 60 mariadb-admin --no-defaults --socket="$DIR/mariadb.sock" ping || fail "MariaDB did not come up"
  mariadb --no-defaults --socket="$DIR/mariadb.sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' \
    IDENTIFIED BY 'pipeline'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

start() {
  install
  mkdir -p "$DIR"/{state,spool,log,dev}
  chmod 755 "$DIR" "$DIR"/state "$DIR"/spool
  for n in 0 1; do [ -e "$DIR/dev/nv$n" ] || mknod "$DIR/dev/nv$n" c 195 $n; done
  local new
  new=$(mktemp -d)
  configure "$new"
  local changed=0
  for f in slurm.conf gres.conf slurmdbd.conf; do cmp -s "$new/$f" "$DIR/$f" || changed=1; done
  if [ $changed = 0 ] && running "$DIR/slurmdbd.pid" && running "$DIR/slurmctld.pid" && running "$DIR/slurmd.pid"; then
    rm -rf "$new"
    echo "SLURM already running (SLURM_CONF=$CONF)"
    return 0
  fi
  if [ $changed = 1 ]; then # an older cluster: restart it with the new configuration
    for d in slurmd slurmctld slurmdbd; do stop_pid "$DIR/$d.pid"; done
    cp -p "$new"/{slurm.conf,gres.conf,slurmdbd.conf} "$DIR"/
  fi
  rm -rf "$new"
  if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
    [ -f /etc/munge/munge.key ] || (mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f)
    runuser -u munge -- /usr/sbin/munged
  fi
  # srun inside batch jobs (the Snakemake executor plugin's job script) looks for the default path,
  # not SLURM_CONF: link it there unless the machine already has its own SLURM configuration.
  if [ ! -e /etc/slurm/slurm.conf ] || [ "$(readlink /etc/slurm/slurm.conf)" = "$CONF" ]; then
    mkdir -p /etc/slurm && ln -sfn "$CONF" /etc/slurm/slurm.conf && ln -sfn "$DIR/gres.conf" /etc/slurm/gres.conf
  fi
  start_mariadb
  running "$DIR/slurmdbd.pid" || slurmdbd
  wait_for 60 sacctmgr -n list cluster || fail "slurmdbd did not come up"
  # the cluster, the account of the profile, root in it by default (sacctmgr -i: no confirmation prompt)
  if [ -z "$(sacctmgr -n list cluster pipeline format=cluster)" ]; then sacctmgr -i add cluster pipeline >/dev/null; fi
  if [ -z "$(sacctmgr -n list account $ACCOUNT format=account)" ]; then
    sacctmgr -i add account $ACCOUNT Description="pipeline trial" Organization=pipeline >/dev/null
  fi
  if ! sacctmgr -n -s list user root format=account%64 | grep -qw $ACCOUNT; then
    sacctmgr -i add user root Account=$ACCOUNT >/dev/null
  fi
  if [ "$(sacctmgr -n list user root format=defaultaccount%64 | tr -d ' ')" != $ACCOUNT ]; then
    sacctmgr -i modify user root set DefaultAccount=$ACCOUNT >/dev/null # also for jobs submitted without -A
  fi
  running "$DIR/slurmctld.pid" || slurmctld -f "$CONF"
  running "$DIR/slurmd.pid" || slurmd -f "$CONF"
  for _ in $(seq 1 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "SLURM up (SLURM_CONF=$CONF)"
      return 0
    fi
    sleep 0.5
  done
  fail "SLURM did not come up"
}

stop() {
  for d in slurmd slurmctld slurmdbd mariadb; do stop_pid "$DIR/$d.pid"; done
  echo "SLURM stopped"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *)
    echo "usage: $0 start|stop|env [DIR]" >&2
    exit 2
    ;;
esac
