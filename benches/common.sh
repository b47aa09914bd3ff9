# benches/common.sh — sourced by the benchmark scripts: free 127.0.0.1 ports for the servers they
# start, and the CPU time those servers use.

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Below the kernel's ephemeral range, so that a client's outgoing port cannot take a port we pick.
EPH_LO=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
NEXT_PORT=$((10000 + RANDOM % (EPH_LO > 22000 ? EPH_LO - 22000 : 1000)))
# free_ports K: sets FP to a base port P such that P..P+K-1 are all free (no subshell, so that
# NEXT_PORT advances and two calls never hand out the same port)
free_ports() {
    local k=$1 p ok i
    while :; do
        p=$NEXT_PORT; NEXT_PORT=$((NEXT_PORT + k + 1)); ok=1
        for ((i = 0; i < k; i++)); do port_free $((p + i)) || { ok=0; break; }; done
        ((ok)) && { FP=$p; return; }
    done
}

# cpu_ticks PID...: user+system CPU time the processes (all their threads) used so far, in clock
# ticks (getconf CLK_TCK per second). Server CPU per request is steadier than requests/s on a shared
# machine: it does not move with what the other processes get, and it says where the difference
# between two servers lies.
cpu_ticks() { local p; for p in "$@"; do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0; done | awk '{t += $1} END {print t + 0}'; }

# start_pair BINARY DIR LEVEL: a fresh pair in DIR (created) on free ports at sync level LEVEL, both
# nodes started; waits until the primary acknowledges a write. Sets PAIR_A and PAIR_B (the nodes'
# PIDs, also added to PIDS for the caller's cleanup) and PAIR_PORT (the primary's data port).
start_pair() {
    local binary=$1 dir=$2 level=$3 pa pb
    mkdir -p "$dir"
    free_ports 3; pa=$FP; free_ports 3; pb=$FP
    "$binary" init --dir "$dir" --nodes "a=127.0.0.1:$pa,b=127.0.0.1:$pb" --sync "$level" >"$dir/init.log"
    "$binary" --pair "$dir/pair.toml" run a >"$dir/a.log" 2>&1 & PAIR_A=$!; PIDS+=($!)
    "$binary" --pair "$dir/pair.toml" run b >"$dir/b.log" 2>&1 & PAIR_B=$!; PIDS+=($!)
    PAIR_PORT=$((pa + 1))
    for _ in $(seq 300); do
        redis-cli -p "$PAIR_PORT" set warm up 2>/dev/null | grep -q OK && return 0
        sleep 0.1
    done
    echo "start_pair: $binary's pair in $dir acknowledged no write in 30 s; see its logs" >&2
    return 1
}

# bench_dir NAME: sets TMP to a fresh temporary directory whose pairs (PIDS) are stopped and which
# is removed when the script exits.
bench_dir() {
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/hotpair-$1-XXXXXX")
    PIDS=()
    trap 'for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"' EXIT
}
