# Helpers shared by scripts/demo and scripts/test: install what is missing, start services.
# Sourced, not executed. Everything is idempotent: a second run reuses what the first set up.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PG_PORT="${AGENT_RUNTIME_TEST_PG_PORT:-55432}"
PG_DIR="${AGENT_RUNTIME_TEST_PG_DIR:-/var/tmp/agent-runtime-test-pg-$PG_PORT}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "this step installs Debian packages and starts services: run it as root" >&2
    exit 1
  fi
}

# ensure_packages PKG...: apt-get install the Debian packages that are not installed yet.
ensure_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  need_root
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ensure_venv EXTRAS: create .venv and install the project (editable) with the given extras.
ensure_venv() {
  local extras="$1"
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    ensure_packages python3-venv
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating the virtualenv in .venv"
    python3 -m venv "$VENV"
  fi
  local stamp="$VENV/.installed-$extras"
  if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    log "installing agent-runtime[$extras] into .venv"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[$extras]"
    touch "$stamp"
  fi
}

# start_postgres: a private PostgreSQL 15 cluster on 127.0.0.1:$PG_PORT; exports the test URL.
start_postgres() {
  ensure_packages postgresql
  local bin
  bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  export AGENT_RUNTIME_TEST_PG_URL="postgresql+psycopg://postgres@127.0.0.1:$PG_PORT/agent_runtime_test"
  if su postgres -c "$bin/pg_isready -q -h 127.0.0.1 -p $PG_PORT" 2>/dev/null; then
    log "PostgreSQL already listening on 127.0.0.1:$PG_PORT"
  else
    need_root
    if [ ! -f "$PG_DIR/PG_VERSION" ]; then
      log "creating a private PostgreSQL cluster in $PG_DIR"
      mkdir -p "$PG_DIR"
      chown postgres:postgres "$PG_DIR"
      su postgres -c "$bin/initdb -D '$PG_DIR' -A trust -U postgres --no-sync" >/dev/null
    fi
    log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    su postgres -c "$bin/pg_ctl -D '$PG_DIR' -l '$PG_DIR/server.log' -w -t 60 \
      -o \"-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=300\" start" >/dev/null
  fi
  su postgres -c "psql -h 127.0.0.1 -p $PG_PORT -tAc \"SELECT 1 FROM pg_database WHERE datname='agent_runtime_test'\"" \
    | grep -q 1 || su postgres -c "createdb -h 127.0.0.1 -p $PG_PORT agent_runtime_test"
}

# start_docker: make sure a Docker engine answers (starts Debian's dockerd if none does).
start_docker() {
  ensure_packages docker.io iptables
  if docker info >/dev/null 2>&1; then
    return 0
  fi
  need_root
  log "starting dockerd"
  nohup dockerd >/var/log/agent-runtime-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "dockerd did not answer within 60 s; see /var/log/agent-runtime-dockerd.log" >&2
  exit 1
}
