"""Django's RedisCache backend, unchanged, against a hotpair primary.

Usage: django_cache.py HOST:PORT. Exits 0 and prints "ok" when every check held; any failure
raises (exit 1) with the check that failed. Every warning is turned into an error, and redis-py's
logger is watched, so that a RESP3 fall-back warning fails the run too.
"""

import logging
import sys
import time
import warnings

warnings.simplefilter("error")


class Fail(logging.Handler):
    def emit(self, record):
        raise SystemExit(f"logged {record.levelname}: {record.getMessage()}")


logging.getLogger().addHandler(Fail(level=logging.WARNING))

import django  # noqa: E402
from django.conf import settings  # noqa: E402

settings.configure(
    CACHES={
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://{sys.argv[1]}/0",
        }
    }
)
django.setup()

from django.core.cache import cache  # noqa: E402


def check(what, got, want):
    if got != want:
        raise SystemExit(f"{what}: got {got!r}, want {want!r}")


cache.clear()
cache.set("greeting", "hello", timeout=60)
check("get", cache.get("greeting"), "hello")
check("get missing", cache.get("missing", "default"), "default")
check("add existing", cache.add("greeting", "other"), False)
check("add new", cache.add("fresh", {"a": [1, 2]}, timeout=60), True)
check("get pickled", cache.get("fresh"), {"a": [1, 2]})
cache.set("counter", 10)
check("incr", cache.incr("counter"), 11)
check("incr by", cache.incr("counter", 5), 16)
check("decr", cache.decr("counter", 6), 10)
try:
    cache.incr("absent")
    raise SystemExit("incr of a missing key did not raise")
except ValueError:
    pass
check("touch", cache.touch("greeting", 1), True)
check("touch missing", cache.touch("missing", 10), False)
cache.set_many({"m1": 1, "m2": "two", "m3": [3]}, timeout=120)
check("get_many", cache.get_many(["m1", "m2", "m3", "nope"]), {"m1": 1, "m2": "two", "m3": [3]})
cache.delete_many(["m1", "m2"])
check("after delete_many", cache.get_many(["m1", "m2", "m3"]), {"m3": [3]})
check("has_key", cache.has_key("m3"), True)
check("delete", cache.delete("m3"), True)
cache.set("forever", "x", timeout=None)
check("get forever", cache.get("forever"), "x")
# The touched key expires after one second on the server's clock.
deadline = time.monotonic() + 10
while cache.get("greeting") is not None:
    if time.monotonic() > deadline:
        raise SystemExit("a key touched to 1 s did not expire")
    time.sleep(0.05)
cache.set("last", "kept", timeout=300)
cache.clear()
check("after clear", cache.get_many(["forever", "fresh", "counter", "last"]), {})
cache.set("after-clear", "v", timeout=300)
check("set after clear", cache.get("after-clear"), "v")
print("ok")
