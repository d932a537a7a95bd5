"""What keeps the SQLite store's writes cheap for a busy node: one writer at a time that wakes as soon as the lock
is free, and settles written a batch at a time, off the request's path."""
from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from app import metrics
from app.store.base import StoreError

log = logging.getLogger("app.store")
LOCK_TIMEOUT = 1.0  # seconds a write waits for another process's transaction before the store counts as failed
LOCK_POLL = 0.0001  # seconds between tries of another process's write lock
# Seconds the settler lets settles gather before it writes them: on a busy node one transaction for many instead of
# one for every request or two; a resend meanwhile waits for its first copy's settle as for one still in flight.
SETTLE_DELAY = 0.02


class WriteLock:
    """One writer of the node at a time: threads of a process queue on a lock that wakes the next as soon as it is
    free, and one thread per process tries the node's lock file every LOCK_POLL seconds; SQLite's own busy handler
    sleeps 1, 2, 5, 10 ms... between its tries, and threads sleeping there took a third of a node's throughput."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._threads = threading.Lock()
        self._fd, self._pid = -1, 0
        self._holder: int | None = None  # the thread that holds it

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the write lock of the node (already held by this thread: nothing more), or raise StoreError after
        LOCK_TIMEOUT."""
        if self._holder == threading.get_ident():
            yield
            return
        deadline = time.monotonic() + LOCK_TIMEOUT
        if not self._threads.acquire(timeout=LOCK_TIMEOUT):
            raise StoreError(f"no write turn within {LOCK_TIMEOUT:g} s")
        try:
            if self._pid != os.getpid():  # a lock of this process's own: a forked one shares its parent's
                self._fd, self._pid = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600), os.getpid()
            while True:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreError(f"another process held the write lock for {LOCK_TIMEOUT:g} s") from None
                    time.sleep(LOCK_POLL)
            self._holder = threading.get_ident()
            try:
                yield
            finally:
                self._holder = None
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()


class Settler:
    """Settles (a claim made delivered, ambiguous or removed) queued by request threads and written by one thread of
    the process, each batch in one transaction: the request answers without waiting for its settle."""

    # A settle that a crash loses leaves its claim pending: once older than one delivery's bound it counts as a
    # delivery cut off by its process's death (contract section 9), as a crash just before a synchronous settle.

    def __init__(self, write: Callable[[list[Any]], None]) -> None:
        self._write = write
        self._queue: list[Any] = []
        self._changed = threading.Condition()
        self._pid = 0
        atexit.register(self.flush)

    def put(self, item: Any) -> None:
        """Queue one settle; the settler thread writes it as soon as it can."""
        with self._changed:
            if self._pid != os.getpid():  # the first in this process (a forked worker has no thread)
                self._pid, self._queue = os.getpid(), []
                threading.Thread(target=self._run, name="store-settler", daemon=True).start()
            self._queue.append(item)
            self._changed.notify()

    def flush(self) -> None:
        """Write what is queued now (at the process's exit)."""
        with self._changed:
            batch, self._queue = self._queue, []
        self._write_batch(batch)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._queue))
            time.sleep(SETTLE_DELAY)  # the settles of the requests that end meanwhile go in the same transaction
            with self._changed:
                batch, self._queue = self._queue, []
            self._write_batch(batch)

    def _write_batch(self, batch: list[Any]) -> None:
        if not batch:
            return
        try:
            self._write(batch)
        except StoreError as exc:
            warn_store_error("settle claims", exc, "the duplicate store failed to settle %d claims: %s; their forms' "
                             "resends are delivered again once one delivery's bound has passed", len(batch), exc)


def warn_store_error(operation: str, error: StoreError, message: str, *arguments: object) -> None:
    """Count and log, as a WARNING, a failure of the SQLite store's background work (no form waits for it)."""
    metrics.DEDUP_STORE_ERRORS.inc()
    log.warning(message, *arguments, extra={"fields": {"event": "dedup_store_error", "operation": operation,
                                                       "reason": str(error)}})
