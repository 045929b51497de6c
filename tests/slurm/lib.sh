# Shell helpers for cluster.sh (the test SLURM cluster); sourced, not run.
# They use $DIR (the cluster's state folder) from the sourcing script.

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # wait_for SECONDS COMMAND...: until the command succeeds
  local n=$(($1 * 2))
  shift
  for _ in $(seq 1 "$n"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  return 1
}

fail() {
  echo "$1; logs in $DIR/log" >&2
  tail -20 "$DIR"/log/*.log >&2 || true
  exit 1
}

stop_pid() { # stop the daemon of a pid file and wait until it is gone
  if running "$1"; then
    local pid
    pid=$(cat "$1")
    kill "$pid"
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || return 0
      sleep 0.5
    done
    echo "$1: process $pid did not stop" >&2
    return 1
  fi
}
