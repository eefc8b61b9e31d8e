#!/usr/bin/env bash
# A team MLflow tracking server: PostgreSQL as the backend store, artifacts proxied by the server.
#
#   scripts/tracking_server.sh start  [DIR] [--host 0.0.0.0] [--port 5000]
#   scripts/tracking_server.sh status [DIR]
#   scripts/tracking_server.sh stop   [DIR]
#
# DIR (default $MAHTNET_TRACKING_DIR, else <repo>/.mlflow-server) holds everything:
#   postgres/data  the PostgreSQL cluster (initdb on the first start; owned by user postgres when
#                  run as root, since initdb refuses root), postgres/run its unix socket,
#                  postgres/server.log
#   pgpass         the database password (user mlflow, database mlflow; mode 600)
#   artifacts/     the artifacts, unless MLFLOW_ARTIFACTS_DESTINATION names another place, e.g.
#                  s3://bucket/mlflow (the server needs boto3 and AWS_* / MLFLOW_S3_ENDPOINT_URL)
#   mlflow.log, mlflow.pid, mlflow.port, pg.port, env (the export line)
# PostgreSQL listens on 127.0.0.1 only (password auth), on a free port; `mlflow server` on
# --host (MLFLOW_SERVER_HOST, default 127.0.0.1; 0.0.0.0 for a team, see docs/team.md) and
# --port (MLFLOW_SERVER_PORT, default a free one). Further `mlflow server` options:
# MLFLOW_SERVER_OPTS (e.g. "--allowed-hosts mlflow.lab.example"), MLFLOW_SERVER_WORKERS (4).
# PostgreSQL binaries: PG_BIN, else initdb on PATH, else the newest /usr/lib/postgresql/*/bin.
# `start` is a no-op for what already runs; it prints the line pointing the pipeline at the server:
#   export MLFLOW_TRACKING_URI=http://127.0.0.1:PORT
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "tracking_server.sh: $*" >&2; exit 1; }

cmd="${1:-}"
[[ "$cmd" =~ ^(start|stop|status)$ ]] || die "usage: $0 start|stop|status [DIR] [--host H] [--port P]"
shift
DIR="${MAHTNET_TRACKING_DIR:-$ROOT/.mlflow-server}"
HOST="${MLFLOW_SERVER_HOST:-127.0.0.1}"
PORT="${MLFLOW_SERVER_PORT:-}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --host) HOST="${2:?--host needs a value}"; shift 2 ;;
    --port) PORT="${2:?--port needs a value}"; shift 2 ;;
    -*) die "unknown option $1" ;;
    *) DIR="$1"; shift ;;
  esac
done
if [[ ! -d "$DIR" ]]; then
  if [[ "$cmd" != start ]]; then
    echo "nothing at $DIR: not running"
    [[ "$cmd" == stop ]] && exit 0
    exit 3
  fi
  mkdir -p "$DIR"
fi
DIR="$(cd "$DIR" && pwd)"
PG="$DIR/postgres"
if [[ -z "${PYTHON:-}" ]]; then  # the first python3 with mlflow: PATH's, else the repo's .venv
  for candidate in "$(command -v python3 || true)" "$ROOT/.venv/bin/python"; do
    if [[ -x "$candidate" ]] && "$candidate" -c 'import importlib.util as u; assert u.find_spec("mlflow")' 2>/dev/null; then
      PYTHON="$candidate"
      break
    fi
  done
  if [[ -z "${PYTHON:-}" ]]; then  # stop and status need no mlflow: any python3 does
    [[ "$cmd" == start ]] && die "no python3 with mlflow found (pip install -r requirements.txt, or set PYTHON)"
    PYTHON="$(command -v python3 || echo python3)"
  fi
fi

pg_bin() {
  if [[ -n "${PG_BIN:-}" ]]; then echo "$PG_BIN"; return; fi
  local initdb
  if initdb="$(command -v initdb)"; then dirname "$(readlink -f "$initdb")"; return; fi
  initdb="$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)"
  [[ -n "$initdb" ]] || die "PostgreSQL server binaries not found (initdb): apt-get install -y postgresql, or set PG_BIN"
  dirname "$initdb"
}

# PostgreSQL commands run as user postgres when we are root (initdb and postgres refuse root).
as_pg() {
  if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pg_running() { [[ -d "$PG/data" ]] && as_pg "$BIN/pg_ctl" -D "$PG/data" status >/dev/null 2>&1; }

mlflow_pid() {  # the pid of a live `mlflow server` started here, else nothing
  local pid
  pid="$(cat "$DIR/mlflow.pid" 2>/dev/null || true)"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
  return 0
}

healthy() {  # /health answers OK at port $1
  "$PYTHON" - "$1" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
with opener.open(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2) as r:
    sys.exit(0 if r.read().strip() == b"OK" else 1)
EOF
}

init_cluster() {
  [[ -f "$PG/data/PG_VERSION" ]] && return
  echo "initialising a PostgreSQL cluster in $PG/data" >&2
  if [[ $EUID -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user (the postgresql package makes one)"
  fi
  mkdir -p "$PG"
  chmod 700 "$PG"
  local password
  password="$("$PYTHON" -c 'import secrets; print(secrets.token_hex(16))')"
  (umask 077; echo "127.0.0.1:*:mlflow:mlflow:$password" >"$DIR/pgpass"; echo "$password" >"$PG/pwfile")
  if [[ $EUID -eq 0 ]]; then
    chown -R postgres: "$PG"
    chmod o+x "$DIR"  # postgres passes through DIR to its folder (DIR's files stay private)
  fi
  as_pg test -w "$PG" || { rm -f "$PG/pwfile"; die "user postgres cannot reach $PG: a parent folder of $DIR is not searchable by it (chmod o+x it, or choose a folder such as /srv/mlflow)"; }
  as_pg "$BIN/initdb" -D "$PG/data" -U mlflow --pwfile="$PG/pwfile" --auth-local=trust \
    --auth-host=scram-sha-256 --no-locale -E UTF8 >"$DIR/initdb.log" 2>&1 \
    || { rm -f "$PG/pwfile"; die "initdb failed, see $DIR/initdb.log"; }
  rm -f "$PG/pwfile"
}

start_pg() {
  if pg_running; then
    echo "PostgreSQL: already running on 127.0.0.1:$(cat "$DIR/pg.port")" >&2
    return
  fi
  local port
  port="$(free_port)"
  mkdir -p "$PG/run"
  [[ $EUID -eq 0 ]] && chown postgres: "$PG/run"
  as_pg "$BIN/pg_ctl" -D "$PG/data" -l "$PG/server.log" -w -t 60 \
    -o "-p $port -k '$PG/run' -c listen_addresses=127.0.0.1" start >/dev/null \
    || die "PostgreSQL did not start, see $PG/server.log"
  echo "$port" >"$DIR/pg.port"
  echo "PostgreSQL: started on 127.0.0.1:$port ($PG/data)" >&2
  local exists
  exists="$(as_pg "$BIN/psql" -h "$PG/run" -p "$port" -U mlflow -d postgres -tAc \
    "select 1 from pg_database where datname = 'mlflow'")"
  [[ "$exists" == 1 ]] || as_pg "$BIN/createdb" -h "$PG/run" -p "$port" -U mlflow mlflow
}

start_mlflow() {
  local pid port
  pid="$(mlflow_pid)"
  if [[ -n "$pid" ]]; then
    echo "MLflow: already running (pid $pid)" >&2
    return
  fi
  "$PYTHON" -c 'import mlflow, psycopg2' 2>/dev/null \
    || die "$PYTHON lacks mlflow or psycopg2 (pip install -r requirements.txt)"
  port="${PORT:-$(free_port)}"
  local dest="${MLFLOW_ARTIFACTS_DESTINATION:-$DIR/artifacts}"
  [[ "$dest" == *://* ]] || mkdir -p "$dest"
  local uri="postgresql+psycopg2://mlflow@127.0.0.1:$(cat "$DIR/pg.port")/mlflow"
  # its own session (process group), so that stop ends the server and its workers together
  # shellcheck disable=SC2086
  PGPASSFILE="$DIR/pgpass" "$PYTHON" - "$DIR/mlflow.log" "$DIR/mlflow.pid" "$PYTHON" -m mlflow server \
    --backend-store-uri "$uri" --artifacts-destination "$dest" --host "$HOST" --port "$port" \
    --workers "${MLFLOW_SERVER_WORKERS:-4}" ${MLFLOW_SERVER_OPTS:-} <<'EOF'
import subprocess, sys
log, pidfile, *cmd = sys.argv[1:]
with open(log, "ab") as out:
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
open(pidfile, "w").write(f"{p.pid}\n")
EOF
  echo "$port" >"$DIR/mlflow.port"
  echo "$HOST" >"$DIR/mlflow.host"
  pid="$(cat "$DIR/mlflow.pid")"
  for _ in $(seq 240); do  # its first start against a new database migrates the schema
    healthy "$port" && break
    kill -0 "$pid" 2>/dev/null || die "mlflow server exited, see $DIR/mlflow.log"
    sleep 0.5
  done
  healthy "$port" || die "mlflow server did not answer /health in 120 s, see $DIR/mlflow.log"
  echo "MLflow: started on $HOST:$port (pid $pid), artifacts in $dest" >&2
}

stop_mlflow() {
  local pid
  pid="$(mlflow_pid)"
  if [[ -z "$pid" ]]; then
    echo "MLflow: not running" >&2
  else
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 40); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    echo "MLflow: stopped (pid $pid)" >&2
  fi
  rm -f "$DIR/mlflow.pid"
}

stop_pg() {
  if pg_running; then
    as_pg "$BIN/pg_ctl" -D "$PG/data" -m fast -w -t 60 stop >/dev/null
    echo "PostgreSQL: stopped" >&2
  else
    echo "PostgreSQL: not running" >&2
  fi
}

export_line() {
  local host
  host="$(cat "$DIR/mlflow.host")"
  [[ "$host" == 0.0.0.0 || "$host" == "::" ]] && host=127.0.0.1  # others: this machine's name
  echo "export MLFLOW_TRACKING_URI=http://$host:$(cat "$DIR/mlflow.port")"
}

BIN="$(pg_bin)"
case "$cmd" in
  start)
    init_cluster
    start_pg
    start_mlflow
    export_line | tee "$DIR/env"
    ;;
  stop)
    stop_mlflow
    stop_pg
    ;;
  status)
    ok=0
    if pg_running; then
      echo "PostgreSQL: running on 127.0.0.1:$(cat "$DIR/pg.port") ($PG/data)"
    else
      echo "PostgreSQL: not running"; ok=3
    fi
    pid="$(mlflow_pid)"
    if [[ -n "$pid" ]] && healthy "$(cat "$DIR/mlflow.port")"; then
      echo "MLflow: running on $(cat "$DIR/mlflow.host"):$(cat "$DIR/mlflow.port") (pid $pid)"
      export_line
    elif [[ -n "$pid" ]]; then
      echo "MLflow: pid $pid does not answer /health (see $DIR/mlflow.log)"; ok=3
    else
      echo "MLflow: not running"; ok=3
    fi
    exit "$ok"
    ;;
esac
