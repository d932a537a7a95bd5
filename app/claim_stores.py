"""Where the duplicate check keeps its claims: a SQLite file shared by the processes of a node, or a Redis (or
Valkey) server shared by several nodes. Both offer the same three short operations on a key's record."""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from app.snapshot import STATE_DIR_VARIABLE, StateFolderError, state_folder

LOCK_TIMEOUT = 1.0  # seconds a claim waits for another process's transaction before the store counts as failed
REDIS_TIMEOUT = 1.0  # seconds for connecting to Redis and for each of its replies
PURGE_BATCH = 16  # expired rows removed by each claim, so the file never grows without bound
REDIS_PREFIX = "email-api:claim:"


class StoreError(Exception):
    """The store could not be used; the message says why and never holds a password."""


class ClaimStore(Protocol):
    """Records by key, each with an expiry: add one if none is in force, read one, replace one if unchanged."""

    description: str  # for log lines: where the store is, without a password

    def add(self, key: str, record: str, ttl: float) -> bool:
        """Store `record` under `key` for `ttl` seconds unless a record is in force there; whether it was."""

    def get(self, key: str) -> str | None:
        """The record in force under `key`, or None."""

    def swap(self, key: str, old: str, new: str | None, ttl: float) -> bool:
        """Replace the record `old` under `key` by `new` (None: remove it) for `ttl` seconds, only if `old` is
        still the one in force; whether it was."""


def _switch_to_wal(connection: sqlite3.Connection) -> None:
    """WAL mode (kept in the file once set). SQLite answers a switch while another connection sets up the same
    new file with "database is locked" at once, without its busy wait: so it is tried again, up to LOCK_TIMEOUT."""
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


class SqliteStore:
    """Claims in a SQLite file (WAL mode) that every process of the node opens; one short transaction each."""

    def __init__(self, path: str | Path, shown_as: Path | None = None) -> None:
        self.path = path
        self.description = f"SQLite file {shown_as or path}"
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is not None and self._local.pid == os.getpid():
            return connection
        connection = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT, isolation_level=None)
        try:
            _switch_to_wal(connection)
            connection.execute("PRAGMA synchronous=NORMAL")  # a power cut may forget a claim, never corrupt the file
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("CREATE TABLE IF NOT EXISTS claims "
                               "(key TEXT PRIMARY KEY, record TEXT NOT NULL, expires REAL NOT NULL)")
            connection.execute("CREATE INDEX IF NOT EXISTS claims_by_expiry ON claims (expires)")
            connection.execute("COMMIT")
        except BaseException:
            connection.close()
            raise
        self._local.connection, self._local.pid = connection, os.getpid()
        return connection

    def _run(self, statements: list[tuple[str, tuple[object, ...]]], write: bool = True) -> sqlite3.Cursor:
        """Run the statements in one transaction; the cursor of the last. Any failure is a StoreError.

        A write takes the write lock first (BEGIN IMMEDIATE), so that a busy file is waited for, up to
        LOCK_TIMEOUT, instead of failing when another process wrote since this one read."""
        try:
            connection = self._connection()
            try:
                if write:
                    connection.execute("BEGIN IMMEDIATE")
                for sql, parameters in statements:
                    cursor = connection.execute(sql, parameters)
                if write:
                    connection.execute("COMMIT")
                return cursor
            except BaseException:
                self._local.connection = None  # the next use opens the file anew: it may have been mended
                connection.close()
                raise
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(str(exc)) from None

    def add(self, key: str, record: str, ttl: float) -> bool:
        """Insert the record, or take the place of an expired one, and purge a few other expired rows."""
        now = time.time()
        cursor = self._run([
            ("DELETE FROM claims WHERE rowid IN (SELECT rowid FROM claims WHERE expires <= ? LIMIT ?)",
             (now, PURGE_BATCH)),
            ("INSERT INTO claims (key, record, expires) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
             "record = excluded.record, expires = excluded.expires WHERE claims.expires <= ?",
             (key, record, now + ttl, now)),
        ])
        return cursor.rowcount == 1

    def get(self, key: str) -> str | None:
        """The record under `key` unless it expired."""
        row = self._run([("SELECT record FROM claims WHERE key = ? AND expires > ?", (key, time.time()))],
                        write=False).fetchone()
        return row[0] if row else None

    def swap(self, key: str, old: str, new: str | None, ttl: float) -> bool:
        """Compare and replace (or remove) in one statement."""
        statement: tuple[str, tuple[object, ...]]
        if new is None:
            statement = ("DELETE FROM claims WHERE key = ? AND record = ?", (key, old))
        else:
            statement = ("UPDATE claims SET record = ?, expires = ? WHERE key = ? AND record = ?",
                         (new, time.time() + ttl, key, old))
        return self._run([statement]).rowcount == 1


# Compare and swap in one step on the server: KEYS[1] the key; ARGV old record, new record ("" removes), ttl in ms.
SWAP_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1
"""


class RedisStore:
    """Claims in a Redis or Valkey server shared by several nodes, through redis-py: SET NX PX claims a key."""

    def __init__(self, url: str) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        split = urlsplit(url)
        self.secrets = [s for s in {split.password or "", unquote(split.password or "")} if s]
        self.description = f"Redis {split.scheme}://{split.hostname}:{split.port}{split.path or '/0'}"
        self._errors = (redis.RedisError, OSError)
        # No retries: a store that does not answer at once must not hold a customer's form up.
        self.client = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT,
                                           retry=Retry(NoBackoff(), 0), decode_responses=True)
        self._swap = self.client.register_script(SWAP_SCRIPT)

    def _fail(self, exc: Exception) -> StoreError:
        reason = str(exc) or type(exc).__name__
        for secret in self.secrets:
            reason = reason.replace(secret, "****")
        return StoreError(reason)

    def add(self, key: str, record: str, ttl: float) -> bool:
        """SET NX PX: only the first claim of a key wins."""
        try:
            return bool(self.client.set(REDIS_PREFIX + key, record, nx=True, px=max(1, round(ttl * 1000))))
        except self._errors as exc:
            raise self._fail(exc) from None

    def get(self, key: str) -> str | None:
        """GET."""
        try:
            value = self.client.get(REDIS_PREFIX + key)
        except self._errors as exc:
            raise self._fail(exc) from None
        return value if isinstance(value, str) else None

    def swap(self, key: str, old: str, new: str | None, ttl: float) -> bool:
        """The compare-and-swap script."""
        try:
            return bool(self._swap(keys=[REDIS_PREFIX + key], args=[old, new or "", max(1, round(ttl * 1000))]))
        except self._errors as exc:
            raise self._fail(exc) from None


_stores: dict[tuple[str, str], ClaimStore] = {}
_stores_lock = threading.Lock()


def claim_store(url: str) -> ClaimStore:
    """The store `[server] dedup_store` names: a Redis URL, or "" for the SQLite file in the node's state folder
    (shared by every process of the node, and kept across restarts)."""
    name = (url, "" if url else os.environ.get(STATE_DIR_VARIABLE, ""))
    with _stores_lock:
        if name not in _stores:
            if url:
                _stores[name] = RedisStore(url)
            else:
                try:
                    folder = state_folder()
                except StateFolderError as error:
                    raise StoreError(str(error)) from None
                _stores[name] = SqliteStore(folder.file("duplicates.sqlite3"), folder.path / "duplicates.sqlite3")
        return _stores[name]
