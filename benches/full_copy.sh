#!/bin/bash
# Times a real `hotpair rejoin b --allow-full-copy` on a pair holding about N keys (default: up to
# 1,000,000 random keys from 1,000,000 SETs), for comparison with a journal rejoin
# (`hotpair bench orchestrator --parts rejoin`). Results: docs/benchmarks.md, Orchestrator.
#
# Steps: a fresh pair (sync async) on 127.0.0.1:19401/19501 in a temp dir; load with
# redis-benchmark; wait until b has applied everything; `replicate stop`; 20 writes on a;
# `reopen-log a`; stop both; delete every closed segment of a's local journal (so b's range is
# gone); restart both; `replicate start`; time `rejoin b --allow-full-copy --json`; wait until b
# is caught up; `verify --full`. Needs jq, redis-benchmark and redis-cli, and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${B:-$PWD/target/release/hotpair}
N=${N:-1000000}
D=$(mktemp -d "${TMPDIR:-/tmp}/hotpair-fullcopy-XXXXXX")
$B init --dir $D --nodes a=127.0.0.1:19401,b=127.0.0.1:19501 --sync async >/dev/null
cd $D
P="--pair $D/pair.toml"
start() { $B $P run $1 >> $1.log 2>&1 & echo $! > $1.pid; }
stop_both() { kill -TERM $(cat a.pid) $(cat b.pid); for n in a b; do while kill -0 $(cat $n.pid) 2>/dev/null; do sleep 0.1; done; done; }
waitup() { for i in $(seq 200); do $B $P status --json >/dev/null 2>&1 && $B $P status --json | jq -e '.nodes.a.reachable and .nodes.b.reachable' >/dev/null && return; sleep 0.1; done; }
start a; start b; waitup; sleep 1
redis-benchmark -h 127.0.0.1 -p 19402 -t set -n $N -r $N -d 100 -P 16 -c 50 -q | tr "\r" "\n" | tail -2
for i in $(seq 600); do s=$($B $P status --json); [ "$(echo $s | jq '.nodes.a.lsn')" = "$(echo $s | jq '.nodes.b.lsn')" ] && break; sleep 0.5; done
echo "keys: $(redis-cli -p 19402 dbsize)  lsn: $(echo $s | jq '.nodes.a.lsn')"
$B $P replicate stop >/dev/null
for i in $(seq 20); do redis-cli -p 19402 set gone-$i $i >/dev/null; done
$B $P replicate reopen-log a >/dev/null
redis-cli -p 19402 set newest 1 >/dev/null
stop_both
ls a/journal/local
segs=(a/journal/local/*); n=${#segs[@]}
for ((i=0;i<n-1;i++)); do rm -f "${segs[$i]}"; done
start a; start b; waitup; sleep 1
$B $P replicate start >/dev/null
/usr/bin/time -f "full-copy rejoin wall %e s" $B $P rejoin b --allow-full-copy --json > fc.json
jq -c '{ok, total_ms, phases, details: (.details|{full_copy, divergence_lsn})}' fc.json
for i in $(seq 600); do s=$($B $P status --json); [ "$(echo $s | jq '.nodes.a.lsn')" = "$(echo $s | jq '.nodes.b.lsn')" ] && break; sleep 0.2; done
$B $P verify --full | tail -2
stop_both; cd /; rm -rf $D
