#!/usr/bin/env python3
"""benches/client_gap.py — the write gap applications see when the primary changes, per kind of
client, next to Redis Sentinel's own in the same run.

    python3 benches/client_gap.py [--runs 10] [--binary target/release/hotpair] [--skip-redis]

Three client applications write one key at a time (a SET, then ~1 ms pause), each unchanged for
the whole run (tests/clients/: redis_py_writer.py, ioredis_writer.js):
- redis-py with `Sentinel([...]).master_for("hotpair")` on the nodes' Sentinel ports;
- ioredis with its `sentinels` option (needs node and ioredis in target/npm: .ci/run installs it);
- a plain redis-py client connected to `hotpair proxy`.
All three write at once against one pair, so they see the same role changes.

- switchover: a pair at `durable`; `hotpair switchover` RUNS times (back and forth).
- failover: a pair at `async` (a promoted backup takes writes without a backup of its own, so
  the gap is the clients' following, not a rejoin); kill -9 of the primary, then at once
  `hotpair failover --to <backup>`; the old primary is restarted, rejoined and switched back to
  between runs.
- Redis anchor (unless --skip-redis; needs redis-server): a Redis master, one replica and one
  Sentinel (`redis-server --sentinel`, quorum 1) on 127.0.0.1, redis-py through that Sentinel:
  `SENTINEL FAILOVER` RUNS times, and kill -9 of the master RUNS times (down-after-milliseconds
  1000, so detection is part of that gap; hotpair's failover is started by the admin at once).

The gap of one event for one client: the longest time between two consecutive acknowledged
writes around it (the later one after the event started, the earlier one before it ended + 5 s
and before the next event started).
Prints the median and the maximum per client and event, with the errors the clients saw.
"""
import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENTS = os.path.join(ROOT, "tests", "clients")
NODE_MODULES = os.path.join(ROOT, "target", "npm", "node_modules")
CHILDREN = []


def free_base(count):
    """A port P with P..P+count-1 free on 127.0.0.1, below the ephemeral range."""
    while True:
        base = random.randrange(20000, 30000)
        ok = True
        for port in range(base, base + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base


def spawn(args, log, env=None):
    child = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    CHILDREN.append(child)
    return child


def wait(condition, what, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.02)
    sys.exit(f"client_gap: {what} did not happen within {timeout}s")


def redis_answers(port, *command):
    try:
        out = subprocess.run(["redis-cli", "-p", str(port), *command], capture_output=True, text=True, timeout=2)
        return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


class Pair:
    def __init__(self, binary, work, sync):
        self.binary, self.dir = binary, os.path.join(work, f"pair-{sync}")
        a, b = free_base(3), free_base(3)
        subprocess.run([binary, "init", "--dir", self.dir, "--nodes", f"a=127.0.0.1:{a},b=127.0.0.1:{b}",
                        "--sync", sync], check=True, capture_output=True)
        self.pair = os.path.join(self.dir, "pair.toml")
        self.data = {"a": a + 1, "b": b + 1}
        self.sentinels = f"127.0.0.1:{a + 2},127.0.0.1:{b + 2}"
        self.nodes = {}
        for node in "ab":
            self.start(node)
        wait(lambda: redis_answers(self.data["a"], "set", "warm", "up") == "OK", "the pair taking a write")

    def start(self, node):
        log = open(os.path.join(self.dir, f"{node}.log"), "a")
        self.nodes[node] = spawn([self.binary, "--pair", self.pair, "run", node], log)

    def kill(self, node):
        self.nodes[node].send_signal(signal.SIGKILL)
        self.nodes[node].wait()

    def hotpair(self, *args):
        out = subprocess.run([self.binary, "--pair", self.pair, *args], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"client_gap: hotpair {' '.join(args)} failed: {out.stderr.strip()}")

    def status(self):
        out = subprocess.run([self.binary, "--pair", self.pair, "status", "--json"], capture_output=True, text=True)
        return json.loads(out.stdout)["nodes"]

    def primary(self):
        return next((n for n, s in self.status().items() if s.get("role") == "primary"), None)

    def proxy(self):
        port = free_base(1)
        log = open(os.path.join(self.dir, "proxy.log"), "a")
        spawn([self.binary, "--pair", self.pair, "proxy", "--listen", f"127.0.0.1:{port}"], log)
        wait(lambda: redis_answers(port, "set", "warm", "proxy") == "OK", "the proxy taking a write")
        return port


class Writer:
    def __init__(self, name, command, work, prefix):
        self.name = name
        self.dir = os.path.join(work, f"writer-{prefix}")
        os.makedirs(self.dir, exist_ok=True)
        self.files = {k: os.path.join(self.dir, k) for k in ("progress", "stop", "out")}
        args = command + ["--prefix", prefix]
        for key, path in self.files.items():
            args += [f"--{key}", path]
        env = dict(os.environ, NODE_PATH=NODE_MODULES)
        self.child = spawn(args, open(os.path.join(self.dir, "log"), "w"), env)

    def acked(self):
        try:
            return int(open(self.files["progress"]).read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def finish(self):
        open(self.files["stop"], "w").close()
        self.child.wait(timeout=30)
        return json.load(open(self.files["out"]))


def writers_for(pair, work, proxy_port, tag):
    sentinel = ["--sentinels", pair.sentinels, "--name", "hotpair"]
    out = [Writer("redis-py (Sentinel)", [sys.executable, os.path.join(CLIENTS, "redis_py_writer.py")] + sentinel,
                  work, f"py{tag}")]
    if os.path.exists(os.path.join(NODE_MODULES, "ioredis")):
        out.append(Writer("ioredis (Sentinel)", ["node", os.path.join(CLIENTS, "ioredis_writer.js")] + sentinel,
                          work, f"js{tag}"))
    else:
        print("client_gap: ioredis is not in target/npm; its column is left out", file=sys.stderr)
    out.append(Writer("plain redis-py via hotpair proxy",
                      [sys.executable, os.path.join(CLIENTS, "redis_py_writer.py"), "--direct", f"127.0.0.1:{proxy_port}"],
                      work, f"px{tag}"))
    return out


def settle(writers, more=50):
    """Waits until every writer has acknowledged `more` writes since now."""
    marks = [w.acked() for w in writers]
    wait(lambda: all(w.acked() >= m + more for w, m in zip(writers, marks)), "every client writing again", 60)


def gap(ack_ms, start, end, next_start):
    """The longest pause between consecutive acknowledgements around the event [start, end]: the
    later one after the event started, the earlier one before it ended + 5 s and before the next
    event started."""
    longest = 0.0
    for before, after in zip(ack_ms, ack_ms[1:]):
        if after > start and before < min(end + 5000, next_start):
            longest = max(longest, after - before)
    return longest


def summarize(label, events, summaries):
    rows = []
    bounds = [(start, end, nxt[0]) for (start, end), nxt in zip(events, events[1:] + [(float("inf"), 0)])]
    for summary in summaries:
        gaps = [gap(summary["ack_ms"], start, end, next_start) for start, end, next_start in bounds]
        errors = sum(summary["errors"].values())
        rows.append((label, summary["client"], len(gaps), statistics.median(gaps), max(gaps), errors,
                     len(summary["acked"])))
    return rows


def hotpair_runs(binary, work, runs):
    rows = []
    pair = Pair(binary, work, "durable")
    writers = writers_for(pair, work, pair.proxy(), "s")
    settle(writers)
    events = []
    for _ in range(runs):
        start = time.time() * 1000
        pair.hotpair("switchover")
        events.append((start, time.time() * 1000))
        settle(writers)
    rows += summarize(f"hotpair switchover ({runs} runs)", events, [w.finish() for w in writers])

    pair = Pair(binary, work, "async")
    writers = writers_for(pair, work, pair.proxy(), "f")
    settle(writers)
    events = []
    for _ in range(runs):
        primary = pair.primary()
        backup = "b" if primary == "a" else "a"
        start = time.time() * 1000
        pair.kill(primary)
        pair.hotpair("failover", "--to", backup)
        events.append((start, time.time() * 1000))
        settle(writers)
        pair.start(primary)
        wait(lambda: pair.status()[primary].get("reachable"), f"{primary} answering after its restart")
        pair.hotpair("rejoin", primary)
        settle(writers)
    rows += summarize(f"hotpair kill -9 + failover, async ({runs} runs)", events, [w.finish() for w in writers])
    return rows


def redis_runs(work, runs):
    base = free_base(3)
    master, replica, sentinel = base, base + 1, base + 2
    directory = os.path.join(work, "redis")
    os.makedirs(directory, exist_ok=True)
    servers = {}

    def start_server(port, replica_of=None):
        args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", directory, "--dbfilename", f"dump-{port}.rdb"]
        if replica_of:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        servers[port] = spawn(args, open(os.path.join(directory, f"{port}.log"), "a"))

    start_server(master)
    start_server(replica, master)
    conf = os.path.join(directory, "sentinel.conf")
    with open(conf, "w") as out:
        out.write(f"port {sentinel}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {master} 1\n"
                  "sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 10000\n")
    spawn(["redis-server", conf, "--sentinel"], open(os.path.join(directory, "sentinel.log"), "a"))
    wait(lambda: "master_link_status:up" in redis_answers(replica, "info", "replication"), "the Redis replica in sync")
    wait(lambda: redis_answers(sentinel, "sentinel", "get-master-addr-by-name", "mymaster") != "", "the Sentinel")

    def current_master():
        return int(redis_answers(sentinel, "sentinel", "get-master-addr-by-name", "mymaster").split()[-1])

    def both_in_sync():
        other = replica if current_master() == master else master
        if "master_link_status:up" not in redis_answers(other, "info", "replication"):
            return False
        # Sentinel must know the replica (it learns it from the master's INFO) to fail over.
        known = redis_answers(sentinel, "sentinel", "replicas", "mymaster").split("\n")
        return "slave" in known and not any("_down" in line or "disconnected" in line for line in known)

    def failover_started():
        return redis_answers(sentinel, "sentinel", "failover", "mymaster") == "OK"

    def redis_writer(tag):
        return Writer("redis-py (Redis Sentinel)", [sys.executable, os.path.join(CLIENTS, "redis_py_writer.py"),
                      "--sentinels", f"127.0.0.1:{sentinel}", "--name", "mymaster"], work, tag)

    writer = redis_writer("rdp")
    settle([writer])
    planned = []
    for _ in range(runs):
        old = current_master()
        wait(both_in_sync, "both Redis servers in sync")
        start = time.time() * 1000
        wait(failover_started, "Redis Sentinel accepting SENTINEL FAILOVER")
        wait(lambda: current_master() != old, "Redis Sentinel switching the master")
        planned.append((start, time.time() * 1000))
        settle([writer])
    rows = summarize(f"Redis SENTINEL FAILOVER ({runs} runs)", planned, [writer.finish()])
    writer = redis_writer("rdk")
    settle([writer])
    killed = []
    for _ in range(runs):
        old = current_master()
        wait(both_in_sync, "both Redis servers in sync")
        start = time.time() * 1000
        servers[old].send_signal(signal.SIGKILL)
        servers[old].wait()
        wait(lambda: current_master() != old, "Redis Sentinel failing over")
        killed.append((start, time.time() * 1000))
        settle([writer])
        start_server(old)  # Sentinel turns it into a replica of the new master
    return rows + summarize(f"Redis kill -9 + Sentinel failover ({runs} runs)", killed, [writer.finish()])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "hotpair"))
    parser.add_argument("--skip-redis", action="store_true")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="hotpair-client-gap-")
    try:
        rows = hotpair_runs(args.binary, work, args.runs)
        if not args.skip_redis:
            rows += redis_runs(work, args.runs)
    finally:
        for child in CHILDREN:
            if child.poll() is None:
                child.kill()
                child.wait()
    print("| event | client | runs | median gap | max gap | errors seen | acknowledged |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, client, n, median, longest, errors, acked in rows:
        print(f"| {label} | {client} | {n} | {median:.0f} ms | {longest:.0f} ms | {errors} | {acked} |")
    print(f"(work directory: {work})")


if __name__ == "__main__":
    main()
