"""What every store of the node's shared state offers: records by key with an expiry (the duplicate claims), counts
in a moving window (the quotas), and a check for the probes. One module per backend implements it; its errors are
wrapped in StoreError there, once."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class StoreError(Exception):
    """The store could not be used; the message says why and never holds a password. `unknown` when a write was sent
    but its answer did not come: it may still land."""

    def __init__(self, reason: str, *, unknown: bool = False) -> None:
        super().__init__(reason)
        self.unknown = unknown


@dataclass(frozen=True)
class Quota:
    """At most `limit` counts under `key` in any `period` seconds (a moving window); `name` says which quota."""

    name: str
    key: str
    limit: int
    period: float


class OverQuota(Exception):
    """Counting would take `quota` past its limit; the window has room again in `retry_after` seconds."""

    def __init__(self, quota: Quota, retry_after: float) -> None:
        super().__init__(f"{quota.name} quota of {quota.limit} in {quota.period:g} s reached")
        self.quota, self.retry_after = quota, retry_after


class Store(Protocol):
    """Records by key, each with an expiry, and quota counts; every operation is one atomic step in the store."""

    description: str  # for log lines: where the store is, without a password

    def add(self, key: str, record: str, ttl: float, quotas: Sequence[Quota] = ()) -> bool:
        """Store `record` under `key` for `ttl` seconds unless a record is in force there, and count `quotas` with
        it; whether it was stored. Raises OverQuota (nothing stored, nothing counted) when a quota is full."""

    def count(self, quotas: Sequence[Quota]) -> None:
        """Count `quotas` together; raises OverQuota (nothing counted) when one is full."""

    def get(self, key: str) -> str | None:
        """The record in force under `key`, or None."""

    def swap(self, key: str, old: str, new: str | None, ttl: float) -> bool:
        """Replace `old` under `key` by `new` (None removes it) for `ttl` seconds if `old` is still in force."""

    def settle(self, key: str, old: str, new: str | None, ttl: float) -> None:
        """`swap` once the store can, without waiting for it: a claim's outcome after its delivery."""

    def check(self) -> None:
        """Reach the store once, raising StoreError when it cannot be used (the probes)."""
