#!/usr/bin/env bash
# benches/proxy_latency.sh — the latency `hotpair proxy` adds to a request, on loopback.
#
#   benches/proxy_latency.sh [BINARY] [ROUNDS]      (default target/release/hotpair, 5 rounds)
#
# Starts a fresh pair at sync level `async` (so the write path is the node's, not the backup's
# round trip) and a `hotpair proxy` in front of it, on free 127.0.0.1 ports. Then, ROUNDS times,
# taken in turn so that machine drift hits both alike: `redis-benchmark -c 1` (one client, one
# request at a time) of 50,000 GETs and 50,000 SETs straight to the primary's data port, then
# the same through the proxy. Prints each run's p50 and p99 (redis-benchmark's --csv) and the
# median over the rounds of the p50 added by the proxy. Needs redis-benchmark (redis-tools).
set -euo pipefail
binary=${1:-target/release/hotpair}
rounds=${2:-5}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bench_dir proxy-latency
start_pair "$binary" "$TMP/pair" async
free_ports 1; proxy_port=$FP
"$binary" --pair "$TMP/pair/pair.toml" proxy --listen "127.0.0.1:$proxy_port" >"$TMP/proxy.log" 2>&1 & PIDS+=($!)
for _ in $(seq 100); do
    redis-cli -p "$proxy_port" set warm proxy 2>/dev/null | grep -q OK && break
    sleep 0.1
done
# p50 and p99 in µs of one redis-benchmark run of TEST against PORT.
run() {
    redis-benchmark -p "$1" -t "$2" -n 50000 -c 1 -d 100 --csv 2>/dev/null |
        awk -F'"' 'NR == 2 {printf "%.0f %.0f", $10 * 1000, $14 * 1000}'
}
declare -A added
for test in get set; do added[$test]=""; done
for round in $(seq "$rounds"); do
    for test in get set; do
        read -r d50 d99 <<<"$(run "$PAIR_PORT" "$test")"
        read -r p50 p99 <<<"$(run "$proxy_port" "$test")"
        echo "round $round ${test^^}: direct p50 ${d50} µs p99 ${d99} µs; via proxy p50 ${p50} µs p99 ${p99} µs; added p50 $((p50 - d50)) µs"
        added[$test]+="$((p50 - d50)) "
    done
done
for test in get set; do
    median=$(tr ' ' '\n' <<<"${added[$test]}" | grep -v '^$' | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}')
    echo "${test^^}: median p50 added by the proxy over $rounds rounds: $median µs"
done
