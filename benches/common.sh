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
