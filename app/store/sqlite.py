"""The store as a SQLite file in the state folder (WAL mode), shared by every process of the node."""
from __future__ import annotations

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
from app.store.sqlite_schema import OUTCOMES, QUOTA_SLOTS, REQUESTS_SCHEMA, SCHEMA, insert_requests
from app.store.sqlite_writes import LOCK_POLL, LOCK_TIMEOUT, Writer

log = logging.getLogger("app.store")

CHECKPOINT_EVERY = 1.0  # seconds between checkpoints of the write-ahead log into the file
PURGE_EVERY, PURGE_BATCH = 8, 64  # every 8th claim removes up to 64 expired rows of each table: no endless growth
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
    """Claims and counts in a SQLite file that every process of the node opens; one short transaction for every
    write of a process's threads that wait for one."""

    def __init__(self, path: str | Path, shown_as: Path | None = None) -> None:
        self.path = path
        self.description = f"SQLite file {shown_as or path}"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._inode: int | None = None  # the file this process last opened
        self._writer = Writer(self._write, self._checkpoint)
        self._claims = 0  # claims and counts written by this process
        self._checkpointed = time.monotonic()

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
            # No checkpoint in a request's commit (its fsyncs held every writer of the node up): the writer's thread
            # checkpoints.
            connection.execute("PRAGMA wal_autocheckpoint=0")
            connection.execute("BEGIN IMMEDIATE")  # the schema in one write transaction
            for statement in SCHEMA:
                connection.execute(statement)
            connection.execute("COMMIT")
            for statement in REQUESTS_SCHEMA:
                connection.execute(statement)
            connection.execute("PRAGMA busy_timeout=0")  # a busy file is waited for in _run
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

    def _run(self, statements: Callable[[sqlite3.Connection], T]) -> T:
        """Run `statements` on this thread's connection, again while another process writes (up to LOCK_TIMEOUT);
        any failure of the store is a StoreError."""
        deadline = time.monotonic() + LOCK_TIMEOUT
        try:
            connection = self._connection()
            try:
                while True:
                    try:
                        return statements(connection)
                    except sqlite3.OperationalError as error:
                        if error.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                            raise
                    time.sleep(LOCK_POLL)
            except BaseException:
                self._local.connection = None  # the next use opens the file anew: it may have been mended
                connection.close()
                raise
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(str(exc)) from None

    def add(self, key: str, record: str, ttl: float, quotas: Sequence[Quota] = ()) -> bool:
        """Insert the record, or take the place of an expired one, and count the quotas, in one transaction."""
        return bool(self._writer.submit((key, record, ttl, _slotted(quotas), None)))

    def count(self, quotas: Sequence[Quota]) -> None:
        """Count the quotas in one transaction."""
        self._writer.submit((None, None, 0, _slotted(quotas), None))

    def settle(self, key: str, old: str, new: str | None, ttl: float) -> None:
        """Queue the swap for the next write of this process."""
        self._writer.put((key, new, ttl, (), old))

    def _write(self, items: list[tuple[str | None, str | None, float, Sequence[Quota], str | None]]) -> list[Any]:
        """One go of the writer in one statement: for each claim or count whether it was stored (or the OverQuota to
        raise), None for each settle."""
        claims = sum(old is None for *_, old in items)
        purge = ((self._claims + claims) // PURGE_EVERY - self._claims // PURGE_EVERY) * PURGE_BATCH
        self._claims += claims
        now, values = time.time(), list[object]()
        for n, (key, record, ttl, quotas, old) in enumerate(items):
            values += (n, key, record, ttl, old, now, purge if n == 0 else 0)
            for slot in range(QUOTA_SLOTS):
                values += (quotas[slot].key, quotas[slot].limit, quotas[slot].period) if slot < len(quotas) else (
                    None, None, None)

        def statements(connection: sqlite3.Connection) -> list[tuple[int, int | None, float | None]]:
            connection.execute(insert_requests(len(items)), values)  # in their order: each sees those before
            return connection.execute(OUTCOMES).fetchall()
        refused = {n: (quota, retry_after) for n, quota, retry_after in self._run(statements)}
        if time.monotonic() - self._checkpointed >= CHECKPOINT_EVERY:
            self._checkpointed = time.monotonic()
            self._writer.chores_due()
        results: list[Any] = []
        for n, (_, _, _, quotas, old) in enumerate(items):
            quota, retry_after = refused.get(n, (None, None))
            if old is not None:
                results.append(None)
            elif n not in refused:
                results.append(True)
            else:  # no quota named: a claim in force
                results.append(False if quota is None else OverQuota(quotas[quota], retry_after or 0.0))
        return results

    def _checkpoint(self) -> None:
        # PASSIVE: copies what it can into the file without waiting for readers or writers.
        self._run(lambda connection: connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())

    def get(self, key: str) -> str | None:
        """The record under `key` unless it expired."""
        row = self._run(lambda connection: connection.execute(
            "SELECT record FROM claims WHERE key = ? AND expires > ?", (key, time.time())).fetchone())
        return row[0] if row else None

    def swap(self, key: str, old: str, new: str | None, ttl: float) -> bool:
        """Compare and replace (or remove) in one statement, its own transaction."""
        parameters: tuple[object, ...]
        if new is None:
            sql, parameters = "DELETE FROM claims WHERE key = ? AND record = ?", (key, old)
        else:
            sql, parameters = ("UPDATE claims SET record = ?, expires = ? WHERE key = ? AND record = ?",
                               (new, time.time() + ttl, key, old))
        return self._run(lambda connection: connection.execute(sql, parameters).rowcount == 1)

    def check(self) -> None:
        """One read of the file."""
        self._run(lambda connection: connection.execute("SELECT 1 FROM claims LIMIT 1").fetchone())


def _slotted(quotas: Sequence[Quota]) -> Sequence[Quota]:
    if len(quotas) > QUOTA_SLOTS:
        raise ValueError(f"at most {QUOTA_SLOTS} quotas count for one form")
    return quotas
