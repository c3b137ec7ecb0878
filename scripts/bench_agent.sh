#!/usr/bin/env bash
# Benchmark of the agent's process runtime (see agent/tests/bench.rs): medians and p99 of
# kernel creation and execute round trips, next to the raw cost of spawning python3 and of
# one pipe round trip on the same machine. Release build; not part of `cargo test`.
#   BENCH_SPAWNS=40 BENCH_ROUND_TRIPS=2000 scripts/bench_agent.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --release -p backendai-agent --test bench -- --ignored --nocapture --test-threads=1
