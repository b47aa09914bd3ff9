#!/usr/bin/env bash
# benches/commands.sh — redis-benchmark's default tests for the types hotpair has (PING, SET,
# GET, INCR, MSET, HSET), against a hotpair pair and against redis-server in the same run.
#
#   benches/commands.sh [BINARY]      (default target/release/hotpair; build it without
#                                      CARGO_INCREMENTAL for numbers)
#
# Environment: BENCH_LEVEL (hotpair sync level, default async), BENCH_REQUESTS (default 100000),
# BENCH_CLIENTS (default 50). Redis runs with appendonly yes and appendfsync always (each write
# durable before its reply, like hotpair's journal) and, second, everysec. Prints one line per
# server and test: requests/s as redis-benchmark reports it.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/common.sh

BINARY=${1:-target/release/hotpair}
LEVEL=${BENCH_LEVEL:-async}
REQUESTS=${BENCH_REQUESTS:-100000}
CLIENTS=${BENCH_CLIENTS:-50}
TESTS=ping_inline,ping_mbulk,set,get,incr,mset,hset

bench_dir commands
run_tests() {
    local label=$1 port=$2
    redis-benchmark -p "$port" -n "$REQUESTS" -c "$CLIENTS" -t "$TESTS" --csv 2>/dev/null \
        | tail -n +2 | tr -d '"' | awk -F, -v label="$label" '{printf "%-22s %-22s %10.0f req/s  p50 %s ms\n", label, $1, $2, $5}'
}

start_pair "$BINARY" "$TMP/pair" "$LEVEL"
run_tests "hotpair $LEVEL" "$PAIR_PORT"

for fsync in always everysec; do
    free_ports 1
    redis-server --port "$FP" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync "$fsync" \
        --dir "$TMP" --appendfilename "bench-$fsync.aof" --daemonize no >"$TMP/redis-$fsync.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do redis-cli -p "$FP" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
    run_tests "redis $fsync" "$FP"
done
