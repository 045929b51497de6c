#!/usr/bin/env bash
# A real two-node SLURM cluster on one machine, for the multi-node tests (issue 13; run as root).
# Sibling of cluster.sh (the one-node cluster): its own DIR, ports, cluster name and SLURM_CONF.
#
#   tests/slurm/cluster2.sh start [DIR]   install if needed, network, configure, start (idempotent)
#   tests/slurm/cluster2.sh stop  [DIR]   stop the daemons by PID, kill what is left in the node namespaces,
#                                         remove the namespaces and the bridge (munged stays)
#   tests/slurm/cluster2.sh env   [DIR]   print the export line for SLURM_CONF
#   tests/slurm/cluster2.sh kill NODE [DIR]    a node dies: SIGKILL its slurmd and every process in its namespace
#   tests/slurm/cluster2.sh revive NODE [DIR]  start that node's slurmd again (it rejoins the cluster)
#
# Layout: a bridge on the host ($BR, $NET.254 for the controller); per compute node nK a network namespace
# $NS_PREFIX-nK with a veth pair (one end on the bridge, eth0 inside, address $NET.K). Each slurmd runs in
# its namespace with its own hostname (UTS namespace) and its own mount namespace in which DIR/hosts is
# bind-mounted over /etc/hosts, so that node names resolve to the bridge addresses inside the jobs as on a
# real cluster (MASTER_ADDR = the first node's name; gloo binds to the address of its own hostname).
# `nsenter --net` rather than `ip netns exec`: the latter remounts /sys and slurmd then finds no cgroup
# filesystem. slurmctld runs on the host, reached by the nodes at $NET.254; munged is shared (its unix
# socket is on the shared filesystem). No slurmdbd: the launcher and the Snakemake profile use squeue
# (MinJobAge keeps finished jobs listed). Partitions `cpu` (default) and `gpu`, two fake GPUs per node.
# SlurmdTimeout is short so that a killed node is marked DOWN quickly.
set -euo pipefail
cmd=${1:-start}
NODE=""
if [ "$cmd" = kill ] || [ "$cmd" = revive ]; then
  NODE=${2:?usage: $0 $cmd NODE [DIR]}
  shift
fi
DIR=${2:-${PIPELINE_SLURM2_DIR:-/tmp/pipeline-slurm2}}
CONF=$DIR/slurm.conf
CTLD_PORT=${PIPELINE_SLURM2_CTLD_PORT:-16837}
SLURMD_PORT=${PIPELINE_SLURM2_SLURMD_PORT:-16838}
NET=${PIPELINE_SLURM2_NET:-10.213.2}
BR=${PIPELINE_SLURM2_BRIDGE:-plbr2}
NS_PREFIX=${PIPELINE_SLURM2_NS:-pl2}
NODES="n1 n2"
export SLURM_CONF=$CONF

# shellcheck source=tests/slurm/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

install() {
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null
  fi
}

configure() { # the configuration files, written to $1 (a folder)
  local out=$1 host
  host=$(hostname -s)
  cat >"$out/slurm.conf" <<CONF
ClusterName=pipeline2
SlurmctldHost=$host($NET.254)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool-%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
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
SlurmdTimeout=10
MessageTimeout=5
JobRequeue=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
NodeName=n1 NodeAddr=$NET.1 NodeHostname=n1 CPUs=16 RealMemory=65536 Gres=gpu:2 State=UNKNOWN
NodeName=n2 NodeAddr=$NET.2 NodeHostname=n2 CPUs=16 RealMemory=65536 Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL MaxTime=INFINITE State=UP
CONF
  cat >"$out/gres.conf" <<CONF
AutoDetect=off
NodeName=n[1-2] Name=gpu File=$DIR/dev/nv[0-1]
CONF
  cat >"$out/hosts" <<CONF
127.0.0.1 localhost
$NET.254 $host
$NET.1 n1
$NET.2 n2
CONF
}

network() { # the bridge, and per node a namespace with a veth pair onto it (idempotent)
  if ! ip link show "$BR" >/dev/null 2>&1; then
    ip link add "$BR" type bridge
  fi
  ip addr show dev "$BR" | grep -q "inet $NET.254/" || ip addr add "$NET.254/24" dev "$BR"
  ip link set "$BR" up
  local k=0 ns
  for n in $NODES; do
    k=$((k + 1))
    ns=$NS_PREFIX-$n
    [ -e "/run/netns/$ns" ] || ip netns add "$ns"
    if ! ip link show "$ns-h" >/dev/null 2>&1; then
      ip link add "$ns-h" type veth peer name "$ns-c"
      ip link set "$ns-c" netns "$ns"
      ip -n "$ns" link set "$ns-c" name eth0
      ip link set "$ns-h" master "$BR"
    fi
    ip link set "$ns-h" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr show dev eth0 | grep -q "inet $NET.$k/" || ip -n "$ns" addr add "$NET.$k/24" dev eth0
    ip -n "$ns" link set eth0 up
  done
}

start_node() { # start_node nK: its slurmd in its namespaces
  local n=$1
  running "$DIR/slurmd-$n.pid" && return 0
  mkdir -p "$DIR/spool-$n"
  chmod 755 "$DIR/spool-$n"
  # slurmd daemonizes; the mount and UTS namespaces live as long as it (and its job steps) do
  nsenter --net="/run/netns/$NS_PREFIX-$n" unshare --uts --mount --propagation private sh -c \
    "hostname $n && mount --bind '$DIR/hosts' /etc/hosts && exec slurmd -f '$CONF' -N $n" \
    </dev/null >>"$DIR/log/slurmd-$n.start.log" 2>&1
}

node_up() { # node_up nK: the controller sees the node idle (or busy)
  sinfo -h -n "$1" -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)'
}

start() {
  install
  mkdir -p "$DIR"/{state,log,dev}
  chmod 755 "$DIR" "$DIR"/state
  for n in 0 1; do [ -e "$DIR/dev/nv$n" ] || mknod "$DIR/dev/nv$n" c 195 $n; done
  local new changed=0
  new=$(mktemp -d)
  configure "$new"
  for f in slurm.conf gres.conf hosts; do cmp -s "$new/$f" "$DIR/$f" || changed=1; done
  local all=1
  running "$DIR/slurmctld.pid" || all=0
  for n in $NODES; do running "$DIR/slurmd-$n.pid" || all=0; done
  if [ $changed = 0 ] && [ $all = 1 ]; then
    rm -rf "$new"
    echo "SLURM (2 nodes) already running (SLURM_CONF=$CONF)"
    return 0
  fi
  if [ $changed = 1 ]; then # an older cluster: restart it with the new configuration
    for n in $NODES; do stop_pid "$DIR/slurmd-$n.pid"; done
    stop_pid "$DIR/slurmctld.pid"
    cp -p "$new"/{slurm.conf,gres.conf,hosts} "$DIR"/
  fi
  rm -rf "$new"
  network
  if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
    [ -f /etc/munge/munge.key ] || (mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f)
    runuser -u munge -- /usr/sbin/munged
  fi
  running "$DIR/slurmctld.pid" || slurmctld -f "$CONF"
  for n in $NODES; do start_node "$n"; done
  for n in $NODES; do
    wait_for 60 node_up "$n" || fail "node $n did not come up"
  done
  echo "SLURM (2 nodes) up (SLURM_CONF=$CONF)"
}

ns_pids() { # pids of the processes in a node's network namespace
  ip netns pids "$NS_PREFIX-$1" 2>/dev/null || true
}

kill_node() { # a node dies: its slurmd and every process in its namespace, at once
  local pids
  pids=$(ns_pids "$1")
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
  fi
  echo "node $1 killed (${pids//$'\n'/ })"
}

stop() {
  for n in $NODES; do stop_pid "$DIR/slurmd-$n.pid" || true; done
  stop_pid "$DIR/slurmctld.pid"
  for n in $NODES; do kill_node "$n" >/dev/null; done
  for n in $NODES; do
    ip netns del "$NS_PREFIX-$n" 2>/dev/null || true
    ip link del "$NS_PREFIX-$n-h" 2>/dev/null || true
  done
  ip link del "$BR" 2>/dev/null || true
  echo "SLURM (2 nodes) stopped"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  kill) kill_node "$NODE" ;;
  revive)
    start_node "$NODE"
    wait_for 60 node_up "$NODE" || fail "node $NODE did not come back"
    echo "node $NODE up"
    ;;
  *)
    echo "usage: $0 start|stop|env [DIR] | kill|revive NODE [DIR]" >&2
    exit 2
    ;;
esac
