"""The store as a SQLite file in the state folder (WAL mode), shared by every process of the node."""
from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from app import metrics
from app.store.base import OverQuota, Quota, StoreError
from app.store.sqlite_writes import LOCK_TIMEOUT, Settler, WriteLock, warn_store_error

log = logging.getLogger("app.store")

# Every CHECKPOINT_EVERY writes of a process (a claim writes about 7 pages of 4 KiB), its settler copies the
# write-ahead log into the file and the log starts again; the log's file is cut back to WAL_SIZE_LIMIT bytes then.
CHECKPOINT_EVERY, WAL_SIZE_LIMIT = 200, 8 * 2**20
CHECKPOINT = object()  # queued for the settler when a checkpoint is due
PURGE_EVERY, PURGE_BATCH = 8, 64  # every 8th write removes up to 64 expired rows of each table: no endless growth
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, record TEXT NOT NULL, expires REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS claims_by_expiry ON claims (expires)",
    # One row per count of a quota: the moving window is the rows of the last period.
    "CREATE TABLE IF NOT EXISTS hits (quota TEXT NOT NULL, at REAL NOT NULL, expires REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS hits_by_quota ON hits (quota, at)",
    "CREATE INDEX IF NOT EXISTS hits_by_expiry ON hits (expires)",
)
SCHEMA_NAMES = tuple(statement.split()[5] for statement in SCHEMA)  # the name after "CREATE … IF NOT EXISTS"
T = TypeVar("T")


def _switch_to_wal(connection: sqlite3.Connection) -> None:
    """WAL mode, kept in the file once set."""
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            # SQLite answers a switch while another connection sets up the same new file with "database is
            # locked" at once, without its busy wait: so it is tried again.
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


class SqliteStore:
    """Claims in a SQLite file that every process of the node opens; one short transaction each."""

    def __init__(self, path: str | Path, shown_as: Path | None = None) -> None:
        self.path = path
        self.description = f"SQLite file {shown_as or path}"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._inode: int | None = None  # the file this process last opened
        self._writer = WriteLock(f"{path}.lock")
        self._writes = 0
        self._settler = Settler(self._settle_all)

    def _file_inode(self) -> int | None:
        try:
            return os.stat(self.path).st_ino
        except OSError:
            return None

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is not None and self._local.pid == os.getpid():
            if self._local.inode == self._file_inode():
                return connection
            # The file was deleted or replaced: this connection writes to one no other process opens any more.
            self._local.connection = None
            connection.close()
        connection = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT, isolation_level=None)
        try:
            _switch_to_wal(connection)
            connection.execute("PRAGMA synchronous=NORMAL")  # a power cut may forget a claim, never corrupt the file
            connection.execute("PRAGMA wal_autocheckpoint=0")  # the settler checkpoints (_checkpoint)
            connection.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            # A read of the schema, so that a reader never waits for another process's write; it is written, in one
            # transaction under the node's write lock, only into a file that lacks some of it.
            [(found,)] = connection.execute(f"SELECT count(*) FROM sqlite_master WHERE name IN "
                                            f"({', '.join('?' * len(SCHEMA_NAMES))})", SCHEMA_NAMES)
            if found < len(SCHEMA_NAMES):
                with self._writer.held():
                    connection.execute("BEGIN IMMEDIATE")
                    for statement in SCHEMA:
                        connection.execute(statement)
                    connection.execute("COMMIT")
        except BaseException:
            connection.close()
            raise
        self._local.connection, self._local.pid, self._local.inode = connection, os.getpid(), self._file_inode()
        self._notice(self._local.inode)
        return connection

    def _notice(self, inode: int | None) -> None:
        """Log and count, once per process, that the file is another one than this process had open."""
        with self._lock:
            previous, self._inode = self._inode, inode
        if previous is not None and previous != inode:
            metrics.DEDUP_STORE_ERRORS.inc()
            log.warning("the %s was deleted or replaced while the service ran; this process uses the new file "
                        "(claims in the old one are forgotten)", self.description, extra={"fields": {
                            "event": "dedup_store_replaced", "store": self.description}})

    def _run(self, transaction: Callable[[sqlite3.Connection], T], write: bool = True) -> T:
        """Run `transaction` on this thread's connection, in one write transaction when `write`; any failure of the
        store is a StoreError, an OverQuota rolls it back."""
        with self._writer.held() if write else contextlib.nullcontext():
            try:
                connection = self._connection()
                try:
                    if write:
                        # The write lock first, so that a busy file is waited for (up to LOCK_TIMEOUT) instead of
                        # failing when another process wrote since this one read.
                        connection.execute("BEGIN IMMEDIATE")
                    try:
                        result = transaction(connection)
                    except OverQuota:
                        connection.execute("ROLLBACK")
                        raise
                    if write:
                        connection.execute("COMMIT")
                        self._writes += 1
                        if self._writes % CHECKPOINT_EVERY == 0:
                            self._settler.put(CHECKPOINT)
                    return result
                except OverQuota:
                    raise
                except BaseException:
                    self._local.connection = None  # the next use opens the file anew: it may have been mended
                    connection.close()
                    raise
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(str(exc)) from None

    def add(self, key: str, record: str, ttl: float, quotas: Sequence[Quota] = ()) -> bool:
        """Insert the record, or take the place of an expired one, and count the quotas, in one transaction."""
        def transaction(connection: sqlite3.Connection) -> bool:
            now = self._now_purged(connection)
            if connection.execute("INSERT INTO claims (key, record, expires) VALUES (?, ?, ?) ON CONFLICT (key) DO "
                                  "UPDATE SET record = excluded.record, expires = excluded.expires "
                                  "WHERE claims.expires <= ?", (key, record, now + ttl, now)).rowcount != 1:
                return False  # a claim in force: nothing counted
            _count(connection, quotas, now)  # over a quota: the claim is rolled back with the count
            return True
        return self._run(transaction)

    def count(self, quotas: Sequence[Quota]) -> None:
        """Count the quotas in one transaction."""
        self._run(lambda connection: _count(connection, quotas, self._now_purged(connection)))

    def _now_purged(self, connection: sqlite3.Connection) -> float:
        """The time now; every PURGE_EVERY-th write of the process also removes expired rows."""
        return _purge(connection) if self._writes % PURGE_EVERY == 0 else time.time()

    def get(self, key: str) -> str | None:
        """The record under `key` unless it expired."""
        row = self._run(lambda connection: connection.execute(
            "SELECT record FROM claims WHERE key = ? AND expires > ?", (key, time.time())).fetchone(), write=False)
        return row[0] if row else None

    def swap(self, key: str, old: str, new: str | None, ttl: float) -> bool:
        """Compare and replace (or remove) in one statement."""
        parameters: tuple[object, ...]
        if new is None:
            sql, parameters = "DELETE FROM claims WHERE key = ? AND record = ?", (key, old)
        else:
            sql, parameters = ("UPDATE claims SET record = ?, expires = ? WHERE key = ? AND record = ?",
                               (new, time.time() + ttl, key, old))
        return self._run(lambda connection: connection.execute(sql, parameters).rowcount == 1)

    def settle(self, key: str, old: str, new: str | None, ttl: float) -> None:
        """Queue the swap for the settler, which writes every queued settle in one transaction."""
        self._settler.put((key, old, new, ttl))

    def _settle_all(self, queued: list[Any]) -> None:
        """The settler's work: the queued settles in one transaction, then a checkpoint when one is due."""
        swaps = [swap for swap in queued if swap is not CHECKPOINT]
        if swaps:
            self._run(lambda connection: self._write_settles(connection, swaps))
        if len(swaps) < len(queued):
            try:
                self._checkpoint()
            except StoreError as exc:  # the log grows until the next one: a warning, no lost claim
                warn_store_error("checkpoint", exc, "the %s could not copy its write-ahead log into the file: %s",
                                 self.description, exc)

    def _checkpoint(self) -> None:
        """Copy the write-ahead log into the file beside the writers, then what they wrote meanwhile under the write
        lock, so that the log starts again."""
        # The log starts again only after a checkpoint that copied all of it, which one beside writers never does
        # under a steady stream of forms (the log grew by every claim: 770 MB in 4 s of a flood). A checkpoint's
        # fsyncs hold the node's writes up for some milliseconds: hence one every few hundred writes, not more.
        def passive(connection: sqlite3.Connection) -> None:
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self._run(passive, write=False)
        with self._writer.held():
            self._run(passive, write=False)

    @staticmethod
    def _write_settles(connection: sqlite3.Connection, swaps: list[tuple[str, str, str | None, float]]) -> None:
        now = time.time()
        connection.executemany("DELETE FROM claims WHERE key = ? AND record = ?",
                               [(key, old) for key, old, new, _ in swaps if new is None])
        connection.executemany("UPDATE claims SET record = ?, expires = ? WHERE key = ? AND record = ?",
                               [(new, now + ttl, key, old) for key, old, new, ttl in swaps if new is not None])

    def check(self) -> None:
        """One read of the file."""
        self._run(lambda connection: connection.execute("SELECT 1 FROM claims LIMIT 1").fetchone(), write=False)


def _purge(connection: sqlite3.Connection) -> float:
    """Remove a few expired claims and counts, so that the file never grows without bound; the time now."""
    now = time.time()
    connection.execute("DELETE FROM claims WHERE rowid IN (SELECT rowid FROM claims WHERE expires <= ? LIMIT ?)",
                       (now, PURGE_BATCH))
    connection.execute("DELETE FROM hits WHERE rowid IN (SELECT rowid FROM hits WHERE expires <= ? LIMIT ?)",
                       (now, PURGE_BATCH))
    return now


def _count(connection: sqlite3.Connection, quotas: Sequence[Quota], now: float) -> None:
    """Count each quota once, or raise OverQuota for the first that is full (the caller rolls back)."""
    for quota in quotas:
        since = now - quota.period
        [(counted,)] = connection.execute("SELECT count(*) FROM hits WHERE quota = ? AND at > ?", (quota.key, since))
        if counted >= quota.limit:
            # Room comes when the count that brings it back under the limit leaves the window.
            [(at,)] = connection.execute("SELECT at FROM hits WHERE quota = ? AND at > ? ORDER BY at LIMIT 1 OFFSET ?",
                                         (quota.key, since, counted - quota.limit))
            raise OverQuota(quota, at + quota.period - now)
    connection.executemany("INSERT INTO hits (quota, at, expires) VALUES (?, ?, ?)",
                           [(quota.key, now, now + quota.period) for quota in quotas])
