#!/usr/bin/env bash
# benches/ab.sh — interleaved A/B of hotpair builds (or settings) on this machine.
#
#   benches/ab.sh NAME=BINARY[,ENV=VALUE...] NAME=BINARY[,ENV=VALUE...] ...
#   e.g. cp target/release/hotpair /tmp/hp.new; git stash; cargo build --release; cp target/release/hotpair /tmp/hp.old
#        benches/ab.sh old=/tmp/hp.old new=/tmp/hp.new
#
# Starts one pair per variant, all at once, on free 127.0.0.1 ports in a temporary directory,
# then runs `redis-benchmark -t set -n AB_N -c AB_CLIENTS -d 100` against the pairs in turn,
# AB_ROUNDS times round the list. On a shared machine the speed drifts by tens of percent over
# minutes; running the variants back to back, round after round, puts the same drift on each.
# Besides SET/s it reports the CPU time (user+system, all threads, from /proc/PID/stat) both
# nodes and the backup alone spent per SET: steadier than SET/s, and where a change shows first.
# Give each variant its own copy of the binary: a build in the tree must not replace it mid-run.
#
# Environment (all optional): AB_LEVEL=durable (sync level), AB_CLIENTS=16, AB_N=50000,
# AB_ROUNDS=6, AB_WARMUP_N=20000, AB_TEST=set (or incr: redis-benchmark -t; the table still
# says SET), AB_KEYSPACE=N (random keys out of N: redis-benchmark -r N; unset: one key),
# AB_KEEP=1 (keep the directory: logs).
# Needs redis-benchmark (apt-get install -y redis-tools).

set -euo pipefail
LEVEL=${AB_LEVEL:-durable}; CLIENTS=${AB_CLIENTS:-16}; N=${AB_N:-50000}; ROUNDS=${AB_ROUNDS:-6}
WARMUP_N=${AB_WARMUP_N:-20000}
TEST=${AB_TEST:-set}
[[ $TEST == set || $TEST == incr ]] || { echo "ab.sh: AB_TEST is set or incr, not $TEST" >&2; exit 2; }
KEYSPACE=()
[[ -n "${AB_KEYSPACE:-}" ]] && KEYSPACE=(-r "$AB_KEYSPACE")
(($# >= 1)) || { sed -n '2,18p' "$0" >&2; exit 2; }
command -v redis-benchmark >/dev/null || { echo "ab.sh: redis-benchmark is missing (apt-get install -y redis-tools)" >&2; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/hotpair-ab-XXXXXX")
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -n "${AB_KEEP:-}" ]] && echo "kept $TMP" >&2 || rm -rf "$TMP"
}
trap cleanup EXIT

# port_free PORT, free_ports K (sets FP), cpu_ticks PID...
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

names=(); data_ports=(); pids_a=(); pids_b=()
for spec in "$@"; do
    name=${spec%%=*}; rest=${spec#*=}
    IFS=',' read -r -a parts <<<"$rest"
    binary=${parts[0]}; envs=("${parts[@]:1}")
    [[ -x "$binary" ]] || { echo "ab.sh: $binary is not an executable" >&2; exit 1; }
    dir="$TMP/$name"; mkdir -p "$dir"
    free_ports 3; pa=$FP; free_ports 3; pb=$FP
    "$binary" init --dir "$dir" --nodes "a=127.0.0.1:$pa,b=127.0.0.1:$pb" --sync "$LEVEL" >"$dir/init.log"
    env "${envs[@]}" "$binary" --pair "$dir/pair.toml" run a >"$dir/a.log" 2>&1 & pids_a+=($!); PIDS+=($!)
    env "${envs[@]}" "$binary" --pair "$dir/pair.toml" run b >"$dir/b.log" 2>&1 & pids_b+=($!); PIDS+=($!)
    names+=("$name"); data_ports+=($((pa + 1)))
done

# Ready when a write is acknowledged (at sync level `durable` that needs the backup too).
for i in "${!names[@]}"; do
    for _ in $(seq 300); do
        [[ $(redis-cli -p "${data_ports[$i]}" set ab-ready 1 2>/dev/null) == OK ]] && break
        sleep 0.1
    done
    [[ $(redis-cli -p "${data_ports[$i]}" set ab-ready 1 2>/dev/null) == OK ]] \
        || { echo "ab.sh: pair ${names[$i]} did not take a write in 30 s; see $TMP/${names[$i]}/*.log" >&2; AB_KEEP=1; exit 1; }
    redis-benchmark -p "${data_ports[$i]}" -t "$TEST" -n "$WARMUP_N" -c "$CLIENTS" -d 100 -q "${KEYSPACE[@]}" >/dev/null 2>&1
done

echo "sync=$LEVEL: redis-benchmark -t $TEST -n $N -c $CLIENTS -d 100${KEYSPACE[*]:+ ${KEYSPACE[*]}}, $ROUNDS rounds, variants in turn"
RESULTS="$TMP/results"
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
    for i in "${!names[@]}"; do
        a=${pids_a[$i]}; b=${pids_b[$i]}
        ta=$(cpu_ticks "$a"); tb=$(cpu_ticks "$b")
        rps=$(redis-benchmark -p "${data_ports[$i]}" -t "$TEST" -n "$N" -c "$CLIENTS" -d 100 -q "${KEYSPACE[@]}" 2>&1 \
            | tr '\r' '\n' | awk -v t="${TEST^^}:" '$1 == t && /requests per second/ {v = $2} END {print v + 0}')
        echo "${names[$i]} $round $rps $(($(cpu_ticks "$a") - ta)) $(($(cpu_ticks "$b") - tb))" >>"$RESULTS"
    done
done

awk -v n="$N" -v hz="$(getconf CLK_TCK)" '
    { us = 1e6 / hz / n; rps[$1] += $3; pair[$1] += ($4 + $5) * us; backup[$1] += $5 * us; runs[$1]++
      each[$1] = each[$1] sprintf(" %.1fk/%.1f", $3 / 1000, ($4 + $5) * us) }
    END {
        printf "%-12s %10s %16s %18s   %s\n", "variant", "SET/s", "pair CPU us/SET", "backup CPU us/SET", "each run: SET/s / pair us"
        for (k in rps) printf "%-12s %10.0f %16.1f %18.2f  %s\n", k, rps[k] / runs[k], pair[k] / runs[k], backup[k] / runs[k], each[k]
    }' "$RESULTS"
