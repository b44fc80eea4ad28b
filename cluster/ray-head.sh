#!/usr/bin/env bash
# Start (or stop) a single-machine Ray head for Blueberry: token auth on, dashboard on loopback,
# every other port in one pinned range.
#
#   cluster/ray-head.sh start      # prints the address and how to submit a job
#   cluster/ray-head.sh stop       # stops exactly the processes `start` started, and lists them
#
# Settings (environment):
#   BLUEBERRY_RAY_DIR   token and state, default ~/.blueberry/ray (kept 700)
#   RAY_PORT            GCS port, default 6379; the head's other ports follow it (below)
#   RAY_DASHBOARD_PORT  dashboard and job API, default 8265, on RAY_BIND
#   RAY_BIND            dashboard bind address, default 127.0.0.1
#   RAY_TMPDIR          a private directory for Ray's sessions, default /tmp/blueberry-ray-UID-HASH;
#                       created 700, refused if world-writable or owned by another user
#   RAY_NUM_CPUS        CPUs to offer, default all
#
# Ports (P = RAY_PORT), all inside P .. P+199 so one firewall rule covers them; docs/cluster.md lists
# which of them check the token. Ray 2.60 binds them to every interface (or the machine's address) and
# has no flag to change that.
#   P GCS   P+1 raylet   P+2 object manager   P+3 runtime-env agent   P+4 dashboard agent gRPC
#   P+5 dashboard agent HTTP   P+6 metrics export   P+7 Ray Client server   P+8 dashboard metrics
#   P+9 autoscaler metrics   P+100 .. P+199 workers
#
# `start` runs `ray start` in a session of its own and records every process of that session in
# $BLUEBERRY_RAY_DIR/head.pids (`PID START_TICKS COMMAND` per line); `stop` signals those still running
# (same PID and start time), the rest of their session and their descendants (cluster/procs.py), and
# nothing else: not other Ray instances, not other users' processes.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state_dir="${BLUEBERRY_RAY_DIR:-$HOME/.blueberry/ray}"
token_file="$state_dir/auth_token"
record="$state_dir/head.pids"
# Kept short: Ray's Unix socket paths under it are limited to 107 bytes.
temp_dir="${RAY_TMPDIR:-/tmp/blueberry-ray-$(id -u)-$(printf %s "$state_dir" | cksum | cut -c1-8)}"
bind="${RAY_BIND:-127.0.0.1}"
port="${RAY_PORT:-6379}"
dashboard_port="${RAY_DASHBOARD_PORT:-8265}"

refuse() { echo "ray-head.sh: $*" >&2; exit 2; }

ensure_token() {
  mkdir -p "$state_dir"
  chmod 700 "$state_dir"
  if [ ! -s "$token_file" ]; then
    (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32))' > "$token_file")
  fi
  chmod 600 "$token_file"
}

# Ray keeps sockets, logs and the code of submitted jobs in its temp dir: whoever can write there can
# swap what the head runs. Ray makes that directory world-writable (0777) on every start
# (ray/_common/utils.py, try_make_directory_shared), so it goes inside $temp_dir, which we create 700,
# or use only if it is ours and not world-writable (RAY_TMPDIR=/tmp is refused).
ensure_private_temp_dir() {
  mkdir -m 700 "$temp_dir" 2>/dev/null || true
  local owner mode advice="remove it, or set RAY_TMPDIR to a private directory"
  if [ -L "$temp_dir" ] || [ ! -d "$temp_dir" ] || ! read -r owner mode < <(stat -c '%u %a' "$temp_dir"); then
    refuse "RAY_TMPDIR $temp_dir is not a directory (or is a symlink): $advice"
  fi
  [ "$owner" = "$(id -u)" ] || refuse "RAY_TMPDIR $temp_dir belongs to uid $owner, not to you ($(id -u)): $advice"
  (( (8#$mode & 8#002) == 0 )) || refuse "RAY_TMPDIR $temp_dir is world-writable (mode $mode): $advice"
}

case "${1:-}" in
  start)
    ensure_token
    ensure_private_temp_dir
    if running="$(python3 "$here/procs.py" alive "$record")"; then
      echo "Ray head already running (pids $running); stop it with: cluster/ray-head.sh stop"; exit 0
    fi
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$token_file"
    # Ray reads these two from the environment only; unset, they are 44227 and 44217 on every interface.
    export DASHBOARD_METRIC_PORT=$((port + 8)) AUTOSCALER_METRIC_PORT=$((port + 9))
    python3 "$here/procs.py" run "$record" -- \
      ray start --head --port="$port" --node-manager-port=$((port + 1)) --object-manager-port=$((port + 2)) \
      --runtime-env-agent-port=$((port + 3)) --dashboard-agent-grpc-port=$((port + 4)) \
      --dashboard-agent-listen-port=$((port + 5)) --metrics-export-port=$((port + 6)) \
      --ray-client-server-port=$((port + 7)) --min-worker-port=$((port + 100)) --max-worker-port=$((port + 199)) \
      --dashboard-host="$bind" --dashboard-port="$dashboard_port" --disable-usage-stats --temp-dir="$temp_dir/ray" \
      ${RAY_NUM_CPUS:+--num-cpus="$RAY_NUM_CPUS"} > "$state_dir/start.log" 2>&1 || {
        cat "$state_dir/start.log" >&2
        python3 "$here/procs.py" stop "$record" "What the failed start left" --last gcs_server >&2
        exit 1; }
    cat <<TXT
Ray head running: dashboard and job API on http://$bind:$dashboard_port, token auth on.
Ray's other ports, $port-$((port + 199)), listen on every interface and its metrics ports need no token:
firewall that range (docs/cluster.md, "Security model").
The token is in $token_file (owner-only). To submit from this machine:

  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$token_file RAY_ADDRESS=http://$bind:$dashboard_port
  ray job submit --working-dir . -- python studies/lr_sweep.py --smoke

Stop it with: cluster/ray-head.sh stop
TXT
    ;;
  stop)
    # GCS last, as `ray stop` does: the autoscaler, sent SIGTERM, reports to the GCS before exiting
    # and hangs until SIGKILL if the GCS is already gone.
    python3 "$here/procs.py" stop "$record" "Ray head" --last gcs_server
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
