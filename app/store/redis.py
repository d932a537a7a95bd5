"""The store in a Redis (or Valkey) server shared by several nodes, through redis-py."""
from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.store.base import OverQuota, Quota, StoreError

REDIS_TIMEOUT = 1.0  # seconds for connecting to Redis and for each of its replies
PREFIX = "email-api:claim:"
QUOTA_PREFIX = "email-api:quota:"
# Compare and swap in one step on the server: KEYS[1] the key; ARGV old record, new record ("" removes), ttl in ms.
SWAP_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1
"""
# Claim and count in one step on the server, the quota windows on the server's clock. KEYS: the claim's key (when
# ARGV[1], the record, is not ""), then one list per quota, its counts' times, newest first (the moving window of
# the `limits` library). ARGV: record, ttl in ms, then each quota's limit and period in ms. Returns {1} stored and
# counted, {0} a record was in force (nothing counted), {-1, quota's index, ms until room} a quota is full.
ADD_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local first = 1
if ARGV[1] ~= '' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
  first = 2
end
for i = first, #KEYS do
  local limit, period = tonumber(ARGV[(i - first) * 2 + 3]), tonumber(ARGV[(i - first) * 2 + 4])
  local oldest = redis.call('LINDEX', KEYS[i], limit - 1)
  if oldest and tonumber(oldest) > now - period then return {-1, i - first, tonumber(oldest) + period - now} end
end
if ARGV[1] ~= '' then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
for i = first, #KEYS do
  local limit, period = ARGV[(i - first) * 2 + 3], ARGV[(i - first) * 2 + 4]
  redis.call('LPUSH', KEYS[i], now)
  redis.call('LTRIM', KEYS[i], 0, tonumber(limit) - 1)
  redis.call('PEXPIRE', KEYS[i], period)
end
return {1}
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
        self._add = self.client.register_script(ADD_SCRIPT)

    def _fail(self, exc: Exception) -> StoreError:
        reason = str(exc) or type(exc).__name__
        for secret in self.secrets:
            reason = reason.replace(secret, "****")
        # A reply that timed out leaves the command's fate to Redis: it may run once Redis gets to it.
        return StoreError(reason, unknown=isinstance(exc, (redis.TimeoutError, TimeoutError)))

    def add(self, key: str, record: str, ttl: float, quotas: Sequence[Quota] = ()) -> bool:
        """SET NX PX: only the first claim of a key wins; with quotas, the script that counts them with it."""
        try:
            if not quotas:
                return bool(self.client.set(PREFIX + key, record, nx=True, px=_milliseconds(ttl)))
            return self._run_add([PREFIX + key], [record, _milliseconds(ttl)], quotas)
        except (redis.RedisError, OSError) as exc:
            raise self._fail(exc) from None

    def count(self, quotas: Sequence[Quota]) -> None:
        """The script, without a claim."""
        try:
            self._run_add([], ["", 0], quotas)
        except (redis.RedisError, OSError) as exc:
            raise self._fail(exc) from None

    def _run_add(self, keys: list[str], args: list[str | int], quotas: Sequence[Quota]) -> bool:
        keys += [QUOTA_PREFIX + quota.key for quota in quotas]
        args += [value for quota in quotas for value in (quota.limit, _milliseconds(quota.period))]
        answer = self._add(keys=keys, args=args)
        if answer[0] == -1:
            raise OverQuota(quotas[int(answer[1])], int(answer[2]) / 1000)
        return bool(answer[0])

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

    def settle(self, key: str, old: str, new: str | None, ttl: float) -> None:
        """The swap, at once: one round trip, and every node must see it."""
        self.swap(key, old, new, ttl)

    def check(self) -> None:
        """PING."""
        try:
            self.client.ping()
        except (redis.RedisError, OSError) as exc:
            raise self._fail(exc) from None
