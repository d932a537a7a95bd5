"""The store in a Redis (or Valkey) server shared by several nodes, through redis-py."""
from __future__ import annotations

from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.store.base import StoreError

REDIS_TIMEOUT = 1.0  # seconds for connecting to Redis and for each of its replies
PREFIX = "email-api:claim:"
# Compare and swap in one step on the server: KEYS[1] the key; ARGV old record, new record ("" removes), ttl in ms.
SWAP_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1
"""


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisStore:
    """Claims in a Redis server: SET NX PX claims a key, a script compares and swaps."""

    def __init__(self, url: str) -> None:
        split = urlsplit(url)
        self.secrets = [s for s in {split.password or "", unquote(split.password or "")} if s]
        self.description = f"Redis {split.scheme}://{split.hostname}:{split.port}{split.path or '/0'}"
        # No retries: a store that does not answer at once must not hold a customer's form up.
        self.client = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT,
                                           retry=Retry(NoBackoff(), 0), decode_responses=True)
        self._swap = self.client.register_script(SWAP_SCRIPT)

    def _fail(self, exc: Exception) -> StoreError:
        reason = str(exc) or type(exc).__name__
        for secret in self.secrets:
            reason = reason.replace(secret, "****")
        # A reply that timed out leaves the command's fate to Redis: it may run once Redis gets to it.
        return StoreError(reason, unknown=isinstance(exc, (redis.TimeoutError, TimeoutError)))

    def add(self, key: str, record: str, ttl: float) -> bool:
        """SET NX PX: only the first claim of a key wins."""
        try:
            return bool(self.client.set(PREFIX + key, record, nx=True, px=_milliseconds(ttl)))
        except (redis.RedisError, OSError) as exc:
            raise self._fail(exc) from None

    def get(self, key: str) -> str | None:
        """GET."""
        try:
            value = self.client.get(PREFIX + key)
        except (redis.RedisError, OSError) as exc:
            raise self._fail(exc) from None
        return value if isinstance(value, str) else None

    def swap(self, key: str, old: str, new: str | None, ttl: float) -> bool:
        """The compare-and-swap script."""
        try:
            return bool(self._swap(keys=[PREFIX + key], args=[old, new or "", _milliseconds(ttl)]))
        except (redis.RedisError, OSError) as exc:
            raise self._fail(exc) from None

    def check(self) -> None:
        """PING."""
        try:
            self.client.ping()
        except (redis.RedisError, OSError) as exc:
            raise self._fail(exc) from None
