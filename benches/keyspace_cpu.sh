#!/usr/bin/env bash
# benches/keyspace_cpu.sh — CPU per request, per thread, of random-key SET and GET on a pair that
# already holds many keys: the load-insensitive half of issue 24's SET/GET goals.
#
#   benches/keyspace_cpu.sh BINARY [LEVEL]       # LEVEL: async (default) | durable
#
# A fresh pair; KS_LOAD SETs over KS_KEYS random keys with -P 16 (the bulk load; about 63% of the
# keys end up written when both are equal); then KS_N SETs and KS_N GETs over the same keyspace
# with 50 clients; for each, the CPU time of every thread of both nodes per request
# (benches/thread_cpu.sh) and the requests/s (which on a loaded machine mean little).
# Environment: KS_KEYS=1000000 KS_LOAD=1000000 KS_N=100000 KS_KEEP=1 (keep the directory).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${1:?usage: keyspace_cpu.sh BINARY [LEVEL]}; LEVEL=${2:-async}
KEYS=${KS_KEYS:-1000000}; LOAD=${KS_LOAD:-1000000}; N=${KS_N:-100000}
source "$HERE/common.sh"
bench_dir keyspace
[[ -n "${KS_KEEP:-}" ]] && trap 'for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; echo "kept $TMP" >&2' EXIT
cp "$BIN" "$TMP/hotpair"
start_pair "$TMP/hotpair" "$TMP/pair" "$LEVEL"
rps() { tr '\r' '\n' | awk -v t="$1:" '$1 == t && /requests per second/ {v = $2} END {print v + 0}'; }
echo "load: $(redis-benchmark -p "$PAIR_PORT" -t set -n "$LOAD" -r "$KEYS" -d 100 -P 16 -c 50 -q 2>&1 | rps SET) SET/s; keys $(redis-cli -p "$PAIR_PORT" dbsize)"
for test in set get; do
    "$HERE/thread_cpu.sh" snapshot "$PAIR_A" "$PAIR_B" >"$TMP/before"
    r=$(redis-benchmark -p "$PAIR_PORT" -t "$test" -n "$N" -r "$KEYS" -d 100 -c 50 -q 2>&1 | rps "${test^^}")
    "$HERE/thread_cpu.sh" snapshot "$PAIR_A" "$PAIR_B" >"$TMP/after"
    echo "== $test: $r req/s (a = $PAIR_A primary, b = $PAIR_B backup; load $(cut -d' ' -f1 /proc/loadavg))"
    "$HERE/thread_cpu.sh" diff "$TMP/before" "$TMP/after" "$N"
done
echo "rss kB: a $(awk '/VmRSS/ {print $2}' /proc/$PAIR_A/status) b $(awk '/VmRSS/ {print $2}' /proc/$PAIR_B/status)"
