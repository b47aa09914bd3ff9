#!/usr/bin/env bash
# benches/compare.sh — hotpair against Redis primary+replica and PostgreSQL synchronous standby,
# side by side in one run, on 127.0.0.1, in a temporary directory that is removed at the end.
#
#   benches/compare.sh                 # from the repository root (or anywhere: it finds the repo)
#
# Environment (all optional):
#   BENCH_N=200000            -n for redis-benchmark -t set,get (part 1)
#   BENCH_KEYSPACE=           part 1 only: -r for redis-benchmark (random keys out of this many;
#                             unset: one key, as the issue's command)
#   BENCH_WARMUP_N=10000      -n of each warm-up
#   BENCH_PG_SECONDS=10       pgbench -T, and the target length of each hotpair durable run (part 2)
#   BENCH_LAG_SECONDS=10      length of each rate-limited lag run (part 3)
#   BENCH_CATCHUP_N=1000000   records written while replication is stopped (part 3)
#   BENCH_CATCHUP_TIMEOUT=300 seconds to wait for the backup to catch up before giving up
#   BENCH_SKIP_BUILD=1        do not run cargo build --release (use target/release/hotpair as is)
#   BENCH_BINARY=PATH         measure this hotpair binary instead (implies BENCH_SKIP_BUILD)
#   BENCH_KEEP=1              keep the temporary directory (logs, outputs) instead of removing it
#   BENCH_SKIP_TMPFS=1        skip part 4 (hotpair durable with its data on tmpfs, a diagnostic)
#   BENCH_ROUNDS=5            part 5: rounds of hotpair async, Redis always and everysec in turn
#                             (0 skips it)
#   BENCH_PARTS=1,2,3,4,5     the parts to run, any of: 1 2 3 4 5 (issue 3's, above) and issue 24's
#                             keyspace seed rejoin restart memory groupcommit (benches/scale_parts.sh:
#                             what each measures and its size variables); `issue24` stands for all six
#   BENCH_SCALE=short         issue 24's parts at small sizes (minutes instead of hours)
#
# It installs nothing. Needed: cargo, jq, redis-server, redis-benchmark, redis-cli
# (apt-get install -y redis-server redis-tools), PostgreSQL 15 initdb/pg_ctl/postgres/pg_basebackup/
# psql/pgbench. When run as root, PostgreSQL runs as the `postgres` user through runuser.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_N=${BENCH_N:-200000}
KEYSPACE=()
[[ -n "${BENCH_KEYSPACE:-}" ]] && KEYSPACE=(-r "$BENCH_KEYSPACE")
BENCH_WARMUP_N=${BENCH_WARMUP_N:-10000}
BENCH_PG_SECONDS=${BENCH_PG_SECONDS:-10}
BENCH_LAG_SECONDS=${BENCH_LAG_SECONDS:-10}
BENCH_CATCHUP_N=${BENCH_CATCHUP_N:-1000000}
BENCH_CATCHUP_TIMEOUT=${BENCH_CATCHUP_TIMEOUT:-300}
BENCH_ROUNDS=${BENCH_ROUNDS:-5}

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# What is needed, and what is missing
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1 ($2)"); }
need cargo "rustup / cargo"
need jq "apt-get install -y jq"
need redis-server "apt-get install -y redis-server"
need redis-benchmark "apt-get install -y redis-tools"
need redis-cli "apt-get install -y redis-tools"
PGBIN=${PGBIN:-}
for d in "$PGBIN" /usr/lib/postgresql/15/bin /usr/local/bin; do
    [[ -n "$d" && -x "$d/initdb" ]] && { PGBIN=$d; break; }
done
[[ -n "$PGBIN" ]] || missing+=("initdb/pg_ctl/postgres (PostgreSQL 15 server: apt-get install -y postgresql-15, or set PGBIN)")
need pgbench "apt-get install -y postgresql-client-15"
need pg_basebackup "apt-get install -y postgresql-client-15"
need psql "apt-get install -y postgresql-client-15"
if ((${#missing[@]})); then
    log "missing, nothing was run:"
    for m in "${missing[@]}"; do log "  - $m"; done
    exit 1
fi
PG_AS=()
if [[ $(id -u) == 0 ]]; then
    getent passwd postgres >/dev/null || die "running as root and there is no 'postgres' user for PostgreSQL (it refuses to run as root)"
    PG_AS=(runuser -u postgres --)
fi

# ---------------------------------------------------------------------------------------------
# Temp dir, processes, cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/hotpair-compare-XXXXXX")
chmod 755 "$TMP"
PIDS=()
PG_DATADIRS=()
cleanup() {
    set +e
    for d in "${PG_DATADIRS[@]}"; do "${PG_AS[@]}" "$PGBIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1; done
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$p" 2>/dev/null && { log "pid $p did not stop on SIGTERM within 5 s; SIGKILL"; kill -KILL "$p" 2>/dev/null; }
    done
    if [[ -n "${BENCH_KEEP:-}" ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    [[ -n "${SHM:-}" ]] && rm -rf "$SHM"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# port_free PORT, free_ports K (sets FP), cpu_ticks PID...
source "$REPO/benches/common.sh"

BENCH_PARTS=${BENCH_PARTS:-1,2,3,4,5}
BENCH_PARTS=${BENCH_PARTS//issue24/keyspace,seed,rejoin,restart,memory,groupcommit}
part_on() { [[ ",$BENCH_PARTS," == *",$1,"* ]]; }
OLD_PARTS=0
for p in 1 2 3 4 5; do part_on "$p" && OLD_PARTS=1; done
# issue 24's parts (functions part_keyspace ... part_groupcommit)
source "$REPO/benches/scale_parts.sh"

# rb OUT ARGS...: redis-benchmark, progress stripped, output kept in OUT; prints nothing
rb() {
    local out=$1; shift
    timeout 1800 redis-benchmark "$@" 2>&1 | tr '\r' '\n' | grep -v '^ *$' | grep -v 'rps=' >"$out" || true
}
rps_of() { awk -v t="$1:" '$1 == t && /requests per second/ {print $2; exit}' "$2"; }
errors_in() { grep -ciE 'error|refused|READONLY|TRYAGAIN' "$1" || true; }
num() { [[ -n "${1:-}" ]] && echo "$1" || echo "-"; }
ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN {if (b+0 == 0 || a+0 == 0) print "-"; else printf "%.2fx", a/b}'; }
verdict() { # VALUE OP THRESHOLD
    awk -v v="${1:-0}" -v t="$3" -v op="$2" 'BEGIN {ok = (op == ">=") ? (v+0 >= t+0) : (v+0 <= t+0); print (v == "" || v == "-") ? "MISSED (not measured)" : (ok ? "MET" : "MISSED")}'
}

# ---------------------------------------------------------------------------------------------
# Machine
MACHINE="$TMP/machine.txt"
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc: $(nproc); $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo); $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "kernel: $(uname -r)"
    echo "disk of $TMP: $(df -hT "$TMP" | awk 'NR==2 {print $1, $2, $3" size,", $5" used"}')"
    echo "redis: $(redis-server --version | awk '{print $3}'); postgres: $("$PGBIN/postgres" --version | awk '{print $3}')"
    echo "hotpair: ${BENCH_BINARY:-$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "?")$(git -C "$REPO" diff --quiet 2>/dev/null || echo " (dirty tree)")}"
} >"$MACHINE"
LOADS=()
note_load() { LOADS+=("$1: $(cut -d' ' -f1-3 /proc/loadavg)"); }
CLK_TCK=$(getconf CLK_TCK)
# us_per_request TICKS_BEFORE TICKS_AFTER REQUESTS
us_per_request() { awk -v a="$1" -v b="$2" -v n="$3" -v hz="$CLK_TCK" 'BEGIN {if (n + 0 == 0) print "-"; else printf "%.1f", (b - a) * 1000000 / hz / n}'; }

# ---------------------------------------------------------------------------------------------
# Build
if [[ -z "${BENCH_SKIP_BUILD:-}" && -z "${BENCH_BINARY:-}" ]]; then
    log "cargo build --release"
    (cd "$REPO" && cargo build --release 2>&1 | tail -n 2) >&2
fi
HP_SRC=${BENCH_BINARY:-$REPO/target/release/hotpair}
[[ -x "$HP_SRC" ]] || die "no $HP_SRC (build failed?)"
# A private copy: other builds in the same tree must not swap the binary in the middle of the run.
HP="$TMP/hotpair"
cp "$HP_SRC" "$HP"
note_load "start"

# ---------------------------------------------------------------------------------------------
# hotpair pair helpers
HP_PAIR=""
HP_DATA=""
HP_A=""
HP_B=""
hp_status() { timeout 10 "$HP" --pair "$HP_PAIR" status --json 2>/dev/null || true; }
hp_start() { # LEVEL NAME [PARENT_DIR]
    local level=$1 name=$2 parent=${3:-$TMP} pa pb dir try
    for try in 1 2 3; do
        dir="$parent/hp-$name-$try"
        free_ports 3; pa=$FP; free_ports 3; pb=$FP
        hp_try "$level" "$dir" "$pa" "$pb" && return 0
        log "hotpair pair ($level) attempt $try did not come up: $(tail -n 1 "$dir/a.log") / $(tail -n 1 "$dir/b.log")"
        hp_stop
    done
    die "hotpair pair ($level) did not come up in 3 attempts; see $TMP/hp-$name-*/a.log, b.log"
}
hp_try() { # LEVEL DIR PORT_A PORT_B
    local level=$1 dir=$2 pa=$3 pb=$4
    "$HP" init --dir "$dir" --nodes "a=127.0.0.1:$pa,b=127.0.0.1:$pb" --sync "$level" >"$dir.init.log" 2>&1 \
        || { cat "$dir.init.log" >&2; die "hotpair init failed"; }
    HP_PAIR="$dir/pair.toml"; HP_DATA=$((pa + 1))
    "$HP" --pair "$HP_PAIR" run a >"$dir/a.log" 2>&1 & HP_A=$!; PIDS+=("$HP_A")
    "$HP" --pair "$HP_PAIR" run b >"$dir/b.log" 2>&1 & HP_B=$!; PIDS+=("$HP_B")
    local s
    for _ in $(seq 300); do
        s=$(hp_status)
        if [[ -n "$s" ]] && [[ $(jq -r '.nodes.a.role == "primary" and .nodes.a.peer.connected == true and .nodes.b.reachable == true' <<<"$s") == true ]]; then
            return 0
        fi
        kill -0 "$HP_A" 2>/dev/null && kill -0 "$HP_B" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
hp_stop() {
    local p
    for p in "$HP_A" "$HP_B"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "$HP_A" "$HP_B"; do
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$p" 2>/dev/null; then
            log "hotpair pid $p did not stop on SIGTERM within 10 s; SIGKILL"
            CHECKS+=("stop: pid $p ($HP_PAIR) ignored SIGTERM for 10 s, killed")
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
}
CHECKS=()
# hp_check LABEL: waits (up to 60 s) until the backup has applied the primary's last LSN, then
# compares digests and looks for failures. Appends one line to CHECKS.
hp_check() {
    local label=$1 s a b da db t0=$SECONDS fa fb
    while :; do
        s=$(hp_status)
        a=$(jq -r '.nodes.a.lsn // "?"' <<<"${s:-$EMPTY}"); b=$(jq -r '.nodes.b.lsn // "?"' <<<"${s:-$EMPTY}")
        [[ "$a" == "$b" && "$a" != "?" ]] && break
        ((SECONDS - t0 > 60)) && break
        sleep 0.2
    done
    da=$(jq -r '.nodes.a.digest // "?"' <<<"${s:-$EMPTY}"); db=$(jq -r '.nodes.b.digest // "?"' <<<"${s:-$EMPTY}")
    fa=$(jq -c '[.nodes.a.failure, .nodes.b.failure, .nodes.a.incidents, .nodes.b.incidents, .nodes.a.degraded, .nodes.b.degraded]' <<<"${s:-$EMPTY}" 2>/dev/null || echo '?')
    local verdict="lag closed, digests EQUAL"
    if [[ "$a" != "$b" || "$a" == "?" ]]; then verdict="LAG DID NOT CLOSE in 60 s"; fi
    if [[ "$da" != "$db" ]]; then verdict="$verdict; digests DIFFER"; fi
    fb=$(cat "$(dirname "$HP_PAIR")"/a.log "$(dirname "$HP_PAIR")"/b.log 2>/dev/null | grep -cE 'ERROR|WARN' || true)
    CHECKS+=("$label: a.lsn=$a b.lsn=$b digest a=$da b=$db -> $verdict; [failure a,b, incidents a,b, degraded a,b]=$fa; WARN/ERROR log lines: $fb")
    # The lines themselves (the first 5 per node): the directory is removed at the end.
    local node line
    for node in a b; do
        while IFS= read -r line; do CHECKS+=("    $node: $line"); done < <(
            grep -E 'ERROR|WARN' "$(dirname "$HP_PAIR")/$node.log" 2>/dev/null | head -5 | cut -c1-300
        )
    done
}

# percentile P FILE (nearest rank over numbers, one per line)
percentile() { sort -n "$2" | awk -v p="$1" '{v[NR]=$1} END {if (NR==0) {print "-"; exit} i=int((p/100)*NR+0.999999); if (i<1) i=1; if (i>NR) i=NR; print v[i]}'; }

declare -A R   # results
EMPTY='{}'

# ---------------------------------------------------------------------------------------------
# Part 1: redis-benchmark -t set,get against hotpair at each level, and Redis primary+replica
P1_CMD="redis-benchmark -h 127.0.0.1 -p PORT -t set,get -n $BENCH_N -c 50 -d 100 -q${KEYSPACE[*]:+ ${KEYSPACE[*]}}"
P1_LEVELS=(); part_on 1 && P1_LEVELS=(async received durable applied)
for level in "${P1_LEVELS[@]}"; do
    log "part 1: hotpair sync=$level"
    hp_start "$level" "p1-$level"
    rb "$TMP/p1-$level.warm" -h 127.0.0.1 -p "$HP_DATA" -t set,get -n "$BENCH_WARMUP_N" -c 50 -d 100 -q "${KEYSPACE[@]}"
    note_load "part 1 hotpair $level"
    t0=$(cpu_ticks "$HP_A" "$HP_B")
    rb "$TMP/p1-$level.out" -h 127.0.0.1 -p "$HP_DATA" -t set,get -n "$BENCH_N" -c 50 -d 100 -q "${KEYSPACE[@]}"
    R[hp_$level.cpu]=$(us_per_request "$t0" "$(cpu_ticks "$HP_A" "$HP_B")" $((2 * BENCH_N)))
    R[hp_$level.set]=$(rps_of SET "$TMP/p1-$level.out"); R[hp_$level.get]=$(rps_of GET "$TMP/p1-$level.out")
    R[hp_$level.err]=$(errors_in "$TMP/p1-$level.out")
    R[hp_$level.p50]=$(awk '$1 == "SET:" {for (i=1;i<=NF;i++) if ($i ~ /^p50=/) {sub("p50=","",$i); print $i}}' "$TMP/p1-$level.out")
    hp_check "part 1, sync=$level"
    hp_stop
done

redis_pair() { # POLICY [TAG] -> sets RP RR (ports) and RP_PID RR_PID
    local policy=$1 d="$TMP/redis-$1${2:+-$2}"
    mkdir -p "$d/p" "$d/r"
    free_ports 1; RP=$FP; free_ports 1; RR=$FP
    redis-server --port "$RP" --bind 127.0.0.1 --dir "$d/p" --appendonly yes --appendfsync "$policy" \
        --save '' --protected-mode no --daemonize no --logfile "$d/p.log" & RP_PID=$!; PIDS+=($!)
    redis-server --port "$RR" --bind 127.0.0.1 --dir "$d/r" --appendonly yes --appendfsync "$policy" \
        --save '' --protected-mode no --daemonize no --logfile "$d/r.log" --replicaof 127.0.0.1 "$RP" & RR_PID=$!; PIDS+=($!)
    for _ in $(seq 300); do
        redis-cli -h 127.0.0.1 -p "$RR" info replication 2>/dev/null | grep -q 'master_link_status:up' && return 0
        sleep 0.1
    done
    die "redis replica ($policy) did not reach master_link_status:up in 30 s; see $d/*.log"
}
P1_POLICIES=(); part_on 1 && P1_POLICIES=(everysec always)
for policy in "${P1_POLICIES[@]}"; do
    log "part 1: redis appendfsync=$policy"
    redis_pair "$policy"
    rb "$TMP/p1-redis-$policy.warm" -h 127.0.0.1 -p "$RP" -t set,get -n "$BENCH_WARMUP_N" -c 50 -d 100 -q "${KEYSPACE[@]}"
    note_load "part 1 redis $policy"
    t0=$(cpu_ticks "$RP_PID" "$RR_PID")
    rb "$TMP/p1-redis-$policy.out" -h 127.0.0.1 -p "$RP" -t set,get -n "$BENCH_N" -c 50 -d 100 -q "${KEYSPACE[@]}"
    R[redis_$policy.cpu]=$(us_per_request "$t0" "$(cpu_ticks "$RP_PID" "$RR_PID")" $((2 * BENCH_N)))
    R[redis_$policy.set]=$(rps_of SET "$TMP/p1-redis-$policy.out"); R[redis_$policy.get]=$(rps_of GET "$TMP/p1-redis-$policy.out")
    R[redis_$policy.err]=$(errors_in "$TMP/p1-redis-$policy.out")
    R[redis_$policy.p50]=$(awk '$1 == "SET:" {for (i=1;i<=NF;i++) if ($i ~ /^p50=/) {sub("p50=","",$i); print $i}}' "$TMP/p1-redis-$policy.out")
    R[redis_$policy.offsets]=$(redis-cli -h 127.0.0.1 -p "$RP" info replication | tr -d '\r' | awk -F: '/master_repl_offset/ {print $2}')/$(redis-cli -h 127.0.0.1 -p "$RR" info replication | tr -d '\r' | awk -F: '/slave_repl_offset/ {print $2}')
    redis-cli -h 127.0.0.1 -p "$RR" shutdown nosave >/dev/null 2>&1 || true
    redis-cli -h 127.0.0.1 -p "$RP" shutdown nosave >/dev/null 2>&1 || true
    sleep 0.5
done

# ---------------------------------------------------------------------------------------------
# Part 2: durable single-key writes at 16 and 50 clients: hotpair durable vs PostgreSQL sync standby
# pg_part: PostgreSQL primary + synchronous standby, pgbench upserts of random keys at 16 and
# 50 clients (R[pg_c16], R[pg_c50])
pg_part() {
log "part 2: PostgreSQL primary + synchronous standby"
PGD="$TMP/pg"
mkdir -p "$PGD"
[[ ${#PG_AS[@]} -gt 0 ]] && chown postgres "$PGD"
free_ports 1; PGP=$FP; free_ports 1; PGS=$FP
"${PG_AS[@]}" "$PGBIN/initdb" -D "$PGD/primary" -U postgres --auth=trust >"$PGD/initdb.log" 2>&1 || { cat "$PGD/initdb.log" >&2; die "initdb failed"; }
cat >>"$PGD/primary/postgresql.conf" <<EOF
port = $PGP
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGD'
wal_level = replica
max_wal_senders = 4
synchronous_standby_names = '*'
synchronous_commit = on
fsync = on
max_connections = 120
EOF
PG_DATADIRS+=("$PGD/primary")
"${PG_AS[@]}" "$PGBIN/pg_ctl" -D "$PGD/primary" -l "$PGD/primary.log" -w start >/dev/null || die "PostgreSQL primary did not start; see $PGD/primary.log"
"${PG_AS[@]}" pg_basebackup -h 127.0.0.1 -p "$PGP" -U postgres -D "$PGD/standby" -R -X stream >"$PGD/basebackup.log" 2>&1 || { cat "$PGD/basebackup.log" >&2; die "pg_basebackup failed"; }
"${PG_AS[@]}" sh -c "echo \"port = $PGS\" >>'$PGD/standby/postgresql.conf'"
PG_DATADIRS+=("$PGD/standby")
"${PG_AS[@]}" "$PGBIN/pg_ctl" -D "$PGD/standby" -l "$PGD/standby.log" -w start >/dev/null || die "PostgreSQL standby did not start; see $PGD/standby.log"
PSQL=(psql -X -q -h 127.0.0.1 -p "$PGP" -U postgres -d postgres -v ON_ERROR_STOP=1)
for _ in $(seq 300); do
    [[ $("${PSQL[@]}" -Atc "select count(*) from pg_stat_replication where sync_state = 'sync' and state = 'streaming'") == 1 ]] && break
    sleep 0.1
done
[[ $("${PSQL[@]}" -Atc "select count(*) from pg_stat_replication where sync_state = 'sync'") == 1 ]] || die "standby never became synchronous"
"${PSQL[@]}" -c "CREATE TABLE kv (k text PRIMARY KEY, v text NOT NULL)"
cat >"$PGD/insert.sql" <<'EOF'
\set r random(1, 1000000000)
INSERT INTO kv (k, v) VALUES ('key:' || :r, repeat('x', 100)) ON CONFLICT (k) DO UPDATE SET v = excluded.v;
EOF
PGB=(pgbench -n -h 127.0.0.1 -p "$PGP" -U postgres -j 2 -f "$PGD/insert.sql" postgres)
"${PGB[@]}" -c 16 -T 2 >"$PGD/warm.out" 2>&1 || true
for c in 16 50; do
    note_load "part 2 postgres c=$c"
    "${PGB[@]}" -c "$c" -T "$BENCH_PG_SECONDS" >"$TMP/p2-pg-c$c.out" 2>&1 || true
    R[pg_c$c]=$(awk '/^tps = / {print $3; exit}' "$TMP/p2-pg-c$c.out")
    R[pg_c$c.lat]=$(awk '/latency average/ {print $4; exit}' "$TMP/p2-pg-c$c.out")
    R[pg_c$c.fail]=$(awk '/number of failed transactions/ {print $5; exit}' "$TMP/p2-pg-c$c.out")
done
R[pg_sync]=$("${PSQL[@]}" -Atc "select application_name || ' ' || sync_state || ' flush_lsn=' || flush_lsn || ' replay_lsn=' || replay_lsn || ' primary=' || pg_current_wal_lsn() from pg_stat_replication")
"${PG_AS[@]}" "$PGBIN/pg_ctl" -D "$PGD/standby" -m fast -w stop >/dev/null 2>&1 || true
"${PG_AS[@]}" "$PGBIN/pg_ctl" -D "$PGD/primary" -m fast -w stop >/dev/null 2>&1 || true
PG_DATADIRS=()
}

if part_on 2; then
pg_part
log "part 2: hotpair sync=durable"
hp_start durable p2
rb "$TMP/p2-hp.warm" -h 127.0.0.1 -p "$HP_DATA" -t set -n "$BENCH_WARMUP_N" -c 16 -d 100 -q
# Aim each run at about BENCH_PG_SECONDS, like pgbench -T, from the part 1 durable SET rate.
P2_N=$(awk -v r="${R[hp_durable.set]:-0}" -v s="$BENCH_PG_SECONDS" 'BEGIN {n=int(r*s); if (n<5000) n=5000; print n}')
for c in 16 50; do
    note_load "part 2 hotpair c=$c"
    rb "$TMP/p2-hp-c$c.out" -h 127.0.0.1 -p "$HP_DATA" -t set -n "$P2_N" -c "$c" -d 100 -q
    R[hp_c$c]=$(rps_of SET "$TMP/p2-hp-c$c.out")
    R[hp_c$c.err]=$(errors_in "$TMP/p2-hp-c$c.out")
    R[hp_c$c.p50]=$(awk '$1 == "SET:" {for (i=1;i<=NF;i++) if ($i ~ /^p50=/) {sub("p50=","",$i); print $i}}' "$TMP/p2-hp-c$c.out")
done
hp_check "part 2, sync=durable"
fi

# ---------------------------------------------------------------------------------------------
# Part 3a: lag at half the maximum durable rate, sampled from status --json every 100 ms
if part_on 3; then
MAXD=$(awk -v a="${R[hp_c16]:-0}" -v b="${R[hp_c50]:-0}" -v c="${R[hp_durable.set]:-0}" 'BEGIN {m=a; if (b>m) m=b; if (c>m) m=c; print int(m)}')
HALF=$((MAXD / 2))
((HALF >= 10)) || HALF=10
# writer: every 100 ms, one redis-benchmark of HALF/10 SETs (16 clients); batches may overlap
lag_writer() { # PORT SECONDS
    local port=$1 secs=$2 per=$((HALF / 10)) i=0 t0 now target c=16
    ((per >= 1)) || per=1
    ((c <= per)) || c=$per
    t0=$(date +%s%N)
    while :; do
        now=$(date +%s%N)
        ((now - t0 >= secs * 1000000000)) && break
        timeout 60 redis-benchmark -h 127.0.0.1 -p "$port" -t set -n "$per" -c "$c" -d 100 -q >>"$TMP/lag-writer.out" 2>&1 &
        i=$((i + 1))
        target=$((t0 + i * 100000000)); now=$(date +%s%N)
        ((target > now)) && sleep "$(awk -v d=$((target - now)) 'BEGIN {printf "%.3f", d/1e9}')"
    done
    wait
}
lag_run() { # LEVEL
    local level=$1 s l0 l1 t0 t1 pid
    log "part 3: lag at $HALF SET/s (half of $MAXD), sync=$level"
    if [[ $level != durable ]]; then hp_stop; hp_start "$level" "p3-$level"; fi
    : >"$TMP/lag-$level.samples"
    s=$(hp_status); l0=$(jq -r '.nodes.a.lsn' <<<"$s"); t0=$(date +%s%N)
    note_load "part 3 lag $level"
    lag_writer "$HP_DATA" "$BENCH_LAG_SECONDS" & pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        s=$(hp_status)
        [[ -n "$s" ]] && jq -r '"\(.nodes.a.lag_records) \(.nodes.a.lag_ms)"' <<<"$s" >>"$TMP/lag-$level.samples"
        sleep 0.1
    done
    wait "$pid" || true
    awk '{print $1}' "$TMP/lag-$level.samples" >"$TMP/lag-$level.rec"
    awk '{print $2}' "$TMP/lag-$level.samples" >"$TMP/lag-$level.ms"
    t1=$(date +%s%N); s=$(hp_status); l1=$(jq -r '.nodes.a.lsn' <<<"$s")
    R[lag_$level.rate]=$(awk -v a="$l0" -v b="$l1" -v t="$((t1 - t0))" 'BEGIN {printf "%.0f", (b-a)/(t/1e9)}')
    R[lag_$level.n]=$(wc -l <"$TMP/lag-$level.rec")
    R[lag_$level.p50]=$(percentile 50 "$TMP/lag-$level.rec"); R[lag_$level.p99]=$(percentile 99 "$TMP/lag-$level.rec")
    R[lag_$level.max]=$(percentile 100 "$TMP/lag-$level.rec")
    R[lag_$level.msp50]=$(percentile 50 "$TMP/lag-$level.ms"); R[lag_$level.msp99]=$(percentile 99 "$TMP/lag-$level.ms")
    R[lag_$level.err]=$(errors_in "$TMP/lag-writer.out"); : >"$TMP/lag-writer.out"
    hp_check "part 3 lag, sync=$level"
}
part_on 2 || hp_start durable p3-durable
lag_run durable
lag_run async

# ---------------------------------------------------------------------------------------------
# Part 3b: catch-up: replicate stop, write BENCH_CATCHUP_N at async, replicate start, time it
log "part 3: catch-up of $BENCH_CATCHUP_N records (sync=async)"
hp_stop
hp_start async p3-catchup
rb "$TMP/catchup.warm" -h 127.0.0.1 -p "$HP_DATA" -t set -n "$BENCH_WARMUP_N" -c 50 -d 100 -q
timeout 30 "$HP" --pair "$HP_PAIR" replicate stop >"$TMP/replicate-stop.out" 2>&1 || log "replicate stop failed: $(cat "$TMP/replicate-stop.out")"
note_load "part 3 catch-up write"
rb "$TMP/catchup-write.out" -h 127.0.0.1 -p "$HP_DATA" -t set -n "$BENCH_CATCHUP_N" -P 16 -c 50 -d 100 -q
R[cu_write]=$(rps_of SET "$TMP/catchup-write.out"); R[cu_err]=$(errors_in "$TMP/catchup-write.out")
s=$(hp_status)
CU_TARGET=$(jq -r '.nodes.a.lsn' <<<"$s"); CU_FROM=$(jq -r '.nodes.b.lsn' <<<"$s")
R[cu_records]=$((CU_TARGET - CU_FROM))
note_load "part 3 catch-up"
T0=$(date +%s%N)
timeout 30 "$HP" --pair "$HP_PAIR" replicate start >"$TMP/replicate-start.out" 2>&1 || log "replicate start failed: $(cat "$TMP/replicate-start.out")"
CU_LAST=$CU_FROM; CU_DONE=0; CU_UNREACH=0
while :; do
    s=$(hp_status)
    b=$(jq -r '.nodes.b.lsn // empty' <<<"${s:-$EMPTY}" 2>/dev/null || true)
    if [[ -n "$b" ]]; then CU_LAST=$b; CU_LAST_T=$(date +%s%N); else CU_UNREACH=$((CU_UNREACH + 1)); fi
    ((CU_LAST >= CU_TARGET)) && { CU_DONE=1; break; }
    (($(date +%s%N) - T0 > BENCH_CATCHUP_TIMEOUT * 1000000000)) && break
    sleep 0.1
done
T1=${CU_LAST_T:-$(date +%s%N)}
R[cu_secs]=$(awk -v t="$((T1 - T0))" 'BEGIN {printf "%.2f", t/1e9}')
R[cu_rate]=$(awk -v n="$((CU_LAST - CU_FROM))" -v t="$((T1 - T0))" 'BEGIN {printf "%.0f", n/(t/1e9)}')
R[cu_done]=$CU_DONE; R[cu_applied]=$((CU_LAST - CU_FROM)); R[cu_unreach]=$CU_UNREACH
if ((CU_DONE)); then
    hp_check "part 3 catch-up, sync=async"
else
    CHECKS+=("part 3 catch-up: backup applied $((CU_LAST - CU_FROM)) of $((CU_TARGET - CU_FROM)) records in $BENCH_CATCHUP_TIMEOUT s; status of b failed $CU_UNREACH times (b unreachable: see below)")
    hp_status >"$TMP/catchup-final-status.json"
    jq -c '.nodes.b | {reachable, lsn, received_lsn, failure}' "$TMP/catchup-final-status.json" >&2 || true
    if command -v gdb >/dev/null 2>&1; then
        timeout 60 gdb -p "$HP_B" -batch -ex 'thread apply all bt 30' >"$TMP/catchup-b-stacks.txt" 2>/dev/null || true
        log "backup stacks: $(grep -c '^Thread' "$TMP/catchup-b-stacks.txt" || true) threads; in hotpair frames:"
        grep -oE 'in hotpair::[a-z_:]+|in sled::[a-z_:]+[A-Za-z_:]*' "$TMP/catchup-b-stacks.txt" | sort | uniq -c | sort -rn | head -12 >&2 || true
    fi
fi
hp_stop
fi

# ---------------------------------------------------------------------------------------------
# Part 4 (diagnostic, no goal): part 2's 16-client durable run again with both nodes' data on
# tmpfs, where an fsync costs next to nothing. What is left is the software's own round (parse,
# store, journal, TLS, the hops between threads and processes): the ceiling that cheaper fsyncs,
# or overlapping them, could reach on this machine.
if part_on 4 && [[ -z "${BENCH_SKIP_TMPFS:-}" && -d /dev/shm && $(stat -f -c %T /dev/shm 2>/dev/null) == tmpfs ]]; then
    SHM=$(mktemp -d /dev/shm/hotpair-compare-XXXXXX)
    chmod 755 "$SHM"
    log "part 4: hotpair sync=durable with its data on tmpfs ($SHM)"
    hp_start durable p4 "$SHM"
    rb "$TMP/p4-hp.warm" -h 127.0.0.1 -p "$HP_DATA" -t set -n "$BENCH_WARMUP_N" -c 16 -d 100 -q
    note_load "part 4 hotpair tmpfs c=16"
    rb "$TMP/p4-hp-c16.out" -h 127.0.0.1 -p "$HP_DATA" -t set -n "${P2_N:-100000}" -c 16 -d 100 -q
    R[shm_c16]=$(rps_of SET "$TMP/p4-hp-c16.out")
    R[shm_c16.err]=$(errors_in "$TMP/p4-hp-c16.out")
    hp_check "part 4, sync=durable on tmpfs"
    hp_stop
fi
# ---------------------------------------------------------------------------------------------
# Part 5: hotpair async against Redis always and everysec, SET only, in turn. This machine's
# speed drifts by ±10% over minutes, so part 1's one run of each decides little: here the three
# servers run side by side and take turns, round after round, and each round gives a ratio.
part_on 5 || BENCH_ROUNDS=0
if ((BENCH_ROUNDS > 0)); then
    log "part 5: hotpair async, Redis always and everysec in turn, $BENCH_ROUNDS rounds"
    hp_start async p5
    redis_pair always p5; P5_PORTS=("$HP_DATA" "$RP"); P5_REDIS=("$RP" "$RR")
    redis_pair everysec p5; P5_PORTS+=("$RP"); P5_REDIS+=("$RP" "$RR")
    P5_NAMES=(hp always everysec)
    for i in 0 1 2; do
        rb "$TMP/p5-${P5_NAMES[$i]}.warm" -h 127.0.0.1 -p "${P5_PORTS[$i]}" -t set -n "$BENCH_WARMUP_N" -c 50 -d 100 -q "${KEYSPACE[@]}"
    done
    note_load "part 5"
    for round in $(seq "$BENCH_ROUNDS"); do
        for i in 0 1 2; do
            out="$TMP/p5-${P5_NAMES[$i]}-$round.out"
            rb "$out" -h 127.0.0.1 -p "${P5_PORTS[$i]}" -t set -n "$BENCH_N" -c 50 -d 100 -q "${KEYSPACE[@]}"
            R[p5_${P5_NAMES[$i]}_$round]=$(rps_of SET "$out")
            R[p5_err]=$((${R[p5_err]:-0} + $(errors_in "$out")))
        done
    done
    hp_check "part 5, sync=async"
    hp_stop
    for port in "${P5_REDIS[@]}"; do redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true; done
fi
# What the report reads of a part that did not run.
for key in cu_done cu_records cu_applied cu_rate cu_secs cu_unreach; do R[$key]=${R[$key]:-0}; done
for part in keyspace seed rejoin restart memory groupcommit; do
    part_on "$part" && "part_$part"
done
note_load "end"

# ---------------------------------------------------------------------------------------------
# Report
{
echo
echo "== machine"
cat "$MACHINE"
echo "load average (1/5/15 min) at each phase:"
printf '  %s\n' "${LOADS[@]}"
echo "parts: $BENCH_PARTS"
if ((OLD_PARTS)); then
echo
echo "== part 1: $P1_CMD (warm-up: -n $BENCH_WARMUP_N)"
printf '%-34s %12s %12s %10s %8s %10s\n' "target" "SET req/s" "GET req/s" "SET p50ms" "errors" "CPU us/req"
for level in async received durable applied; do
    printf '%-34s %12s %12s %10s %8s %10s\n' "hotpair sync=$level" "$(num "${R[hp_$level.set]:-}")" "$(num "${R[hp_$level.get]:-}")" "$(num "${R[hp_$level.p50]:-}")" "$(num "${R[hp_$level.err]:-}")" "$(num "${R[hp_$level.cpu]:-}")"
done
for policy in everysec always; do
    printf '%-34s %12s %12s %10s %8s %10s\n' "redis+replica appendfsync=$policy" "$(num "${R[redis_$policy.set]:-}")" "$(num "${R[redis_$policy.get]:-}")" "$(num "${R[redis_$policy.p50]:-}")" "$(num "${R[redis_$policy.err]:-}")" "$(num "${R[redis_$policy.cpu]:-}")"
done
echo "CPU us/req: user+system CPU time of both server processes (hotpair a and b, or Redis primary and"
echo "replica), all threads, over the measured run, per request (SET and GET together). The machine's"
echo "cores are shared with redis-benchmark, so requests/s follows what the servers cost per request."
echo "redis master_repl_offset/replica offset after the run: everysec ${R[redis_everysec.offsets]:-}, always ${R[redis_always.offsets]:-}"
echo
echo "== part 2: durable single-key writes, hotpair sync=durable (redis-benchmark -t set -n $P2_N -c C -d 100) vs"
echo "   PostgreSQL 15 primary + synchronous standby (pgbench -n -c C -j 2 -T $BENCH_PG_SECONDS -f insert.sql, one-row upsert, 100-byte value)"
printf '%-10s %14s %14s %12s %14s %10s\n' "clients" "hotpair SET/s" "p50 ms" "PG tps" "PG lat ms" "ratio"
for c in 16 50; do
    printf '%-10s %14s %14s %12s %14s %10s\n' "$c" "$(num "${R[hp_c$c]:-}")" "$(num "${R[hp_c$c.p50]:-}")" "$(num "${R[pg_c$c]:-}")" "$(num "${R[pg_c$c.lat]:-}")" "$(ratio "${R[hp_c$c]:-}" "${R[pg_c$c]:-}")"
done
echo "errors: hotpair c16 ${R[hp_c16.err]:-?} c50 ${R[hp_c50.err]:-?}; PG failed transactions c16 ${R[pg_c16.fail]:-?} c50 ${R[pg_c50.fail]:-?}; standby: ${R[pg_sync]:-?}"
if [[ -n "${R[shm_c16]:-}" ]]; then
    echo "part 4 (diagnostic): the same 16-client run with both nodes' data on tmpfs (fsyncs next to free):"
    echo "  ${R[shm_c16]} SET/s ($(ratio "${R[shm_c16]:-}" "${R[pg_c16]:-}") PG; errors ${R[shm_c16.err]:-?}); on disk it was $(ratio "${R[hp_c16]:-}" "${R[shm_c16]:-}") of that."
    echo "  The rest of a round is software; 3x PG at 16 clients needs tmpfs speed above 3x PG at least."
fi
echo
echo "== part 3: lag at half the maximum durable rate ($HALF SET/s target; max durable $MAXD), status --json every 100 ms"
printf '%-16s %12s %8s %14s %14s %12s %16s\n' "sync" "SET/s done" "samples" "lag rec p50" "lag rec p99" "lag rec max" "lag_ms p50/p99"
for level in durable async; do
    printf '%-16s %12s %8s %14s %14s %12s %16s\n' "$level" "$(num "${R[lag_$level.rate]:-}")" "$(num "${R[lag_$level.n]:-}")" "$(num "${R[lag_$level.p50]:-}")" "$(num "${R[lag_$level.p99]:-}")" "$(num "${R[lag_$level.max]:-}")" "${R[lag_$level.msp50]:-}/${R[lag_$level.msp99]:-}"
done
echo
echo "== part 3: catch-up (sync=async; replicate stop; redis-benchmark -t set -n $BENCH_CATCHUP_N -P 16 -c 50 -d 100; replicate start)"
echo "written at ${R[cu_write]:-?} SET/s with replication stopped (errors: ${R[cu_err]:-?}); backlog ${R[cu_records]} records"
if ((${R[cu_done]})); then
    echo "caught up in ${R[cu_secs]} s: ${R[cu_rate]} records/s"
else
    echo "NOT caught up after $BENCH_CATCHUP_TIMEOUT s: ${R[cu_applied]} of ${R[cu_records]} applied (${R[cu_rate]} records/s up to the last status that answered at ${R[cu_secs]} s); b's status failed ${R[cu_unreach]} times"
fi
echo
# median_ratio NAME_A NAME_B: the median over part 5's rounds of A's SET/s over B's, as "0.97x"
median_ratio() {
    local round
    for round in $(seq "$BENCH_ROUNDS"); do
        awk -v a="${R[p5_$1_$round]:-0}" -v b="${R[p5_$2_$round]:-0}" 'BEGIN {if (a+0 > 0 && b+0 > 0) printf "%.4f\n", a/b}'
    done | sort -n | awk '{v[NR]=$1} END {if (NR==0) print "-"; else printf "%.2fx", (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'
}
if ((BENCH_ROUNDS > 0)); then
    echo "== part 5: redis-benchmark -t set -n $BENCH_N -c 50 -d 100${KEYSPACE[*]:+ ${KEYSPACE[*]}}, the three servers in turn, $BENCH_ROUNDS rounds"
    printf '%-6s %14s %14s %16s %14s %16s\n' "round" "hotpair async" "redis always" "redis everysec" "async/always" "async/everysec"
    for round in $(seq "$BENCH_ROUNDS"); do
        printf '%-6s %14s %14s %16s %14s %16s\n' "$round" "$(num "${R[p5_hp_$round]:-}")" "$(num "${R[p5_always_$round]:-}")" "$(num "${R[p5_everysec_$round]:-}")" \
            "$(ratio "${R[p5_hp_$round]:-}" "${R[p5_always_$round]:-}")" "$(ratio "${R[p5_hp_$round]:-}" "${R[p5_everysec_$round]:-}")"
    done
    echo "median of the rounds' ratios: async/always $(median_ratio hp always), async/everysec $(median_ratio hp everysec); errors: ${R[p5_err]:-?}"
    echo
fi
echo "== end-of-run checks (hotpair)"
printf '  %s\n' "${CHECKS[@]}"
echo
echo "== ratios and goals (Issue 3)"
R_DUR=$(ratio "${R[hp_c50]:-}" "${R[pg_c50]:-}"); R_DUR16=$(ratio "${R[hp_c16]:-}" "${R[pg_c16]:-}")
R_ALW=$(ratio "${R[hp_async.set]:-}" "${R[redis_always.set]:-}"); R_EVS=$(ratio "${R[hp_async.set]:-}" "${R[redis_everysec.set]:-}")
v_dur16=$(verdict "${R_DUR16%x}" ">=" 3); v_dur50=$(verdict "${R_DUR%x}" ">=" 3)
v_alw=$(verdict "${R_ALW%x}" ">=" 1); v_evs=$(verdict "${R_EVS%x}" ">=" 0.5)
CU_VALUE=${R[cu_rate]:-0}; ((${R[cu_done]})) || CU_VALUE=0
v_cu=$(verdict "$CU_VALUE" ">=" 200000)
printf '%-58s %12s  %s\n' "goal" "measured" "verdict"
printf '%-58s %12s  %s\n' "durable >= 3x PG sync standby TPS, 16 clients" "$R_DUR16" "$v_dur16"
printf '%-58s %12s  %s\n' "durable >= 3x PG sync standby TPS, 50 clients" "$R_DUR" "$v_dur50"
printf '%-58s %12s  %s\n' "async SET >= Redis appendfsync=always SET (>= 1x), part 1" "$R_ALW" "$v_alw"
printf '%-58s %12s  %s\n' "async SET within 2x of Redis everysec SET (>= 0.5x), part 1" "$R_EVS" "$v_evs"
if ((BENCH_ROUNDS > 0)); then
    M_ALW=$(median_ratio hp always); M_EVS=$(median_ratio hp everysec)
    printf '%-58s %12s  %s\n' "  the same, part 5 (median of $BENCH_ROUNDS rounds in turn): always" "$M_ALW" "$(verdict "${M_ALW%x}" ">=" 1)"
    printf '%-58s %12s  %s\n' "  the same, part 5 (median of $BENCH_ROUNDS rounds in turn): everysec" "$M_EVS" "$(verdict "${M_EVS%x}" ">=" 0.5)"
fi
printf '%-58s %12s  %s\n' "catch-up >= 200,000 records/s" "$( ((${R[cu_done]})) && echo "${R[cu_rate]}/s" || echo "not done")" "$v_cu"
echo "hotpair async GET / Redis everysec GET: $(ratio "${R[hp_async.get]:-}" "${R[redis_everysec.get]:-}")"
echo "server CPU per request, hotpair async / Redis always: $(ratio "${R[hp_async.cpu]:-}" "${R[redis_always.cpu]:-}") (${R[hp_async.cpu]:-?} / ${R[redis_always.cpu]:-?} us)"
fi
if ((${#S24[@]})); then
    echo
    echo "== issue 24: performance at scale (each baseline measured in this run; benches/scale_parts.sh)"
    printf '%-64s %14s  %s\n' "goal" "measured" "verdict"
    printf '%s\n' "${S24[@]}"
    ((${#CHECKS[@]})) && { echo "end-of-run checks (hotpair):"; printf '  %s\n' "${CHECKS[@]}"; }
fi
} | tee "$TMP/report.txt"
[[ -n "${BENCH_REPORT:-}" ]] && cp "$TMP/report.txt" "$BENCH_REPORT"
exit 0
