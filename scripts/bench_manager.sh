#!/usr/bin/env bash
# Benchmarks of the manager, on this machine, release build, one table per deployment:
# - the execute round trip of print(1) through the gateway, next to the same call
#   straight to the agent's RPC (same kernel, same persistent client);
# - signed GET /v3/kernel/{id} requests/s under wrk -c64, next to a bare actix-web
#   JSON endpoint (examples/bare_json.rs);
# - manager memory (RSS) per live session; PTY streams;
# - at scale (scripts/bench_scale.py): executes from 8 clients on 8 sessions at once,
#   300 live python3 sessions on one agent, 1,000 creates and destroys in a row;
# - a 1 GiB file up to and down from a virtual folder (scripts/bench_vfolder.py), next
#   to a `cp` of the same file, with the manager's RSS.
#
#   scripts/bench_manager.sh               # the embedded default
#   scripts/bench_manager.sh --production  # embedded, then PostgreSQL + etcd + Redis,
#                                          # then the same with 50 ms added to Redis
#
# --production starts an etcd of its own and uses the PostgreSQL and Redis that
# `.ci/run` starts (BENCH_DB_URL, default postgres://postgres@127.0.0.1:5432; BENCH_REDIS,
# default 127.0.0.1:6379). Needs wrk (apt-get install wrk), etcd for --production, and a
# Python with backend.ai-client==1.0.6 (BACKENDAI_SDK_PYTHON, default .venv/bin/python).
# Not part of `cargo test`. Knobs: BENCH_PARTS (execute,throughput,memory,pty,parallel,
# many,churn,vfolder), BENCH_VFOLDER_MIB, BENCH_SECONDS, BENCH_ROUNDS, BENCH_EXECUTES, BENCH_SESSIONS, BENCH_MANY,
# BENCH_CHURN.
set -euo pipefail
cd "$(dirname "$0")/.."
PRODUCTION=0
[[ "${1:-}" == "--production" ]] && PRODUCTION=1
PYTHON=${BACKENDAI_SDK_PYTHON:-$PWD/.venv/bin/python}
DB_URL=${BENCH_DB_URL:-postgres://postgres@127.0.0.1:5432}
REDIS=${BENCH_REDIS:-127.0.0.1:6379}
PARTS=${BENCH_PARTS:-execute,throughput,memory,pty,parallel,many,churn,vfolder}
command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install wrk" >&2; exit 1; }
if [[ $PRODUCTION == 1 ]]; then
    command -v etcd >/dev/null || { echo "etcd is not installed: apt-get install etcd-server" >&2; exit 1; }
fi
BIN=${CARGO_TARGET_DIR:-target}/release
cargo build --release --quiet -p backendai-manager -p backendai-agent --bin backendai-manager --bin backendai-agent --example bare_json --example latency_proxy

WORK=$(mktemp -d /tmp/bench-manager.XXXXXX)
chmod 755 "$WORK"
export BENCH_RESULTS=$WORK/results.jsonl
PIDS=()
DATABASES=()
stop_all() {
    # (`wait` without pids would wait for etcd and the bare endpoint too.)
    [[ ${#PIDS[@]} -gt 0 ]] || return 0
    # The agent stops first: it reports its kernels' ends to the manager.
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; sleep 0.5; done
    wait "${PIDS[@]}" 2>/dev/null || true
    PIDS=()
}
cleanup() {
    stop_all
    [[ -n "${BARE_PID:-}" ]] && kill "$BARE_PID" 2>/dev/null
    [[ -n "${ETCD_PID:-}" ]] && kill "$ETCD_PID" 2>/dev/null
    [[ -n "${PROXY_PID:-}" ]] && kill "$PROXY_PID" 2>/dev/null
    for db in "${DATABASES[@]}"; do
        psql "$DB_URL/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    done
    cp "$WORK"/agent-*.log /tmp/ 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

PORT=18500; EVENTS=18501; AGENT=18502; BARE=18503; ETCD=18504; SLOW_REDIS=18506
$BIN/examples/bare_json $BARE &
BARE_PID=$!

if [[ $PRODUCTION == 1 ]]; then
    etcd --name bench --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$ETCD" \
        --advertise-client-urls "http://127.0.0.1:$ETCD" --listen-peer-urls "http://127.0.0.1:$((ETCD + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD + 1))" \
        --initial-cluster "bench=http://127.0.0.1:$((ETCD + 1))" >"$WORK/etcd.log" 2>&1 &
    ETCD_PID=$!
    $BIN/examples/latency_proxy "127.0.0.1:$SLOW_REDIS" "$REDIS" 50 &
    PROXY_PID=$!
fi

# Runs the drivers against one deployment: $1 its name, $2 the Redis the manager uses
# (empty: embedded).
run() {
    local name=$1 manager_redis=${2:-} data="$WORK/$1"
    local secret="bench-cluster-secret-$RANDOM$RANDOM"
    mkdir -p "$data" && chmod 755 "$data"
    local -a common=(--data-dir "$data/manager" --log-level warn)
    local -a agent_args=(--listen "127.0.0.1:$AGENT" --scratch-root "$data/scratch")
    if [[ -n $manager_redis ]]; then
        local db="bench_${RANDOM}${RANDOM}"
        DATABASES+=("$db")
        psql "$DB_URL/postgres" -qc "CREATE DATABASE $db" >/dev/null
        local namespace="bench$RANDOM$RANDOM"
        common+=(--db-url "$DB_URL/$db" --etcd-addr "127.0.0.1:$ETCD" --redis-addr "$manager_redis"
            --namespace "$namespace")
        agent_args+=(--namespace "$namespace" --redis-addr "$REDIS")
    else
        agent_args+=(--event-addr "127.0.0.1:$EVENTS")
    fi
    local M="$BIN/backendai-manager"
    $M "${common[@]}" schema oneshot >/dev/null
    $M "${common[@]}" fixture populate scripts/bench_keypair.json >/dev/null
    if [[ -n $manager_redis ]]; then
        $M "${common[@]}" etcd update-images fixtures/images.toml >/dev/null
        $M "${common[@]}" etcd update-aliases fixtures/aliases.toml >/dev/null
    fi
    # Room for many sessions on one agent.
    $M "${common[@]}" etcd put config/overbook/cpu 1000 >/dev/null
    $M "${common[@]}" etcd put config/overbook/mem 1000 >/dev/null
    BACKENDAI_MANAGER__CLUSTER_SECRET=$secret BACKENDAI_LOCAL_AGENT__ENABLED=false BACKENDAI_VFOLDER__MAX_SIZE=$((4 << 30)) \
        $M "${common[@]}" --service-port $PORT --events-port $EVENTS serve &
    local manager_pid=$!
    BACKENDAI_AGENT_CLUSTER_SECRET=$secret $BIN/backendai-agent "${agent_args[@]}" \
        >"$WORK/agent-$name.log" 2>&1 &
    local agent_pid=$!
    PIDS+=("$agent_pid" "$manager_pid")
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/v3" >/dev/null && break; sleep 0.1; done
    echo
    echo "=== $name ==="
    export BENCH_DEPLOYMENT=$name
    (cd scripts && BENCH_PARTS=$PARTS BENCH_REDIS_ADDR=$manager_redis "$PYTHON" bench_manager.py --endpoint "http://127.0.0.1:$PORT" \
        --agent "127.0.0.1:$AGENT" --secret "$secret" --manager-pid "$manager_pid" \
        --bare "http://127.0.0.1:$BARE/json" --bare-pid "$BARE_PID")
    (cd scripts && BENCH_PARTS=$PARTS "$PYTHON" bench_scale.py --endpoint "http://127.0.0.1:$PORT" \
        --manager-pid "$manager_pid" --agent-pid "$agent_pid" --scratch-root "$data/scratch")
    if [[ ,$PARTS, == *,vfolder,* ]]; then
        (cd scripts && "$PYTHON" bench_vfolder.py --endpoint "http://127.0.0.1:$PORT" \
            --manager-pid "$manager_pid" --work "$WORK")
    fi
    stop_all
}

run embedded
if [[ $PRODUCTION == 1 ]]; then
    run production "$REDIS"
    # A slow Redis: the request path only (the agent-heavy parts are the same). With
    # 100 ms per round trip a closed-loop client gets at most connections / 0.1 s, so
    # wrk keeps 1,024 connections open instead of 64.
    PARTS=throughput BENCH_CONNECTIONS=1024 run production+50ms-redis "127.0.0.1:$SLOW_REDIS"
fi

# One table, a column per deployment.
"$PYTHON" - "$BENCH_RESULTS" <<'EOF'
import json, sys
rows, deployments = {}, []
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r['deployment'] not in deployments:
        deployments.append(r['deployment'])
    rows.setdefault(r['name'], {})[r['deployment']] = r['value']
width = max(len(n) for n in rows) + 2
print()
print('| ' + ' | '.join(['figure'] + deployments) + ' |')
print('|' + '---|' * (len(deployments) + 1))
for name, values in rows.items():
    print('| ' + ' | '.join([name.strip()] + [values.get(d, '') for d in deployments]) + ' |')
EOF
