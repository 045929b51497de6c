#!/usr/bin/env bash
# A real single-node SLURM cluster for tests and CI (Debian's slurm-wlm + munge).
#
#   tests/slurm/cluster.sh start [DIR]   install if needed, configure one node, start munged/slurmctld/slurmd
#   tests/slurm/cluster.sh stop  [DIR]   stop the daemons by PID
#   tests/slurm/cluster.sh env   [DIR]   print the export line for SLURM_CONF
#
# State, logs, pid files and config live under DIR (default /tmp/pipeline-slurm); the cluster is
# isolated by its own SLURM_CONF and ports. Idempotent: start on a running cluster does nothing.
# Two fake GPUs (character devices) let --gpus-per-node jobs be scheduled on a GPU-less machine.
# No slurmdbd: job state comes from squeue (MinJobAge keeps finished jobs listed for 10 minutes).
set -euo pipefail
cmd=${1:-start}
DIR=${2:-${PIPELINE_SLURM_DIR:-/tmp/pipeline-slurm}}
CONF=$DIR/slurm.conf

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install() {
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null
  fi
}

configure() {
  mkdir -p "$DIR"/{state,spool,log,dev}
  chmod 755 "$DIR" "$DIR"/state "$DIR"/spool
  host=$(hostname -s)
  node=$(slurmd -C | head -1 | sed -E 's/ (Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+//g')
  mem=$(echo "$node" | sed -E 's/.*RealMemory=([0-9]+).*/\1/')
  node=$(echo "$node" | sed -E "s/RealMemory=[0-9]+/RealMemory=$((mem * 9 / 10))/")
  for n in 0 1; do [ -e "$DIR/dev/nv$n" ] || mknod "$DIR/dev/nv$n" c 195 $n; done
  cat > "$CONF" <<CONF
ClusterName=pipeline
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${PIPELINE_SLURMCTLD_PORT:-16817}
SlurmdPort=${PIPELINE_SLURMD_PORT:-16818}
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
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
GresTypes=gpu
$node Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  cat > "$DIR/gres.conf" <<CONF
AutoDetect=off
NodeName=$host Name=gpu File=$DIR/dev/nv[0-1]
CONF
}

start() {
  if running "$DIR/slurmctld.pid" && running "$DIR/slurmd.pid"; then
    echo "SLURM already running (SLURM_CONF=$CONF)"; return 0
  fi
  install
  configure
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
  export SLURM_CONF=$CONF
  running "$DIR/slurmctld.pid" || slurmctld -f "$CONF"
  running "$DIR/slurmd.pid" || slurmd -f "$CONF"
  for _ in $(seq 1 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "SLURM up (SLURM_CONF=$CONF)"; return 0
    fi
    sleep 0.5
  done
  echo "SLURM did not come up; logs in $DIR/log" >&2
  tail -20 "$DIR"/log/*.log >&2 || true
  return 1
}

stop() {
  for d in slurmd slurmctld; do
    if running "$DIR/$d.pid"; then kill "$(cat "$DIR/$d.pid")"; fi
  done
  echo "SLURM stopped"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|env [DIR]" >&2; exit 2 ;;
esac
