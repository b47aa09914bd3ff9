#!/usr/bin/env bash
# benches/catchup_probe.sh — a catch-up while a client keeps writing to the primary.
#
#   benches/catchup_probe.sh BINARY [BINARY...]
#
# For each binary in turn: a fresh pair at sync level `async` on free 127.0.0.1 ports; replication
# stopped; 1,000,000 SETs written (`redis-benchmark -n 1000000 -P 16 -c 50 -d 100`); replication
# started, and at once a probe client writes `redis-benchmark -t set -n 30000 -c 1 -d 100`. Prints
# the time until the backup holds every record the primary had when replication started, and the
# probe's latency tail (a primary whose shipper reads its journal files on the data port's worker
# shows it there). Compare.sh part 3 measures the catch-up with no other load.
# Needs redis-benchmark, redis-cli and jq.
set -euo pipefail
(($# >= 1)) || { sed -n '2,12p' "$0" >&2; exit 2; }
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bench_dir catchup
for binary in "$@"; do
    dir="$TMP/$(basename "$binary")-$RANDOM"
    start_pair "$binary" "$dir" async
    a=$PAIR_A; b=$PAIR_B; port=$PAIR_PORT
    hp() { "$binary" --pair "$dir/pair.toml" "$@"; }
    hp replicate stop >/dev/null
    redis-benchmark -p "$port" -t set -n 1000000 -P 16 -c 50 -d 100 -q >/dev/null
    target=$(hp status --json | jq -r .nodes.a.lsn)
    started=$(date +%s%N)
    hp replicate start >/dev/null
    redis-benchmark -p "$port" -t set -n 30000 -c 1 -d 100 >"$dir/probe.txt" 2>&1 & probe=$!
    while :; do
        lsn=$(hp status --json 2>/dev/null | jq -r '.nodes.b.lsn // 0' || echo 0)
        ((lsn >= target)) && break
        sleep 0.05
    done
    ended=$(date +%s%N)
    wait "$probe"
    tail=$(tr '\r' '\n' <"$dir/probe.txt" | awk '/^ *99\.[89][0-9]*% <=/ || /^ *100\.000% <=/ {printf "%s %s ms; ", $1, $3} /^ *100\.000% <=/ {exit}')
    echo "$binary: $((target - 1)) records caught up in $(((ended - started) / 1000000)) ms; probe latency: $tail"
    kill -TERM "$a" "$b"; wait "$a" "$b" 2>/dev/null || true
done
