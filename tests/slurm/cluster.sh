#!/usr/bin/env bash
# A real two-node SLURM cluster with accounting on one machine, for trying the pipeline and for the tests
# (Debian's slurm-wlm, slurmdbd, mariadb-server and munge; run as root).
#
#   tests/slurm/cluster.sh start [DIR]         install if needed, network, configure, start (idempotent; restarts
#                                              a cluster started with an older configuration)
#   tests/slurm/cluster.sh stop  [DIR]         stop the daemons by PID, kill what is left in the node namespaces,
#                                              remove the namespaces and the bridge (munged stays)
#   tests/slurm/cluster.sh env   [DIR]         print the export line for SLURM_CONF
#   tests/slurm/cluster.sh kill NODE [DIR]     a node dies: SIGKILL its slurmd and every process in its namespace
#   tests/slurm/cluster.sh revive NODE [DIR]   start that node's slurmd again (it rejoins the cluster)
#
# It matches the shipped Snakemake profile (slurm/config.yaml): partitions `cpu` (the default) and `gpu` on both
# nodes, two fake GPUs per node (character devices: enough for --gpus jobs to be scheduled) and the SLURM account
# `pipeline`. Each node is declared with 16 CPUs and 64 GB (SlurmdParameters=config_overrides) so the profile's
# requests (8 CPUs, 32 GB) fit on a small machine; the jobs of both nodes share the real cores.
#
# Layout: a bridge on the host ($BR, $NET.254 for the controller); per compute node nK a network namespace
# $NS_PREFIX-nK with a veth pair (one end on the bridge, eth0 inside, address $NET.K). Each slurmd runs in its
# namespace with its own hostname (UTS namespace) and its own mount namespace in which DIR/hosts is bind-mounted
# over /etc/hosts, so node names resolve to the bridge addresses inside the jobs as on a real cluster
# (MASTER_ADDR = the first node's name; gloo binds to the address of its own hostname). `nsenter --net` rather
# than `ip netns exec`: the latter remounts /sys and slurmd then finds no cgroup filesystem. slurmctld, slurmdbd
# and its own MariaDB server run on the host; the nodes reach the controller at $NET.254; munged is shared (its
# unix socket is on the shared filesystem). squeue keeps finished jobs listed for an hour (MinJobAge);
# SlurmdTimeout is short so that a killed node is marked DOWN quickly. (`grep` reads its whole input here: with
# pipefail, `grep -q` ending early can fail the pipeline by SIGPIPE to the writer.)
#
# State, logs, pid files, the database and the config live under DIR (default /tmp/pipeline-slurm); the cluster
# is isolated by its own SLURM_CONF, ports (PIPELINE_SLURMCTLD_PORT, _SLURMD_PORT, _SLURMDBD_PORT, _MARIADB_PORT),
# subnet (PIPELINE_SLURM_NET), bridge and namespace names (PIPELINE_SLURM_BRIDGE, PIPELINE_SLURM_NS); a second
# cluster beside a first sets PIPELINE_SLURM_ETC=0 (the /etc/slurm link, below, stays the first's).
set -euo pipefail
cmd=${1:-start}
NODE=""
if [ "$cmd" = kill ] || [ "$cmd" = revive ]; then
  NODE=${2:?usage: $0 $cmd NODE [DIR]}
  shift
fi
DIR=${2:-${PIPELINE_SLURM_DIR:-/tmp/pipeline-slurm}}
CONF=$DIR/slurm.conf
DB=$DIR/mariadb
ACCOUNT=pipeline
CTLD_PORT=${PIPELINE_SLURMCTLD_PORT:-16817}
SLURMD_PORT=${PIPELINE_SLURMD_PORT:-16818}
DBD_PORT=${PIPELINE_SLURMDBD_PORT:-16819}
DB_PORT=${PIPELINE_MARIADB_PORT:-16820}
NET=${PIPELINE_SLURM_NET:-10.213.1}
BR=${PIPELINE_SLURM_BRIDGE:-plbr1}
NS_PREFIX=${PIPELINE_SLURM_NS:-pl1}
NODES="n1 n2"
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

configure() { # the configuration files, written to $1 (a folder)
  local out=$1 host
  host=$(hostname -s)
  cat >"$out/slurm.conf" <<CONF
ClusterName=pipeline
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
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$NET.254
AccountingStoragePort=$DBD_PORT
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

network() { # the bridge, and per node a namespace with a veth pair onto it (idempotent)
  if ! ip link show "$BR" >/dev/null 2>&1; then
    ip link add "$BR" type bridge
  fi
  ip addr show dev "$BR" | grep -F "inet $NET.254/" >/dev/null || ip addr add "$NET.254/24" dev "$BR"
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
    ip -n "$ns" addr show dev eth0 | grep -F "inet $NET.$k/" >/dev/null || ip -n "$ns" addr add "$NET.$k/24" dev eth0
    ip -n "$ns" link set eth0 up
  done
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

accounts() { # the cluster, the account of the profile, root in it by default (sacctmgr -i: no prompt)
  if [ -z "$(sacctmgr -n list cluster pipeline format=cluster)" ]; then sacctmgr -i add cluster pipeline >/dev/null; fi
  if [ -z "$(sacctmgr -n list account $ACCOUNT format=account)" ]; then
    sacctmgr -i add account $ACCOUNT Description="pipeline trial" Organization=pipeline >/dev/null
  fi
  if ! sacctmgr -n -s list user root format=account%64 | grep -w $ACCOUNT >/dev/null; then
    sacctmgr -i add user root Account=$ACCOUNT >/dev/null
  fi
  if [ "$(sacctmgr -n list user root format=defaultaccount%64 | tr -d ' ')" != $ACCOUNT ]; then
    sacctmgr -i modify user root set DefaultAccount=$ACCOUNT >/dev/null # also for jobs submitted without -A
  fi
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
  sinfo -h -n "$1" -o %T 2>/dev/null | grep -E '^(idle|mixed|allocated|completing)' >/dev/null
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

stop_daemons() {
  stop_pid "$DIR/slurmd.pid" || true # a one-node cluster of an earlier version of this script
  for n in $NODES; do stop_pid "$DIR/slurmd-$n.pid" || true; done
  stop_pid "$DIR/slurmctld.pid"
  stop_pid "$DIR/slurmdbd.pid"
}

start() {
  # what clusters on one machine share (the packages, munged, the /etc/slurm link) is set up by one start at a
  # time: two test workers start their clusters at once
  exec 8>/tmp/pipeline-slurm-host.lock
  flock 8
  install
  mkdir -p "$DIR"/{state,log,dev}
  chmod 755 "$DIR" "$DIR"/state
  for n in 0 1; do [ -e "$DIR/dev/nv$n" ] || mknod "$DIR/dev/nv$n" c 195 $n; done
  local new changed=0 all=1
  new=$(mktemp -d)
  configure "$new"
  for f in slurm.conf gres.conf hosts slurmdbd.conf; do cmp -s "$new/$f" "$DIR/$f" || changed=1; done
  for d in slurmdbd slurmctld slurmd-n1 slurmd-n2; do running "$DIR/$d.pid" || all=0; done
  if [ $changed = 0 ] && [ $all = 1 ]; then
    rm -rf "$new"
    echo "SLURM (nodes n1, n2) already running (SLURM_CONF=$CONF)"
    return 0
  fi
  if [ $changed = 1 ]; then # an older cluster: restart it with the new configuration, as a new cluster
    # job ids start again at 1, so the accounting database goes too: sacct (which submitit asks) would
    # otherwise report an old job's end for a new job with the same id
    stop_daemons
    stop_pid "$DIR/mariadb.pid"
    rm -rf "$DIR/state" "$DB" && mkdir -p "$DIR/state" && chmod 755 "$DIR/state"
    cp -p "$new"/{slurm.conf,gres.conf,hosts,slurmdbd.conf} "$DIR"/
  fi
  rm -rf "$new"
  network
  if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
    [ -f /etc/munge/munge.key ] || (mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f)
    runuser -u munge -- /usr/sbin/munged 8>&- # the daemon does not keep the lock's file open
  fi
  # srun inside batch jobs (the Snakemake executor plugin's job script) looks for the default path,
  # not SLURM_CONF: link it there unless the machine already has its own SLURM configuration, or this is a
  # second cluster beside the one that owns the link (PIPELINE_SLURM_ETC=0; its jobs must carry SLURM_CONF).
  if [ "${PIPELINE_SLURM_ETC:-1}" = 1 ] &&
    { [ ! -e /etc/slurm/slurm.conf ] || [ "$(readlink /etc/slurm/slurm.conf)" = "$CONF" ]; }; then
    mkdir -p /etc/slurm && ln -sfn "$CONF" /etc/slurm/slurm.conf && ln -sfn "$DIR/gres.conf" /etc/slurm/gres.conf
  fi
  flock -u 8
  exec 8>&-
  start_mariadb
  running "$DIR/slurmdbd.pid" || slurmdbd
  wait_for 60 sacctmgr -n list cluster || fail "slurmdbd did not come up"
  accounts
  running "$DIR/slurmctld.pid" || slurmctld -f "$CONF"
  for n in $NODES; do start_node "$n"; done
  for n in $NODES; do
    wait_for 60 node_up "$n" || fail "node $n did not come up"
  done
  echo "SLURM (nodes n1, n2) up (SLURM_CONF=$CONF)"
}

stop() {
  stop_daemons
  stop_pid "$DIR/mariadb.pid"
  for n in $NODES; do kill_node "$n" >/dev/null; done
  for n in $NODES; do
    ip netns del "$NS_PREFIX-$n" 2>/dev/null || true
    ip link del "$NS_PREFIX-$n-h" 2>/dev/null || true
  done
  ip link del "$BR" 2>/dev/null || true
  echo "SLURM stopped"
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
