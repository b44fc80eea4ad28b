#!/usr/bin/env bash
# Start (or stop) the MLflow tracking server that every trial logs to.
#
#   cluster/mlflow-server.sh start     # SQLite backend, artifacts served by the server, on loopback
#   cluster/mlflow-server.sh stop      # stops exactly the processes `start` started, and lists them
#
# Settings (environment):
#   MLFLOW_DIR            where the databases, artifacts, log and secrets live (default ~/.blueberry/mlflow, kept 700)
#   MLFLOW_HOST           bind address (default 127.0.0.1; see docs/cluster.md before widening it)
#   MLFLOW_PORT           default 5000
#   MLFLOW_BACKEND_URI    default sqlite:///$MLFLOW_DIR/mlflow.db; for several writers use PostgreSQL,
#                         e.g. postgresql://mlflow:PASSWORD@127.0.0.1:5432/mlflow
#   MLFLOW_AUTH=1         require a login for every request (MLflow's basic-auth app; needs the `auth`
#                         extra: pip install -e ".[auth]"). Users live in $MLFLOW_DIR/basic_auth.db.
#                         The admin user ("admin") is created on the first start, with the password
#                         from MLFLOW_AUTH_ADMIN_PASSWORD, else from the file MLFLOW_AUTH_ADMIN_PASSWORD_FILE
#                         (default $MLFLOW_DIR/admin_password, generated owner-only if absent). There is
#                         no built-in password. Later starts ignore both: change it through MLflow's API.
#
# Artifacts go through the server (--serve-artifacts), so workers only need to reach its port,
# not a shared filesystem.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Absolute, so the server and `stop` agree from any working directory.
dir="$(realpath -m "${MLFLOW_DIR:-$HOME/.blueberry/mlflow}")"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
record="$dir/server.pids"

fail() { echo "mlflow-server.sh: $*" >&2; exit 2; }

# A secret file must be ours and readable by nobody else; a missing one is generated that way.
secret_file() {
  local file="$1" generate="$2"
  if [ ! -e "$file" ] && [ "$generate" = 1 ]; then
    (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > "$file")
  fi
  [ -f "$file" ] && [ -s "$file" ] || fail "$file is missing or empty"
  local owner mode
  read -r owner mode < <(stat -c '%u %a' "$file")
  [ "$owner" = "$(id -u)" ] || fail "$file belongs to uid $owner, not to you; refusing to use it"
  (( (8#$mode & 8#077) == 0 )) || fail "$file is readable by others (mode $mode); chmod 600 it"
}

# MLflow's basic-auth app reads its settings from an ini file. Ours puts the user database next to the
# server's other state (MLflow's own default, sqlite:///basic_auth.db, is relative to the working
# directory), and the environment carries the secrets.
configure_auth() {
  secret_file "$dir/flask_secret_key" 1   # signs the login form's CSRF token; the same for every worker
  MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$dir/flask_secret_key")"
  # MLflow needs the admin password only to create the admin user, on the first start.
  if [ -z "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ] && [ ! -s "$dir/basic_auth.db" ]; then
    local password_file="${MLFLOW_AUTH_ADMIN_PASSWORD_FILE:-$dir/admin_password}" generate=0
    [ -n "${MLFLOW_AUTH_ADMIN_PASSWORD_FILE:-}" ] || generate=1   # only ever generate our own default
    secret_file "$password_file" "$generate"
    MLFLOW_AUTH_ADMIN_PASSWORD="$(cat "$password_file")"
    echo "MLflow admin user: admin, password in $password_file"
  fi
  cat > "$dir/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///$dir/basic_auth.db
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
  export MLFLOW_AUTH_CONFIG_PATH="$dir/basic_auth.ini" MLFLOW_FLASK_SERVER_SECRET_KEY
  if [ -n "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ]; then export MLFLOW_AUTH_ADMIN_PASSWORD; fi
}

case "${1:-}" in
  start)
    mkdir -p "$dir/artifacts"
    chmod 700 "$dir"
    backend="${MLFLOW_BACKEND_URI:-sqlite:///$dir/mlflow.db}"
    if running="$(python3 "$here/procs.py" alive "$record")"; then
      echo "MLflow server already running (pids $running) at http://$host:$port"; exit 0
    fi
    auth_args=()
    if [ "${MLFLOW_AUTH:-0}" = "1" ]; then
      configure_auth
      auth_args=(--app-name basic-auth)
    fi
    # Through the environment, not the command line: a PostgreSQL URI holds a password, and every
    # user of the machine can read command lines.
    export MLFLOW_BACKEND_STORE_URI="$backend"
    python3 "$here/procs.py" spawn "$record" "$dir/server.log" -- \
      mlflow server --artifacts-destination "$dir/artifacts" \
      --serve-artifacts --host "$host" --port "$port" --workers 2 "${auth_args[@]}"
    for _ in $(seq 1 120); do
      if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://$host:$port/health', timeout=1)" 2>/dev/null; then
        shown="$(printf %s "$backend" | sed -E 's#//([^:/@]+):[^@]*@#//\1:***@#')"
        echo "MLflow server at http://$host:$port (backend $shown, log $dir/server.log${auth_args:+, login required})"
        echo "Trials log there with: --tracking-uri http://$host:$port   (or MLFLOW_TRACKING_URI)"
        exit 0
      fi
      if ! python3 "$here/procs.py" alive "$record" > /dev/null; then tail -n 20 "$dir/server.log" >&2; exit 1; fi
      sleep 0.5
    done
    echo "MLflow server did not answer on http://$host:$port/health within 60 s; see $dir/server.log" >&2
    exit 1
    ;;
  stop)
    python3 "$here/procs.py" stop "$record" "MLflow server"
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
