#!/usr/bin/env bash
# Start (or stop) the MLflow tracking server that every trial logs to.
#
#   cluster/mlflow-server.sh start     # SQLite backend, artifacts served by the server, on loopback
#   cluster/mlflow-server.sh stop
#
# Settings (environment):
#   MLFLOW_DIR            where the SQLite database, artifacts and pid live (default ~/.blueberry/mlflow)
#   MLFLOW_HOST           bind address (default 127.0.0.1; see docs/cluster.md before widening it)
#   MLFLOW_PORT           default 5000
#   MLFLOW_BACKEND_URI    default sqlite:///$MLFLOW_DIR/mlflow.db; for several writers use PostgreSQL,
#                         e.g. postgresql://mlflow:PASSWORD@127.0.0.1:5432/mlflow
#   MLFLOW_AUTH=1         require a login (MLflow's basic-auth app) for every request
#
# Artifacts go through the server (--serve-artifacts), so workers only need to reach its port,
# not a shared filesystem.
set -euo pipefail

dir="${MLFLOW_DIR:-$HOME/.blueberry/mlflow}"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
backend="${MLFLOW_BACKEND_URI:-sqlite:///$dir/mlflow.db}"
pid_file="$dir/server.pid"

case "${1:-}" in
  start)
    mkdir -p "$dir/artifacts"
    if [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
      echo "MLflow server already running (pid $(cat "$pid_file")) at http://$host:$port"; exit 0
    fi
    auth_args=()
    if [ "${MLFLOW_AUTH:-0}" = "1" ]; then auth_args=(--app-name basic-auth); fi
    # setsid: the server and its workers form one process group, which `stop` ends together.
    setsid mlflow server --backend-store-uri "$backend" --artifacts-destination "$dir/artifacts" \
      --serve-artifacts --host "$host" --port "$port" --workers 2 "${auth_args[@]}" \
      > "$dir/server.log" 2>&1 < /dev/null &
    echo $! > "$pid_file"
    for _ in $(seq 1 120); do
      if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://$host:$port/health', timeout=1)" 2>/dev/null; then
        echo "MLflow server at http://$host:$port (backend $backend, log $dir/server.log)"
        echo "Trials log there with: --tracking-uri http://$host:$port   (or MLFLOW_TRACKING_URI)"
        exit 0
      fi
      if ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then cat "$dir/server.log" >&2; exit 1; fi
      sleep 0.5
    done
    echo "MLflow server did not answer on http://$host:$port/health within 60 s; see $dir/server.log" >&2
    exit 1
    ;;
  stop)
    if [ -f "$pid_file" ]; then
      pid="$(cat "$pid_file")"
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -KILL -- "-$pid" 2>/dev/null || true
      rm -f "$pid_file"
    fi
    echo "MLflow server stopped."
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
