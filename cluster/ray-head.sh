#!/usr/bin/env bash
# Start (or stop) a single-machine Ray head for Blueberry: everything on loopback, token auth on.
#
#   cluster/ray-head.sh start      # prints the address and how to submit a job
#   cluster/ray-head.sh stop
#
# Settings (environment): BLUEBERRY_RAY_DIR (token and state, default ~/.blueberry/ray),
# RAY_PORT (GCS, default 6379; Ray's other services take RAY_PORT+1 .. RAY_PORT+7 and worker ports
# RAY_PORT+100 .. RAY_PORT+199, so one firewall rule covers them), RAY_DASHBOARD_PORT (dashboard and
# job API, default 8265), RAY_BIND (dashboard bind address, default 127.0.0.1), RAY_NUM_CPUS.
#
# What listens where: the dashboard and job API bind RAY_BIND (loopback). Ray 2.60 binds its core
# gRPC services (GCS, raylet, object manager, agents) to every interface and has no flag to change
# that; token authentication guards them (a client without the token is refused), and
# docs/cluster.md gives the firewall rule that closes them to other machines.
set -euo pipefail

state_dir="${BLUEBERRY_RAY_DIR:-$HOME/.blueberry/ray}"
token_file="$state_dir/auth_token"
# Ray's session directory, kept short (Unix socket paths are limited to 107 bytes) and private to this
# head, so `stop` ends this head's processes and no other Ray on the machine.
temp_dir="${RAY_TMPDIR:-/tmp/blueberry-ray-$(id -u)-$(printf %s "$state_dir" | cksum | cut -c1-8)}"
bind="${RAY_BIND:-127.0.0.1}"
port="${RAY_PORT:-6379}"
dashboard_port="${RAY_DASHBOARD_PORT:-8265}"

ensure_token() {
  mkdir -p "$state_dir"
  chmod 700 "$state_dir"
  if [ ! -s "$token_file" ]; then
    (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32))' > "$token_file")
  fi
  chmod 600 "$token_file"
}

case "${1:-}" in
  start)
    ensure_token
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$token_file"
    ray start --head --port="$port" --node-manager-port=$((port + 1)) --object-manager-port=$((port + 2)) \
      --runtime-env-agent-port=$((port + 3)) --dashboard-agent-grpc-port=$((port + 4)) \
      --dashboard-agent-listen-port=$((port + 5)) --metrics-export-port=$((port + 6)) \
      --ray-client-server-port=$((port + 7)) --min-worker-port=$((port + 100)) --max-worker-port=$((port + 199)) \
      --dashboard-host="$bind" --dashboard-port="$dashboard_port" --disable-usage-stats --temp-dir="$temp_dir" \
      ${RAY_NUM_CPUS:+--num-cpus="$RAY_NUM_CPUS"} > "$state_dir/start.log" 2>&1 || {
        cat "$state_dir/start.log" >&2; exit 1; }
    cat <<TXT
Ray head running: dashboard and job API on http://$bind:$dashboard_port, token auth on for every service
(Ray's own ports $port-$((port + 199)) listen on all interfaces: firewall them, see docs/cluster.md).
The token is in $token_file (owner-only). To submit from this machine:

  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$token_file RAY_ADDRESS=http://$bind:$dashboard_port
  ray job submit --working-dir . -- python studies/lr_sweep.py --smoke

Stop it with: cluster/ray-head.sh stop
TXT
    ;;
  stop)
    pkill -TERM -f -- "$temp_dir" 2>/dev/null || true
    for _ in $(seq 1 40); do pgrep -f -- "$temp_dir" > /dev/null || break; sleep 0.25; done
    pkill -KILL -f -- "$temp_dir" 2>/dev/null || true
    echo "Ray head stopped."
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
