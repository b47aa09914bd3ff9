"""A redis-py application that writes through a hotpair pair's Sentinel ports.

It is what an unchanged application does: one `Sentinel([...]).master_for(NAME)` client, created
once, writing `PREFIX:SEQ = SEQ` in a loop; an error is counted and the next write goes on (no
reconfiguration, no restart). Used by tests/follow_primary.rs and benches/client_gap.sh.

  python3 redis_py_writer.py --sentinels 127.0.0.1:7403,127.0.0.1:7503 --name hotpair \
      --progress FILE --stop FILE --out FILE [--prefix py] [--pause-ms 1]
  python3 redis_py_writer.py --direct 127.0.0.1:6379 ...   (a plain client, e.g. to hotpair proxy)

Writes the number of acknowledged writes to --progress now and then, stops when --stop exists,
and writes a JSON summary to --out: every acknowledged SEQ with its time (ms since the epoch),
the attempts, and the errors by kind.
"""

import argparse
import json
import os
import time

import redis
from redis.sentinel import Sentinel


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sentinels")
    parser.add_argument("--direct", help="HOST:PORT: a plain client with no Sentinel support")
    parser.add_argument("--name", default="hotpair")
    parser.add_argument("--progress", required=True)
    parser.add_argument("--stop", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--prefix", default="py")
    parser.add_argument("--pause-ms", type=float, default=1.0)
    args = parser.parse_args()
    # redis-py 5 and later try RESP3 (HELLO) first and fall back with a warning; say RESP2.
    # Older ones (Debian's python3-redis) have no `protocol` and speak RESP2 anyway.
    resp2 = {"protocol": 2} if int(redis.__version__.split(".")[0]) >= 5 else {}
    if args.direct:
        host, port = args.direct.rsplit(":", 1)
        master = redis.Redis(host=host, port=int(port), socket_timeout=2, **resp2)
        client = "redis-py via proxy"
    else:
        sentinels = []
        for item in args.sentinels.split(","):
            host, port = item.rsplit(":", 1)
            sentinels.append((host, int(port)))
        sentinel = Sentinel(sentinels, socket_timeout=2, sentinel_kwargs={"socket_timeout": 1, **resp2}, **resp2)
        master = sentinel.master_for(args.name, socket_timeout=2, **resp2)
        client = "redis-py"
    acked, ack_ms, errors = [], [], {}
    seq = 0
    last_progress = 0.0
    while not os.path.exists(args.stop):
        seq += 1
        try:
            master.set(f"{args.prefix}:{seq}", seq)
            acked.append(seq)
            ack_ms.append(time.time() * 1000.0)
        except Exception as error:  # every failure is counted, none stops the application
            kind = f"{type(error).__name__}: {str(error)[:80]}"
            errors[kind] = errors.get(kind, 0) + 1
        now = time.time()
        if now - last_progress > 0.02:
            write_atomically(args.progress, str(len(acked)))
            last_progress = now
        time.sleep(args.pause_ms / 1000.0)
    summary = {"client": client, "attempts": seq, "acked": acked, "ack_ms": ack_ms, "errors": errors}
    write_atomically(args.out, json.dumps(summary))


def write_atomically(path, text):
    temporary = path + ".tmp"
    with open(temporary, "w") as out:
        out.write(text)
    os.replace(temporary, path)


if __name__ == "__main__":
    main()
