#!/usr/bin/env bash
# Benchmarks of the manager (issue 4), on this machine, release build:
# - the execute round trip of print(1) through the gateway, next to the same
#   call straight to the agent's RPC (same kernel, same persistent client);
# - signed GET /v2/kernel/{id} requests/s under wrk -c64, next to a bare
#   actix-web JSON endpoint (examples/bare_json.rs);
# - manager memory (RSS) per live session.
# Needs wrk (apt-get install wrk) and a Python with backend.ai-client==1.0.6
# (BACKENDAI_SDK_PYTHON, default .venv/bin/python). Not part of `cargo test`.
#   BENCH_EXECUTES=500 BENCH_SESSIONS=200 BENCH_SECONDS=10 scripts/bench_manager.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${BACKENDAI_SDK_PYTHON:-.venv/bin/python}
command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet --bin backendai-manager --bin backendai-agent --example bare_json

WORK=$(mktemp -d /tmp/bench-manager.XXXXXX)
chmod 755 "$WORK"
PIDS=()
# The agent stops first: it reports its kernels' ends to the manager.
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; sleep 0.5; done; wait 2>/dev/null || true; cp "$WORK/agent.log" /tmp/bench-agent.log 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

PORT=18500; EVENTS=18501; AGENT=18502; BARE=18503
SECRET="bench-cluster-secret-$RANDOM$RANDOM"
M="target/release/backendai-manager --data-dir $WORK/data --log-level warn"
$M schema oneshot >/dev/null
$M fixture populate scripts/bench_keypair.json >/dev/null
# Room for many sessions on one agent.
$M etcd put config/overbook/cpu 1000
BACKENDAI_MANAGER__CLUSTER_SECRET=$SECRET BACKENDAI_LOCAL_AGENT__ENABLED=false \
    $M --service-port $PORT --events-port $EVENTS serve &
MANAGER_PID=$!
BACKENDAI_AGENT_CLUSTER_SECRET=$SECRET target/release/backendai-agent --listen 127.0.0.1:$AGENT \
    --event-addr 127.0.0.1:$EVENTS --scratch-root "$WORK/scratch" >"$WORK/agent.log" 2>&1 &
PIDS+=($! "$MANAGER_PID")
target/release/examples/bare_json $BARE &
BARE_PID=$!
PIDS+=($BARE_PID)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/v3" >/dev/null && break; sleep 0.1; done

"$PYTHON" scripts/bench_manager.py --endpoint "http://127.0.0.1:$PORT" --agent "127.0.0.1:$AGENT" \
    --secret "$SECRET" --manager-pid "$MANAGER_PID" --bare "http://127.0.0.1:$BARE/json" --bare-pid "$BARE_PID"
