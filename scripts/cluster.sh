#!/usr/bin/env bash
# Three orchestrator nodes on one PostgreSQL (and Redis), simulated GPU
# workers on each, and a short load through all three. Kill the leader
# (`kill -9 <pid>` from the table printed below) to watch a standby take
# over; Ctrl-C stops everything.
#
#   ./scripts/cluster.sh                       # database admedia_cluster on 127.0.0.1
#   DATABASE_URL=postgres://... ./scripts/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DB_NAME="${ADMEDIA_CLUSTER_DB:-admedia_cluster}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/$DB_NAME}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/}"
export ADMEDIA_ADMIN_TOKEN="${ADMEDIA_ADMIN_TOKEN:-cluster-admin-token-0123456789abcdef}"
export ADMEDIA_WORKER_TOKEN="${ADMEDIA_WORKER_TOKEN:-cluster-worker-token-0123456789abcdef}"
export ADMEDIA_SIM_WORKERS="${ADMEDIA_SIM_WORKERS:-2}"
export ADMEDIA_RATE_LIMITS="${ADMEDIA_RATE_LIMITS:-free=0,basic=0,professional=0,enterprise=0}"
PORTS=(8081 8082 8083)

if [ -z "${ADMEDIA_CLUSTER_KEEP_DB:-}" ] && [[ "$DATABASE_URL" == */"$DB_NAME" ]]; then
    psql -h 127.0.0.1 -U postgres -d postgres -qtAc "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null
    psql -h 127.0.0.1 -U postgres -d postgres -qtAc "CREATE DATABASE $DB_NAME" >/dev/null
fi

cargo build --release -p admedia -p admedia-loadtest >&2
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

for i in 0 1 2; do
    port="${PORTS[$i]}"
    ADMEDIA_BIND="127.0.0.1:$port" ADMEDIA_NODE_ID="node-$((i + 1))" \
        ./target/release/admedia >"target/cluster-node-$((i + 1)).log" 2>&1 &
    pids+=("$!")
    echo "node-$((i + 1))  pid $!  http://127.0.0.1:$port  log target/cluster-node-$((i + 1)).log"
done

for port in "${PORTS[@]}"; do
    for _ in $(seq 1 100); do
        curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break
        sleep 0.1
    done
done
for port in "${PORTS[@]}"; do
    printf '%s  ' "127.0.0.1:$port"
    curl -fs "http://127.0.0.1:$port/readyz" || echo "(not ready)"
    echo
done

echo "load: ${ADMEDIA_CLUSTER_LOAD_SECS:-20} s through node-1 (see the loadtest report in target/cluster-report/)"
./target/release/admedia-loadtest --url "http://127.0.0.1:${PORTS[0]}" --admin-token "$ADMEDIA_ADMIN_TOKEN" \
    --worker-token "$ADMEDIA_WORKER_TOKEN" --duration "${ADMEDIA_CLUSTER_LOAD_SECS:-20}" \
    --out target/cluster-report || true

echo "nodes still running; Ctrl-C to stop"
wait
