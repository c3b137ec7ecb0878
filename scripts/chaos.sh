#!/usr/bin/env bash
# The cluster under faults, for operators: two manager processes and three agent
# processes on real PostgreSQL, Redis and etcd (its own etcd, which it kills), driven by
# several clients doing create / execute / destroy while each manager, each agent and
# etcd is killed with SIGKILL in turn, round after round, for BACKENDAI_CHAOS_SECS
# (default 600). At the end it checks the invariants (no failed call but those in
# flight on a killed process or aimed at a killed agent's sessions, no false LOST, no
# session lost on a surviving agent, slots and quota equal to the live sessions,
# nothing stuck, no stray kernel process, no deadlock) and prints its figures.
# The same harness runs one round in `cargo test` (tests/chaos/).
#   BACKENDAI_CHAOS_SECS=600 BACKENDAI_CHAOS_CLIENTS=4 scripts/chaos.sh
# Needs etcd on PATH (apt-get install etcd-server); PostgreSQL and Redis default to
# the local ones (BACKENDAI_TEST_DB_URL, BACKENDAI_TEST_REDIS_URL).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v etcd >/dev/null || { echo "etcd is not installed: apt-get install etcd-server" >&2; exit 1; }
export BACKENDAI_TEST_DB_URL=${BACKENDAI_TEST_DB_URL:-postgres://postgres@127.0.0.1:5432/test}
export BACKENDAI_TEST_REDIS_URL=${BACKENDAI_TEST_REDIS_URL:-redis://127.0.0.1:6379}
export BACKENDAI_CHAOS_SECS=${BACKENDAI_CHAOS_SECS:-600}
export BACKENDAI_REQUIRE_SERVICES=1
exec cargo test --release --test chaos -- --nocapture
