#!/usr/bin/env bash
# benches/thread_cpu.sh — CPU time per thread name of running processes, for load-insensitive A/B.
#
#   benches/thread_cpu.sh snapshot PID... > FILE      # one line per thread: pid name ticks
#   benches/thread_cpu.sh diff BEFORE AFTER N         # per thread name: ticks and us per operation
#
# CPU time (user+system from /proc/PID/task/TID/stat) moves little with what else runs on the
# machine, unlike wall-clock rates: on the shared 2-core machine this is how a change to one
# thread's work shows up when requests/s cannot tell it from the load. Threads with the same name
# (tokio workers, sled's pool) are summed.
set -euo pipefail
case "${1:-}" in
snapshot)
    shift
    for pid in "$@"; do
        for t in /proc/"$pid"/task/*; do
            [[ -r $t/stat ]] || continue
            # comm may hold spaces: take the fields after the closing parenthesis.
            awk -v pid="$pid" '{ line = $0; name = substr(line, index(line, "(") + 1); name = substr(name, 1, index(name, ")") - 1)
                rest = substr(line, index(line, ") ") + 2); split(rest, f, " "); gsub(/ /, "_", name)
                print pid, name, f[12] + f[13] }' "$t/stat" 2>/dev/null || true
        done
    done
    ;;
diff)
    before=$2; after=$3; n=$4; hz=$(getconf CLK_TCK)
    awk -v n="$n" -v hz="$hz" '
        FNR == NR { b[$1 " " $2] += $3; next }
        { a[$1 " " $2] += $3 }
        END {
            for (k in a) { d = a[k] - b[k]; if (d > 0) { tot[k] = d; sum += d } }
            printf "%-8s %-22s %8s %12s\n", "pid", "thread", "ticks", "us/op"
            for (k in tot) printf "%-30s %8d %12.2f\n", k, tot[k], tot[k] * 1e6 / hz / n | "sort -k3 -n -r"
            close("sort -k3 -n -r")
            printf "%-30s %8d %12.2f\n", "total", sum, sum * 1e6 / hz / n
        }' "$before" "$after"
    ;;
*) sed -n '2,10p' "$0" >&2; exit 2 ;;
esac
