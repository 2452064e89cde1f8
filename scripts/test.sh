#!/usr/bin/env bash
# Runs the whole test suite. Starts PostgreSQL and Redis when they are not
# running (installing them with apt where absent), installs Prometheus and
# promtool where absent (the observability test runs its own Prometheus),
# installs Chromium and chromedriver where absent (the console's browser
# test), installs schemathesis and openapi-spec-validator into a virtual
# environment under the user's cache directory where absent (the OpenAPI
# conformance test), builds and starts an S3-compatible server (s3s-fs,
# from crates.io, cached under ~/.cache/admedia) for the object-storage
# tests, makes Python virtual environments with Pillow for the example
# model program and with pytest, websockets and Pillow for the Python
# client's tests (its worker SDK serves the example worker), creates a fresh
# test database, and runs `cargo test --workspace` against all of them.
#
#   ./scripts/test.sh               # everything
#   ./scripts/test.sh -- --nocapture   # extra args go to cargo test
set -euo pipefail
cd "$(dirname "$0")/.."

PGHOST="${PGHOST:-127.0.0.1}"
PGPORT="${PGPORT:-5432}"
PGUSER="${PGUSER:-postgres}"
TEST_DB="${ADMEDIA_TEST_DB:-admedia_test}"
REDIS_PORT="${REDIS_PORT:-6379}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

pg_up() { pg_isready -h "$PGHOST" -p "$PGPORT" -q 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

ensure_postgres() {
    if command -v pg_isready >/dev/null && pg_up; then return; fi
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        log "installing PostgreSQL"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >/dev/null
    fi
    local version
    version="$(ls /etc/postgresql | sort -V | tail -n1)"
    # Trust on loopback, as a throwaway test cluster should be.
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    if ! as_root grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
        as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal all all trust' "$hba"
    fi
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do pg_up && return; sleep 1; done
    log "PostgreSQL did not come up"; exit 1
}

ensure_redis() {
    if command -v redis-cli >/dev/null && redis_up; then return; fi
    if ! command -v redis-server >/dev/null; then
        log "installing Redis"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    fi
    log "starting Redis"
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
    for _ in $(seq 1 30); do redis_up && return; sleep 1; done
    log "Redis did not come up"; exit 1
}

# Installed only: tests/observability.rs starts its own Prometheus on a free
# port with a throwaway data directory, so the package's service is kept
# from starting (policy-rc.d) and left disabled.
ensure_prometheus() {
    if command -v prometheus >/dev/null && command -v promtool >/dev/null; then return; fi
    if [ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ]; then return; fi
    log "installing Prometheus"
    local policy=/usr/sbin/policy-rc.d created="" rc=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod +x "$policy"
        created=1
    fi
    as_root apt-get update -qq || rc=$?
    if [ "$rc" -eq 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null || rc=$?
    fi
    if [ -n "$created" ]; then as_root rm -f "$policy"; fi
    if [ "$rc" -ne 0 ]; then log "installing Prometheus failed"; exit 1; fi
    if [ -d /run/systemd/system ]; then
        as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
}

# Installed only: tests/console.rs starts its own chromedriver on a free
# port, which drives a headless Chromium with a throwaway profile.
ensure_chromium() {
    if [ -x /usr/bin/chromium ] && command -v chromedriver >/dev/null; then return; fi
    log "installing Chromium and chromedriver"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
}

# tests/openapi_conformance.rs runs both Python tools against the embedded
# server. They live outside the clone, in a venv of their own, so a fresh
# machine (or an emptied cache) gets them on the first run. The schemathesis
# major version is pinned: the test uses its command-line flags.
PYTHON_TOOLS="${ADMEDIA_PYTHON_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/admedia/venv}"
ensure_python_tools() {
    if [ -x "$PYTHON_TOOLS/bin/schemathesis" ] && [ -x "$PYTHON_TOOLS/bin/openapi-spec-validator" ]; then
        return
    fi
    log "installing schemathesis and openapi-spec-validator into $PYTHON_TOOLS"
    if ! command -v python3 >/dev/null || ! python3 -m venv --help >/dev/null 2>&1 \
        || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-pip >/dev/null
    fi
    rm -rf "$PYTHON_TOOLS"
    mkdir -p "$(dirname "$PYTHON_TOOLS")"
    python3 -m venv "$PYTHON_TOOLS"
    "$PYTHON_TOOLS/bin/pip" install -q --disable-pip-version-check \
        'schemathesis>=4.32,<5' 'openapi-spec-validator>=0.7,<1'
}

# An S3-compatible server for the object-storage tests: s3s-fs, built from
# crates.io once per version into a cache outside the clone (a cold build
# takes a few minutes of CPU), started on a free port with a throwaway
# directory and known credentials, stopped when this script exits.
S3S_VERSION=0.14.1
CACHE="${ADMEDIA_CACHE:-$HOME/.cache/admedia}"
ensure_python() {
    if command -v python3 >/dev/null; then return; fi
    log "installing Python"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
}

ensure_s3() {
    local root="$CACHE/s3s-fs-$S3S_VERSION"
    if [ ! -x "$root/bin/s3s-fs" ]; then
        log "building s3s-fs $S3S_VERSION into $root (once)"
        cargo install --quiet --locked --root "$root" "s3s-fs@$S3S_VERSION" --features binary
    fi
    S3_DIR="$(mktemp -d)"
    mkdir -p "$S3_DIR/admedia-test"
    S3_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    "$root/bin/s3s-fs" --host 127.0.0.1 --port "$S3_PORT" \
        --access-key admedia-test --secret-key admedia-test-secret "$S3_DIR" >"$S3_DIR.log" 2>&1 &
    S3_PID=$!
    trap 'kill "$S3_PID" 2>/dev/null || true; rm -rf "$S3_DIR" "$S3_DIR.log"' EXIT
    for _ in $(seq 1 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null; then
            export ADMEDIA_TEST_S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
            export ADMEDIA_TEST_S3_BUCKET=admedia-test
            export ADMEDIA_TEST_S3_ACCESS_KEY=admedia-test
            export ADMEDIA_TEST_S3_SECRET_KEY=admedia-test-secret
            return
        fi
        sleep 0.2
    done
    log "s3s-fs did not come up: $(cat "$S3_DIR.log")"; exit 1
}

# Pillow for examples/model_server.py, in a virtual environment of its own.
ensure_pillow() {
    local venv="$CACHE/venv-pillow"
    if ! "$venv/bin/python" -c 'import PIL' 2>/dev/null; then
        log "installing Pillow into $venv"
        if ! python3 -m venv "$venv" 2>/dev/null; then
            as_root apt-get update -qq
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv "$venv"
        fi
        "$venv/bin/pip" install --quiet pillow
    fi
    export ADMEDIA_TEST_PYTHON="$venv/bin/python"
}

# tests/python_client.rs runs the Python client's pytest suite in a venv of
# its own outside the clone, with pytest, the client's dependencies (httpx,
# websockets), Pillow for the example worker and the client's build backend;
# the test installs the client from the clone on every run. Keep the list
# the same as REQUIREMENTS there.
PYTHON_CLIENT_VENV="${ADMEDIA_PYTHON_CLIENT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/admedia/venv-client}"
ensure_python_client() {
    if "$PYTHON_CLIENT_VENV/bin/python" -c 'import pytest, httpx, websockets, PIL, hatchling' 2>/dev/null; then
        return
    fi
    log "installing pytest, httpx, websockets, Pillow and hatchling into $PYTHON_CLIENT_VENV"
    rm -rf "$PYTHON_CLIENT_VENV"
    mkdir -p "$(dirname "$PYTHON_CLIENT_VENV")"
    python3 -m venv "$PYTHON_CLIENT_VENV"
    "$PYTHON_CLIENT_VENV/bin/pip" install -q --disable-pip-version-check \
        'pytest>=7,<10' 'httpx>=0.25,<1' 'websockets>=13,<18' 'pillow>=9' 'hatchling>=1.18'
}

ensure_postgres
ensure_redis
ensure_prometheus
ensure_chromium
ensure_python_tools
export ADMEDIA_PYTHON_TOOLS="$PYTHON_TOOLS"
ensure_python
ensure_s3
ensure_pillow
ensure_python_client
export ADMEDIA_PYTHON_CLIENT_VENV="$PYTHON_CLIENT_VENV"

log "fresh test database $TEST_DB"
psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -qtAc "DROP DATABASE IF EXISTS $TEST_DB WITH (FORCE)" >/dev/null
psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -qtAc "CREATE DATABASE $TEST_DB" >/dev/null

export DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$TEST_DB"
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/"
# With the services provided, a test that cannot reach them must fail.
export CI="${CI:-true}"

log "cargo test --workspace"
cargo test --workspace --no-fail-fast "$@"
