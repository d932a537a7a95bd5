"""What every store of the node's shared state offers: records by key with an expiry (the duplicate claims), and
a check for the probes. One module per backend implements it; errors are wrapped in StoreError once there."""
from __future__ import annotations

from typing import Protocol


class StoreError(Exception):
    """The store could not be used; the message says why and never holds a password. `unknown` when a write was sent
    but its answer did not come: it may still land."""

    def __init__(self, reason: str, *, unknown: bool = False) -> None:
        super().__init__(reason)
        self.unknown = unknown


class Store(Protocol):
    """Records by key, each with an expiry: add one if none is in force, read one, replace one if unchanged."""

    description: str  # for log lines: where the store is, without a password

    def add(self, key: str, record: str, ttl: float) -> bool:
        """Store `record` under `key` for `ttl` seconds unless a record is in force there; whether it was."""

    def get(self, key: str) -> str | None:
        """The record in force under `key`, or None."""

    def swap(self, key: str, old: str, new: str | None, ttl: float) -> bool:
        """Replace `old` under `key` by `new` (None removes it) for `ttl` seconds if `old` is still in force."""

    def check(self) -> None:
        """Reach the store once, raising StoreError when it cannot be used (the probes)."""
