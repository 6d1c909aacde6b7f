#!/usr/bin/env bash
# A private single-node Ray cluster on 127.0.0.1 for `ray job submit`, on this one machine.
#
#   scripts/ray_cluster.sh start     # head node + dashboard/job server on 127.0.0.1:8265
#   scripts/ray_cluster.sh status
#   scripts/ray_cluster.sh stop
#
#   ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
#       python -m data_pipeline.prepare --config configs/data/tiny-synthetic.yaml --set output_dir=$PWD/data/tiny
#   (the job runs in a copy of the working dir: give absolute output/data paths, see data_pipeline/prepare.py)
#
# Settings (environment): DPR_RAY_TEMP (temp/session dir, default /tmp/dpr_ray_<uid>; keep it short,
# Ray puts unix sockets under it), DPR_RAY_PORT (GCS, 6379), DPR_RAY_DASHBOARD_PORT (8265),
# DPR_RAY_AGENT_PORT (job agent, 52365), DPR_RAY_CLIENT_PORT (10001), DPR_RAY_NUM_CPUS (2).
# Change all the ports to run a second cluster beside a first one (the client port must stay
# outside the worker port range 10002-19999).
#
# Why `stop` does not call `ray stop`: that kills every Ray process on the machine, including other
# people's clusters and in-process ray.init() sessions. Instead `start` runs `ray start --block`
# as the leader of a new session (setsid) and records its PID. GCS, raylet, dashboard and the
# workers stay in that session (workers get their own process group, so a group kill would miss
# them); job drivers start a session of their own but are children of a JobSupervisor actor.
# `stop` therefore signals the session's processes and all their descendants, and nothing else.
#
# The environment below is for this one-machine set-up only (ENV_NOTES): keep it out of real
# cluster configs and images.
#   RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0  makes Ray honour --node-ip-address=127.0.0.1 (single node)
#   RAY_AUTH_MODE=disabled               no token auth, which `ray job submit` would then need
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TEMP=${DPR_RAY_TEMP:-/tmp/dpr_ray_$(id -u)}
PORT=${DPR_RAY_PORT:-6379}
DASH_PORT=${DPR_RAY_DASHBOARD_PORT:-8265}
AGENT_PORT=${DPR_RAY_AGENT_PORT:-52365}
CLIENT_PORT=${DPR_RAY_CLIENT_PORT:-10001}
NUM_CPUS=${DPR_RAY_NUM_CPUS:-2}
PIDFILE=$TEMP/cluster.pid
LOG=$TEMP/cluster.log

export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export RAY_AUTH_MODE=disabled
# The job's `python` is whatever `ray start` saw first on PATH: make it the project's venv.
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f "$REPO/.venv/bin/activate" ]; then
  # shellcheck disable=SC1091
  source "$REPO/.venv/bin/activate"
fi

running_pid() {
  # Prints the recorded PID if that process is alive and is still our `ray start`.
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid=$(cat "$PIDFILE")
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--temp-dir=$TEMP" || return 1
  echo "$pid"
}

cluster_pids() {
  # Live processes of the session led by $1 and, transitively, their children (zombies are
  # already dead and cannot be signalled: skip them).
  ps -eo pid=,ppid=,sid=,stat= | awk -v leader="$1" '
    $4 ~ /^Z/ { next }
    { parent[$1] = $2; if ($3 == leader) mark[$1] = 1 }
    END {
      do { grew = 0; for (p in parent) if (!(p in mark) && (parent[p] in mark)) { mark[p] = 1; grew = 1 } } while (grew)
      for (p in mark) print p
    }'
}

cluster_ready() {
  # `ray start --block` logs this line once every head process is launched; the dashboard can
  # answer earlier, before the raylet and the job agent exist.
  grep -q "will now block forever" "$LOG" 2>/dev/null || return 1
  python - "$DASH_PORT" "$AGENT_PORT" <<'PY'
import socket, sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/api/jobs/", timeout=2) as r:
        assert r.status == 200
    socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=2).close()
except Exception:
    sys.exit(1)
PY
}

start() {
  if pid=$(running_pid); then
    echo "ray cluster already running (pid $pid, dashboard http://127.0.0.1:$DASH_PORT)"
    return 0
  fi
  mkdir -p "$TEMP"
  echo "starting ray head: 127.0.0.1:$PORT, $NUM_CPUS CPUs, temp dir $TEMP, log $LOG"
  setsid ray start --head --block \
    --node-ip-address=127.0.0.1 --port="$PORT" --num-cpus="$NUM_CPUS" \
    --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASH_PORT" \
    --dashboard-agent-listen-port="$AGENT_PORT" --ray-client-server-port="$CLIENT_PORT" \
    --temp-dir="$TEMP" --disable-usage-stats >"$LOG" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 120); do
    if cluster_ready; then
      echo "ray cluster up: pid $(cat "$PIDFILE"), jobs at http://127.0.0.1:$DASH_PORT"
      return 0
    fi
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      echo "ray start exited; last lines of $LOG:" >&2
      tail -n 30 "$LOG" >&2
      rm -f "$PIDFILE"
      return 1
    fi
    sleep 1
  done
  echo "dashboard did not answer on 127.0.0.1:$DASH_PORT within 120 s; stopping (log: $LOG)" >&2
  stop
  return 1
}

stop() {
  local pid pids
  if ! pid=$(running_pid); then
    echo "no ray cluster of ours is running (pid file $PIDFILE)"
    rm -f "$PIDFILE"
    return 0
  fi
  pids=$(cluster_pids "$pid")
  echo "stopping ray cluster (session $pid: $(echo $pids | wc -w) processes)"
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 1 16); do  # ~8 s grace: busy workers and job drivers often ignore SIGTERM
    [ -n "$(cluster_pids "$pid")" ] || break
    sleep 0.5
  done
  pids=$(cluster_pids "$pid")
  if [ -n "$pids" ]; then
    echo "killing $(echo $pids | wc -w) processes that ignored SIGTERM"
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
  echo "stopped"
}

status() {
  local pid
  if ! pid=$(running_pid); then
    echo "not running (pid file $PIDFILE)"
    return 1
  fi
  echo "running: pid $pid, $(cluster_pids "$pid" | wc -l) processes, jobs at http://127.0.0.1:$DASH_PORT"
  ray status --address "127.0.0.1:$PORT"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
