#!/usr/bin/env bash
# benches/witness.sh — time from kill -9 of the primary to the first write the backup
# acknowledges by itself (automatic failover through an etcd witness), over many runs.
#
#   benches/witness.sh [TTL_SECONDS...]          e.g. benches/witness.sh 3 5
#
# For each ttl (default: 3 and 5), runs WITNESS_RUNS (default 20) drills one after another:
# `hotpair drill` spawns a pair at `durable` (on_peer_loss = "degrade-after:0s", heartbeat
# 100ms) with its own etcd on 127.0.0.1, runs 4 clients at 400 writes/s in all, SIGKILLs the
# primary after 1 s and waits until the backup is primary and taking writes (no admin command).
# The number is the drill report's `kill_to_first_write`: from the SIGKILL to the arrival at a
# client of the first +OK from the other node — what an application sees, including its retry
# backoff (10–200 ms in the drill's clients). Prints each run, then per ttl: runs, median, max.
# Environment: WITNESS_RUNS=20, WITNESS_KEEP=1 (keep the drills' directories), HOTPAIR
# (the binary; default target/release/hotpair). Needs etcd (apt-get install -y etcd-server).

set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HOTPAIR=${HOTPAIR:-$ROOT/target/release/hotpair}
RUNS=${WITNESS_RUNS:-20}
TTLS=("$@")
((${#TTLS[@]})) || TTLS=(3 5)
[[ -x $HOTPAIR ]] || { echo "witness.sh: no $HOTPAIR (cargo build --release)" >&2; exit 1; }
command -v etcd >/dev/null || [[ -n ${HOTPAIR_ETCD:-} ]] || { echo "witness.sh: etcd is missing (apt-get install -y etcd-server)" >&2; exit 1; }
WORK=$(mktemp -d /tmp/hotpair-witness-bench.XXXXXX)
[[ -n ${WITNESS_KEEP:-} ]] || trap 'rm -rf "$WORK"' EXIT

for ttl in "${TTLS[@]}"; do
  book=$WORK/ttl$ttl.toml
  cat > "$book" <<TOML
name = "kill -9 to the first write on the backup, ttl ${ttl}s"
sync = "durable"
heartbeat = "100ms"
on_peer_loss = "degrade-after:0s"
[witness]
ttl = "${ttl}s"
[[step]]
do = "workload"
clients = 4
rate = 400
keys = 2000
[[step]]
do = "sleep"
for = "1s"
[[step]]
do = "kill"
node = "a"
[[step]]
do = "wait-primary"
node = "b"
timeout = "30s"
[[step]]
do = "sleep"
for = "500ms"
[[step]]
do = "stop-workload"
[expect]
lost_acknowledged = 0
single_writer = true
TOML
  : > "$WORK/ttl$ttl.ms"
  for run in $(seq 1 "$RUNS"); do
    report=$WORK/ttl$ttl-run$run.json
    if ! TMPDIR=$WORK "$HOTPAIR" drill "$book" --report "$report" > "$WORK/ttl$ttl-run$run.log" 2>&1; then
      echo "ttl ${ttl}s run $run: the drill FAILED (see $WORK/ttl$ttl-run$run.log)"; WITNESS_KEEP=1; trap - EXIT; continue
    fi
    ms=$(python3 -c 'import json,sys; k=json.load(open(sys.argv[1]))["kill_to_first_write"]; print(round(k[0]["ms"]) if k and k[0]["ms"] is not None else "none")' "$report")
    echo "ttl ${ttl}s run $run: first write on b ${ms} ms after kill -9"
    [[ $ms == none ]] || echo "$ms" >> "$WORK/ttl$ttl.ms"
    [[ -n ${WITNESS_KEEP:-} ]] || rm -rf "$WORK"/hotpair-drill-*
  done
done
echo
printf '%-6s %5s %10s %10s %10s\n' ttl runs median_ms max_ms min_ms
for ttl in "${TTLS[@]}"; do
  python3 - "$ttl" "$WORK/ttl$ttl.ms" <<'PY'
import statistics, sys
ttl, path = sys.argv[1], sys.argv[2]
ms = [float(l) for l in open(path) if l.strip()]
if ms:
    print(f"{ttl + 's':<6} {len(ms):>5} {statistics.median(ms):>10.0f} {max(ms):>10.0f} {min(ms):>10.0f}")
else:
    print(f"{ttl + 's':<6} {0:>5} {'-':>10} {'-':>10} {'-':>10}")
PY
done
