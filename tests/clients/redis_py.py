"""redis-py (default settings: RESP3 via HELLO 3) against a hotpair primary.

Usage: redis_py.py HOST:PORT. Runs one transactional pipeline (MULTI/EXEC) writing py:a, py:n
and py:h, WATCH-guarded optimistic updates, scans and hashes; prints "ok". Any warning or logged
warning (such as redis-py's RESP2 fall-back) fails the run.
"""

import logging
import sys
import warnings

warnings.simplefilter("error")


class Fail(logging.Handler):
    def emit(self, record):
        raise SystemExit(f"logged {record.levelname}: {record.getMessage()}")


logging.getLogger().addHandler(Fail(level=logging.WARNING))

import redis  # noqa: E402

host, port = sys.argv[1].rsplit(":", 1)
r = redis.Redis(host=host, port=int(port))


def check(what, got, want):
    if got != want:
        raise SystemExit(f"{what}: got {got!r}, want {want!r}")


pipe = r.pipeline(transaction=True)
pipe.set("py:a", "1").incrby("py:n", 7).hset("py:h", mapping={"f": "v", "g": "w"})
check("pipeline", pipe.execute(), [True, 7, 2])
check("hgetall (a RESP3 map)", r.hgetall("py:h"), {b"f": b"v", b"g": b"w"})
check("protocol", r.connection_pool.get_connection().protocol, 3)


def bump(pipe):
    value = int(pipe.get("py:n"))
    pipe.multi()
    pipe.set("py:n", value + 1)


check("watched transaction", r.transaction(bump, "py:n"), [True])
check("after watched transaction", r.get("py:n"), b"8")
# A watched key written by another client aborts the EXEC.
with r.pipeline() as pipe:
    pipe.watch("py:n")
    r.set("py:n", "100")
    pipe.multi()
    pipe.set("py:n", "0")
    try:
        pipe.execute()
        raise SystemExit("EXEC ran although a watched key changed")
    except redis.WatchError:
        pass
check("not overwritten", r.get("py:n"), b"100")
check("scan_iter", sorted(r.scan_iter(match="py:*", count=1)), [b"py:a", b"py:h", b"py:n"])
check("ttl", (r.set("py:t", "x", ex=100), r.ttl("py:t")), (True, 100))
check("info", r.info("server")["redis_version"], "7.2.4")
print("ok")
