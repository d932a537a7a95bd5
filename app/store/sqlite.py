"""The store as a SQLite file in the state folder (WAL mode), shared by every process of the node."""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from app import metrics
from app.store.base import StoreError

log = logging.getLogger("app.store")

LOCK_TIMEOUT = 1.0  # seconds a write waits for another process's transaction before the store counts as failed
PURGE_BATCH = 16  # expired rows removed by each claim, so the file never grows without bound


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
            connection.execute("BEGIN IMMEDIATE")  # the schema in one write transaction
            connection.execute("CREATE TABLE IF NOT EXISTS claims "
                               "(key TEXT PRIMARY KEY, record TEXT NOT NULL, expires REAL NOT NULL)")
            connection.execute("CREATE INDEX IF NOT EXISTS claims_by_expiry ON claims (expires)")
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

    def _run(self, statements: list[tuple[str, tuple[object, ...]]], write: bool = True) -> sqlite3.Cursor:
        """Run the statements in one transaction; the cursor of the last. Any failure is a StoreError."""
        try:
            connection = self._connection()
            try:
                if write:
                    # The write lock first, so that a busy file is waited for (up to LOCK_TIMEOUT) instead of
                    # failing when another process wrote since this one read.
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

    def check(self) -> None:
        """One read of the file."""
        self._run([("SELECT 1 FROM claims LIMIT 1", ())], write=False).fetchone()
