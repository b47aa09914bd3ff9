# benches/scale_parts.sh — issue 24's parts of benches/compare.sh (sourced by it): performance
# at realistic scale, each against its baseline measured in the same run, each printing its
# verdict. Select with BENCH_PARTS (see compare.sh); sizes scale with the variables below
# (BENCH_SCALE=short sets all of them small, for a run of minutes).
#
#   keyspace     random-key SET and GET over BENCH_KS_KEYS keys (preloaded): hotpair async and
#                durable (GET on the primary and on the backup) against Redis primary+replica
#                with appendfsync always and everysec (GET on both), and PostgreSQL synchronous
#                standby (random-key upserts, 50 clients) for durable
#   seed         seeding an empty backup of a live primary holding N keys (BENCH_SEED_KEYS, a
#                list): hotpair `rejoin --allow-full-copy` against a new Redis replica's full
#                sync, and the primary's write rate during the copy against after it
#   rejoin       `hotpair bench orchestrator --parts rejoin` at BENCH_REJOIN_KEYS (10k and 1M)
#   restart      a node holding BENCH_RESTART_KEYS keys and a journal of BENCH_RESTART_JOURNAL_MB:
#                SIGTERM, start, time until its data port answers a GET, and bytes it read
#   memory       resident memory per key at BENCH_MEM_KEYS keys: hotpair primary and backup
#                against Redis primary (INFO memory)
#   groupcommit  `hotpair bench journal` with and without a simulated 4 ms fsync
#
# Loads are exact: keys key:000000000000 .. with BENCH_VALUE_BYTES-byte values, MSET of 100
# keys per command through redis-cli --pipe — the keys redis-benchmark -r N picks from.

if [[ "${BENCH_SCALE:-}" == short ]]; then
    : "${BENCH_KS_KEYS:=200000}" "${BENCH_KS_N:=50000}" "${BENCH_SEED_KEYS:=100000,300000}"
    : "${BENCH_REJOIN_KEYS:=10000,200000}" "${BENCH_RESTART_KEYS:=500000}" "${BENCH_RESTART_JOURNAL_MB:=300}"
    : "${BENCH_MEM_KEYS:=500000}" "${BENCH_GC_SECONDS:=2}"
fi
BENCH_KS_KEYS=${BENCH_KS_KEYS:-1000000}
BENCH_KS_N=${BENCH_KS_N:-150000}
BENCH_SEED_KEYS=${BENCH_SEED_KEYS:-300000,3000000}
BENCH_REJOIN_KEYS=${BENCH_REJOIN_KEYS:-10000,1000000}
BENCH_RESTART_KEYS=${BENCH_RESTART_KEYS:-10000000}
BENCH_RESTART_JOURNAL_MB=${BENCH_RESTART_JOURNAL_MB:-5000}
BENCH_MEM_KEYS=${BENCH_MEM_KEYS:-10000000}
BENCH_GC_SECONDS=${BENCH_GC_SECONDS:-3}
BENCH_VALUE_BYTES=${BENCH_VALUE_BYTES:-100}
S24=()   # report lines of these parts

# load_keys PORT N [FIRST]: keys key:%012d from FIRST (0) to FIRST+N-1, MSET of 100 per command
load_keys() {
    local port=$1 n=$2 first=${3:-0}
    awk -v n="$n" -v first="$first" -v vb="$BENCH_VALUE_BYTES" 'BEGIN {
        v = sprintf("%" vb "s", ""); gsub(/ /, "x", v)
        for (i = 0; i < n; i += 100) {
            m = (n - i < 100) ? n - i : 100
            printf "*%d\r\n$4\r\nMSET\r\n", 1 + 2 * m
            for (j = i; j < i + m; j++) { k = sprintf("key:%012d", first + j); printf "$%d\r\n%s\r\n$%d\r\n%s\r\n", length(k), k, vb, v }
        }
    }' | timeout 7200 redis-cli -h 127.0.0.1 -p "$port" --pipe >"$TMP/load-$port.out" 2>&1 || log "load of $n keys into port $port: $(tail -n 2 "$TMP/load-$port.out")"
}
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# lsn_of NODE: the node's last LSN from status --json
lsn_of() { hp_status | jq -r ".nodes.$1.lsn // 0" 2>/dev/null || echo 0; }
ver() { verdict "$@"; }
# data_port_of NODE: the node's data port, from the pair file
data_port_of() {
    awk -v n="$1" '/^\[/ {f = ($0 == "[nodes." n "]")} f && /^data *=/ {gsub(/[" ]/, ""); sub(/.*:/, ""); print; exit}' "$HP_PAIR"
}
s24() { S24+=("$(printf '%-64s %14s  %s' "$1" "$2" "$3")"); }

# ---------------------------------------------------------------------------------------------
part_keyspace() {
    local k=$BENCH_KS_KEYS n=$BENCH_KS_N level out
    local args=(-t set,get -n "$n" -r "$k" -c 50 -d "$BENCH_VALUE_BYTES" -q)
    for level in async durable; do
        log "keyspace: hotpair sync=$level, $k keys"
        hp_start "$level" "ks-$level"
        load_keys "$HP_DATA" "$k"
        note_load "keyspace hotpair $level"
        out="$TMP/ks-hp-$level.out"; rb "$out" -h 127.0.0.1 -p "$HP_DATA" "${args[@]}"
        R[ks_$level.set]=$(rps_of SET "$out"); R[ks_$level.get]=$(rps_of GET "$out")
        if [[ $level == async ]]; then
            hp_check "keyspace, sync=async"
            out="$TMP/ks-hp-backup.out"
            rb "$out" -h 127.0.0.1 -p "$(data_port_of b)" -t get -n "$n" -r "$k" -c 50 -q
            R[ks_backup.get]=$(rps_of GET "$out")
        fi
        hp_stop
    done
    local policy
    for policy in always everysec; do
        log "keyspace: redis appendfsync=$policy, $k keys"
        redis_pair "$policy" "ks"
        load_keys "$RP" "$k"
        note_load "keyspace redis $policy"
        out="$TMP/ks-redis-$policy.out"; rb "$out" -h 127.0.0.1 -p "$RP" "${args[@]}"
        R[ks_redis_$policy.set]=$(rps_of SET "$out"); R[ks_redis_$policy.get]=$(rps_of GET "$out")
        out="$TMP/ks-redis-$policy-replica.out"; rb "$out" -h 127.0.0.1 -p "$RR" -t get -n "$n" -r "$k" -c 50 -q
        R[ks_redis_$policy.rget]=$(rps_of GET "$out")
        redis-cli -h 127.0.0.1 -p "$RR" shutdown nosave >/dev/null 2>&1 || true
        redis-cli -h 127.0.0.1 -p "$RP" shutdown nosave >/dev/null 2>&1 || true
    done
    # PostgreSQL synchronous standby, random keys (the upsert picks from 1e9), 50 clients
    if [[ -z "${R[pg_c50]:-}" ]]; then pg_pair_and_bench; fi
    s24 "keyspace ($k keys): async SET / Redis always SET >= 1.0x" "$(ratio "${R[ks_async.set]:-}" "${R[ks_redis_always.set]:-}")" "$(ver "$(ratio "${R[ks_async.set]:-}" "${R[ks_redis_always.set]:-}" | tr -d x)" ">=" 1)"
    s24 "keyspace: async SET / Redis everysec SET >= 0.6x" "$(ratio "${R[ks_async.set]:-}" "${R[ks_redis_everysec.set]:-}")" "$(ver "$(ratio "${R[ks_async.set]:-}" "${R[ks_redis_everysec.set]:-}" | tr -d x)" ">=" 0.6)"
    s24 "keyspace: durable SET (50 clients) / PostgreSQL sync standby >= 3x" "$(ratio "${R[ks_durable.set]:-}" "${R[pg_c50]:-}")" "$(ver "$(ratio "${R[ks_durable.set]:-}" "${R[pg_c50]:-}" | tr -d x)" ">=" 3)"
    s24 "keyspace: GET on the primary / Redis primary GET >= 1.0x" "$(ratio "${R[ks_async.get]:-}" "${R[ks_redis_always.get]:-}")" "$(ver "$(ratio "${R[ks_async.get]:-}" "${R[ks_redis_always.get]:-}" | tr -d x)" ">=" 1)"
    s24 "keyspace: GET on the backup / Redis replica GET >= 1.0x" "$(ratio "${R[ks_backup.get]:-}" "${R[ks_redis_always.rget]:-}")" "$(ver "$(ratio "${R[ks_backup.get]:-}" "${R[ks_redis_always.rget]:-}" | tr -d x)" ">=" 1)"
    S24+=("    SET/GET req/s: hotpair async ${R[ks_async.set]:-?}/${R[ks_async.get]:-?} (backup GET ${R[ks_backup.get]:-?}), durable ${R[ks_durable.set]:-?}/${R[ks_durable.get]:-?}; Redis always ${R[ks_redis_always.set]:-?}/${R[ks_redis_always.get]:-?} (replica GET ${R[ks_redis_always.rget]:-?}), everysec ${R[ks_redis_everysec.set]:-?}/${R[ks_redis_everysec.get]:-?}; PG c50 ${R[pg_c50]:-?} tps")
}

# ---------------------------------------------------------------------------------------------
# write_rate PORT KEYS SECONDS: SETs/s one redis-benchmark (16 clients, random keys) achieved
# for about SECONDS (it is started with far more requests and killed).
rate_writer_start() { # PORT KEYS -> RW_PID, RW_OUT
    RW_OUT="$TMP/rate-writer-$1-$(now_ms).out"
    timeout 3600 redis-benchmark -h 127.0.0.1 -p "$1" -t set -n 100000000 -r "$2" -c 16 -d "$BENCH_VALUE_BYTES" >"$RW_OUT" 2>&1 &
    RW_PID=$!
}
# sample_rate COUNTER_FN SECONDS: increase of the counter per second over SECONDS
sample_rate() {
    local fn=$1 secs=$2 c0 c1 t0 t1
    c0=$($fn); t0=$(now_ms); sleep "$secs"; c1=$($fn); t1=$(now_ms)
    awk -v a="$c0" -v b="$c1" -v t=$((t1 - t0)) 'BEGIN {printf "%.0f", (b - a) / (t / 1000)}'
}
redis_writes() { redis-cli -h 127.0.0.1 -p "$SEED_RP" info stats | tr -d '\r' | awk -F: '/^total_commands_processed/ {print $2}'; }
hp_writes() { lsn_of a; }

part_seed() {
    local n secs
    IFS=',' read -r -a sizes <<<"$BENCH_SEED_KEYS"
    for n in "${sizes[@]}"; do
        # --- hotpair: a primary holding n keys whose journal no longer covers them; b rebuilt
        log "seed: hotpair, $n keys"
        hp_start async "seed-$n"
        load_keys "$HP_DATA" "$n"
        hp_check "seed $n: before the copy"
        local dir; dir=$(dirname "$HP_PAIR")
        timeout 30 "$HP" --pair "$HP_PAIR" replicate reopen-log a >/dev/null 2>&1 || true
        hp_stop
        local segs=("$dir"/a/journal/local/*.hpj)
        local i; for ((i = 0; i < ${#segs[@]} - 1; i++)); do rm -f "${segs[$i]}" "${segs[$i]}.seal"; done
        rm -rf "$dir/b"; "$HP" --pair "$HP_PAIR" reinit b >/dev/null
        "$HP" --pair "$HP_PAIR" run a >>"$dir/a.log" 2>&1 & HP_A=$!; PIDS+=("$HP_A")
        "$HP" --pair "$HP_PAIR" run b >>"$dir/b.log" 2>&1 & HP_B=$!; PIDS+=("$HP_B")
        for _ in $(seq 300); do [[ $(hp_status | jq -r '.nodes.a.reachable and .nodes.b.reachable') == true ]] && break; sleep 0.1; done
        note_load "seed hotpair $n"
        local t0 t1; t0=$(now_ms)
        "$HP" --pair "$HP_PAIR" rejoin b --allow-full-copy >"$TMP/seed-hp-$n.out" 2>&1 &
        local rj=$! c0 c1 w0 w1
        # The primary, restarted, refuses writes until the copy request confirms it: the
        # writer starts then (redis-benchmark stops at its first refusal).
        until redis-cli -h 127.0.0.1 -p "$HP_DATA" set seed-probe 1 2>/dev/null | grep -q OK; do
            kill -0 "$rj" 2>/dev/null || break
            sleep 0.02
        done
        rate_writer_start "$HP_DATA" "$n"
        w0=$(hp_writes); c0=$(now_ms)
        wait "$rj" || log "seed: rejoin --allow-full-copy failed: $(tail -n 3 "$TMP/seed-hp-$n.out")"
        t1=$(now_ms); w1=$(hp_writes); c1=$t1
        R[seed_hp_$n.ms]=$((t1 - t0))
        R[seed_hp_$n.during]=$(awk -v a="$w0" -v b="$w1" -v t=$((c1 - c0)) 'BEGIN {printf "%.0f", (b - a) / (t / 1000)}')
        secs=$(awk -v t=$((t1 - t0)) 'BEGIN {s = t / 1000; if (s < 3) s = 3; if (s > 20) s = 20; printf "%.1f", s}')
        R[seed_hp_$n.after]=$(sample_rate hp_writes "$secs")
        kill "$RW_PID" 2>/dev/null || true; wait "$RW_PID" 2>/dev/null || true
        R[seed_hp_$n.progress]=$(grep -c 'full copy: ' "$TMP/seed-hp-$n.out" || true)
        hp_check "seed $n: after the copy"
        hp_stop
        # --- Redis: a primary holding n keys; a new, empty replica's full sync
        log "seed: redis, $n keys"
        local d="$TMP/redis-seed-$n"; mkdir -p "$d/p" "$d/r"
        free_ports 1; SEED_RP=$FP; free_ports 1; local rr=$FP
        redis-server --port "$SEED_RP" --bind 127.0.0.1 --dir "$d/p" --appendonly yes --appendfsync everysec \
            --save '' --protected-mode no --daemonize no --logfile "$d/p.log" & PIDS+=($!)
        for _ in $(seq 100); do redis-cli -p "$SEED_RP" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
        load_keys "$SEED_RP" "$n"
        rate_writer_start "$SEED_RP" "$n"
        sleep 1
        t0=$(now_ms); w0=$(redis_writes)
        redis-server --port "$rr" --bind 127.0.0.1 --dir "$d/r" --appendonly yes --appendfsync everysec \
            --save '' --protected-mode no --daemonize no --logfile "$d/r.log" --replicaof 127.0.0.1 "$SEED_RP" & PIDS+=($!)
        for _ in $(seq 36000); do
            redis-cli -h 127.0.0.1 -p "$rr" info replication 2>/dev/null | tr -d '\r' | grep -q '^master_link_status:up' \
                && ! redis-cli -h 127.0.0.1 -p "$rr" info replication | tr -d '\r' | grep -q '^master_sync_in_progress:1' && break
            sleep 0.05
        done
        t1=$(now_ms); w1=$(redis_writes)
        R[seed_redis_$n.ms]=$((t1 - t0))
        R[seed_redis_$n.during]=$(awk -v a="$w0" -v b="$w1" -v t=$((t1 - t0)) 'BEGIN {printf "%.0f", (b - a) / (t / 1000)}')
        secs=$(awk -v t=$((t1 - t0)) 'BEGIN {s = t / 1000; if (s < 3) s = 3; if (s > 20) s = 20; printf "%.1f", s}')
        R[seed_redis_$n.after]=$(sample_rate redis_writes "$secs")
        kill "$RW_PID" 2>/dev/null || true; wait "$RW_PID" 2>/dev/null || true
        redis-cli -h 127.0.0.1 -p "$rr" shutdown nosave >/dev/null 2>&1 || true
        redis-cli -h 127.0.0.1 -p "$SEED_RP" shutdown nosave >/dev/null 2>&1 || true
        local speed wr
        speed=$(ratio "${R[seed_redis_$n.ms]}" "${R[seed_hp_$n.ms]}")
        wr=$(ratio "${R[seed_hp_$n.during]}" "${R[seed_hp_$n.after]}")
        s24 "seed $n keys: Redis full sync time / hotpair full copy time >= 2x" "$speed" "$(ver "${speed%x}" ">=" 2)"
        s24 "seed $n keys: primary's write rate during / after the copy >= 0.7x" "$wr" "$(ver "${wr%x}" ">=" 0.7)"
        S24+=("    hotpair copy ${R[seed_hp_$n.ms]} ms (writes/s during ${R[seed_hp_$n.during]}, after ${R[seed_hp_$n.after]}; progress lines printed: ${R[seed_hp_$n.progress]}); Redis full sync ${R[seed_redis_$n.ms]} ms (commands/s during ${R[seed_redis_$n.during]}, after ${R[seed_redis_$n.after]}; $(ratio "${R[seed_redis_$n.during]}" "${R[seed_redis_$n.after]}"))")
    done
}

# ---------------------------------------------------------------------------------------------
part_rejoin() {
    log "rejoin: hotpair bench orchestrator --parts rejoin --rejoin-keys $BENCH_REJOIN_KEYS"
    note_load "rejoin"
    timeout 7200 "$HP" bench orchestrator --parts rejoin --rejoin-keys "$BENCH_REJOIN_KEYS" --rejoins 3 --divergence 1000 --json \
        >"$TMP/rejoin.json" 2>"$TMP/rejoin.err" || log "bench orchestrator: $(tail -n 3 "$TMP/rejoin.err")"
    local small large
    small=${BENCH_REJOIN_KEYS%%,*}; large=${BENCH_REJOIN_KEYS##*,}
    # Per size: the rounds' totals (ms), in order.
    local rounds_small rounds_large med_small med_large first_large
    rounds_small=$(jq -r --argjson k "$small" '[.rejoin.sizes[]? | select(.keys == $k) | .runs[]?.total_ms] | map(tostring) | join(" ")' "$TMP/rejoin.json" 2>/dev/null)
    rounds_large=$(jq -r --argjson k "$large" '[.rejoin.sizes[]? | select(.keys == $k) | .runs[]?.total_ms] | map(tostring) | join(" ")' "$TMP/rejoin.json" 2>/dev/null)
    med() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{v[NR]=$1} END {if (NR==0) print ""; else printf "%.1f", (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
    med_small=$(med <<<"$rounds_small"); med_large=$(med <<<"$rounds_large"); first_large=${rounds_large%% *}
    s24 "rejoin after 1,000 diverged txns at $large keys: median < 100 ms" "${med_large:--} ms" "$(awk -v m="${med_large:-}" 'BEGIN {print (m == "") ? "MISSED (not measured)" : ((m + 0 < 100) ? "MET" : "MISSED")}')"
    local r; r=$(ratio "$med_large" "$med_small")
    s24 "rejoin: median at $large keys / at $small keys <= 1.5x" "$r" "$(ver "${r%x}" "<=" 1.5)"
    r=$(ratio "$first_large" "$med_large")
    s24 "rejoin: first rejoin at $large keys / its median <= 1.5x (no slow first)" "$r" "$(ver "${r%x}" "<=" 1.5)"
    S24+=("    rounds (ms): $small keys: ${rounds_small:-?}; $large keys: ${rounds_large:-?} (raw: $TMP/rejoin.json)")
}

# ---------------------------------------------------------------------------------------------
part_restart() {
    local k=$BENCH_RESTART_KEYS mb=$BENCH_RESTART_JOURNAL_MB
    log "restart: a node with $k keys and a $mb MB journal"
    hp_start async restart
    load_keys "$HP_DATA" "$k"
    # Overwrite the same keys until the primary's local journal holds mb MB.
    local dir jbytes round=0; dir=$(dirname "$HP_PAIR")
    while :; do
        jbytes=$(du -sb "$dir/a/journal/local" | awk '{print $1}')
        ((jbytes >= mb * 1048576)) && break
        round=$((round + 1)); ((round > 100)) && break
        load_keys "$HP_DATA" "$k"
    done
    hp_check "restart: loaded"
    R[rs_journal_mb]=$(awk -v b="$jbytes" 'BEGIN {printf "%.0f", b / 1048576}')
    local node pid t0 t1 rchar
    for node in b a; do
        pid=$([[ $node == a ]] && echo "$HP_A" || echo "$HP_B")
        kill -TERM "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
        local port; port=$(data_port_of "$node")
        t0=$(now_ms)
        "$HP" --pair "$HP_PAIR" run "$node" >>"$dir/$node.log" 2>&1 & pid=$!; PIDS+=("$pid")
        until redis-cli -h 127.0.0.1 -p "$port" get key:000000000001 2>/dev/null | grep -q x; do
            kill -0 "$pid" 2>/dev/null || { log "restart: $node exited"; break; }
            sleep 0.01
        done
        t1=$(now_ms)
        rchar=$(awk '/^rchar/ {print $2}' "/proc/$pid/io" 2>/dev/null || echo 0)
        R[rs_$node.ms]=$((t1 - t0)); R[rs_$node.read_mb]=$(awk -v b="$rchar" 'BEGIN {printf "%.0f", b / 1048576}')
        if [[ $node == a ]]; then HP_A=$pid; else HP_B=$pid; fi
    done
    hp_check "restart: after both restarts"
    hp_stop
    local worst=$(( ${R[rs_a.ms]:-999999} > ${R[rs_b.ms]:-999999} ? ${R[rs_a.ms]:-999999} : ${R[rs_b.ms]:-999999} ))
    s24 "restart to serving, $k keys, ${R[rs_journal_mb]} MB journal: <= 2 s" "$worst ms" "$( ((worst <= 2000)) && echo MET || echo MISSED)"
    S24+=("    primary ${R[rs_a.ms]} ms, read ${R[rs_a.read_mb]} MB; backup ${R[rs_b.ms]} ms, read ${R[rs_b.read_mb]} MB (of a ${R[rs_journal_mb]} MB local journal: a restart that read it whole would read at least that)")
}

# ---------------------------------------------------------------------------------------------
part_memory() {
    local k=$BENCH_MEM_KEYS a0 b0 a1 b1
    log "memory: $k keys"
    hp_start async memory
    a0=$(rss_kb "$HP_A"); b0=$(rss_kb "$HP_B")
    load_keys "$HP_DATA" "$k"
    hp_check "memory: loaded"
    a1=$(rss_kb "$HP_A"); b1=$(rss_kb "$HP_B")
    hp_stop
    redis_pair everysec mem
    local r0 r1 used
    r0=$(redis-cli -h 127.0.0.1 -p "$RP" info memory | tr -d '\r' | awk -F: '/^used_memory_rss:/ {print $2}')
    load_keys "$RP" "$k"
    r1=$(redis-cli -h 127.0.0.1 -p "$RP" info memory | tr -d '\r' | awk -F: '/^used_memory_rss:/ {print $2}')
    used=$(redis-cli -h 127.0.0.1 -p "$RP" info memory | tr -d '\r' | awk -F: '/^used_memory:/ {print $2}')
    redis-cli -h 127.0.0.1 -p "$RR" shutdown nosave >/dev/null 2>&1 || true
    redis-cli -h 127.0.0.1 -p "$RP" shutdown nosave >/dev/null 2>&1 || true
    local hp_per redis_per r
    hp_per=$(awk -v a="$a0" -v b="$a1" -v k="$k" 'BEGIN {printf "%.0f", (b - a) * 1024 / k}')
    redis_per=$(awk -v a="$r0" -v b="$r1" -v k="$k" 'BEGIN {printf "%.0f", (b - a) / k}')
    r=$(ratio "$hp_per" "$redis_per")
    s24 "memory per key at $k keys: hotpair primary RSS / Redis RSS <= 1.5x" "$r" "$(ver "${r%x}" "<=" 1.5)"
    S24+=("    bytes/key: hotpair primary $hp_per (RSS ${a0} -> ${a1} kB), backup $(awk -v a="$b0" -v b="$b1" -v k="$k" 'BEGIN {printf "%.0f", (b - a) * 1024 / k}') (RSS ${b0} -> ${b1} kB); Redis $redis_per (used_memory_rss ${r0} -> ${r1}; used_memory ${used})")
}

# ---------------------------------------------------------------------------------------------
part_groupcommit() {
    local delay out
    for delay in 0 4; do
        log "groupcommit: hotpair bench journal --seconds $BENCH_GC_SECONDS --fsync-delay-ms $delay"
        out="$TMP/gc-$delay.json"
        note_load "groupcommit delay $delay"
        "$HP" bench journal --seconds "$BENCH_GC_SECONDS" --fsync-delay-ms "$delay" --json --dir "$TMP" >"$out" 2>"$TMP/gc-$delay.err" || true
        local x raw fs
        x=$(jq -r '.group_commit[]? | select(.committers == 64) | .ratio_to_raw' "$out" 2>/dev/null | head -1)
        raw=$(jq -r '[.raw_fsync_before.records_per_second, .raw_fsync_after.records_per_second] | max' "$out" 2>/dev/null)
        fs=$(jq -r '.group_commit[]? | select(.committers == 64) | .records_per_fsync' "$out" 2>/dev/null | head -1)
        local label="group commit at 64 committers >= 20x raw fsync"
        ((delay > 0)) && label="$label (SIMULATED +$delay ms fsync)"
        s24 "$label" "$(awk -v x="${x:-0}" 'BEGIN {printf "%.1fx", x}')" "$(ver "${x:-0}" ">=" 20)"
        S24+=("    raw fsync ${raw:-?} records/s; 64 committers: ${fs:-?} records per fsync (the cap: 64 committers each wait for their own record, so 64 per fsync at most; where a fast disk's fsync costs less than the CPU for 64 commits, the ratio is set by the CPU: docs/benchmarks.md)")
    done
}

# pg_pair_and_bench: part 2's PostgreSQL primary + synchronous standby, pgbench at 50 clients
# (random-key upserts), for the keyspace part when part 2 did not run.
pg_pair_and_bench() {
    PG_ONLY=1 pg_part
}
