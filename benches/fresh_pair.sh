#!/usr/bin/env bash
# benches/fresh_pair.sh — what a fresh pair pays in its first writes, against the same pair warm.
#
#   benches/fresh_pair.sh BINARY [BINARY...]
#
# For each binary in turn: starts a fresh pair at sync level `async` in a temporary directory on
# free 127.0.0.1 ports, writes a 10,000-SET warm-up (as compare.sh part 1 does), then runs
# `redis-benchmark -t set -n 200000 -c 50 -d 100` four times back to back. Prints per round SET/s,
# the primary's CPU (clock ticks, user+system, all threads) and its minor page faults. Round 1 is
# what compare.sh's part 1 measures; rounds 2-4 are the same pair once its memory has stopped
# growing. Needs redis-benchmark and redis-cli (apt-get install -y redis-tools).
set -euo pipefail
(($# >= 1)) || { sed -n '2,12p' "$0" >&2; exit 2; }
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bench_dir fresh
for binary in "$@"; do
    start_pair "$binary" "$TMP/$(basename "$binary")-$RANDOM" async
    a=$PAIR_A; b=$PAIR_B; port=$PAIR_PORT
    redis-benchmark -p "$port" -t set -n 10000 -c 50 -d 100 -q >/dev/null
    line="$binary:"
    for round in 1 2 3 4; do
        c0=$(cpu_ticks "$a"); f0=$(awk '{print $10}' "/proc/$a/stat")
        rate=$(redis-benchmark -p "$port" -t set -n 200000 -c 50 -d 100 -q | tr '\r' '\n' | awk '$1 == "SET:" {r = $2} END {print r}')
        c1=$(cpu_ticks "$a"); f1=$(awk '{print $10}' "/proc/$a/stat")
        line+=" round $round: $rate SET/s, primary CPU $((c1 - c0)) ticks, $((f1 - f0)) faults;"
    done
    echo "$line"
    kill -TERM "$a" "$b"; wait "$a" "$b" 2>/dev/null || true
done
