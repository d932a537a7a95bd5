"""How the SQLite store writes on a busy node: every claim, count and settle of a process that is waiting when a
write starts goes into the next one (group commit)."""
from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from app import metrics
from app.store.base import StoreError

log = logging.getLogger("app.store")
LOCK_TIMEOUT = 1.0  # seconds a write waits for another process's transaction before the store counts as failed
# Seconds between tries of the file while another process writes it: SQLite's own busy handler sleeps 1, 2, 5, 10 ms...
# between its tries, and threads sleeping there took a third of a busy node's throughput.
LOCK_POLL = 0.0001
PATIENCE = 2 * LOCK_TIMEOUT  # seconds a claim waits for its write: the one being written, then its own
SETTLE_DELAY = 0.02  # seconds a settle waits for a claim's write to ride with, before the writer's thread writes it
MAX_GO = 256  # items in one write at most (SQLite takes 32,766 values in one statement)


class Writer:
    """Group commit: the first claim of the process that needs a write writes everything queued by then; claims that
    arrive meanwhile wait, and the first of them writes the next go. Settles wait for nobody: they ride with the next
    go, or the writer's thread writes them when no claim comes; the thread also runs `chores` (checkpoints)."""

    # A settle that a crash loses leaves its claim pending: once older than one delivery's bound it counts as a
    # delivery cut off by its process's death (contract section 9), as a crash just before a synchronous settle.

    def __init__(self, write: Callable[[list[Any]], list[Any]], chores: Callable[[], None]) -> None:
        self._write = write  # the items of one go -> a result (or the exception to raise) for each
        self._chores = chores
        self._lock = threading.Condition()
        self._queue: list[_Item] = []
        self._writing = False  # a go is being written, or its writer is chosen
        self._armed = self._chores_due = False  # the thread is to write settles left behind / to run the chores
        self._pid = 0
        atexit.register(self.flush)

    def submit(self, item: Any) -> Any:
        """Write `item` with the others queued, and return its result (or raise its exception, or a StoreError when
        it was not written within PATIENCE)."""
        done = threading.Event()
        request = _Item(item, done)
        with self._lock:
            self._enqueue(request)
            request.leads = not self._writing
            self._writing = True
        if not request.leads and not done.wait(PATIENCE):
            with self._lock:
                forgotten = request in self._queue and not request.leads
                if forgotten:
                    self._queue.remove(request)
            if forgotten:
                raise StoreError(f"no write within {PATIENCE:g} s")
            done.wait()  # in a go being written now (a write ends within LOCK_TIMEOUT), or to lead one
        if request.leads:
            self._lead()
        if isinstance(request.result, BaseException):
            raise request.result
        return request.result

    def put(self, item: Any) -> None:
        """Queue `item` to be written with the next go, without waiting for it."""
        with self._lock:
            self._enqueue(_Item(item, None))
            self._arm()

    def chores_due(self) -> None:
        """Have the writer's thread run the chores once, off every request's path."""
        with self._lock:
            self._chores_due = True
            self._lock.notify()

    def flush(self) -> None:
        """Write what is queued now (at the process's exit)."""
        with self._lock:
            if self._writing or not self._queue:
                return
            self._writing = True
        self._lead()

    def _enqueue(self, item: _Item) -> None:
        if self._pid != os.getpid():  # the first in this process (a forked one has its parent's queue, no thread)
            self._pid, self._queue, self._writing, self._armed = os.getpid(), [], False, False
            threading.Thread(target=self._run, name="store-writer", daemon=True).start()
        self._queue.append(item)

    def _arm(self) -> None:
        if not self._armed:
            self._armed = True
            self._lock.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._armed or self._chores_due)
                armed, chores, self._chores_due = self._armed, self._chores_due, False
            if armed:
                time.sleep(SETTLE_DELAY)  # a claim's write meanwhile takes the settles along
                with self._lock:
                    self._armed = False
                    leads = bool(self._queue) and not self._writing
                    self._writing = self._writing or leads
                if leads:
                    self._lead()
            if chores:
                self._run_chores()

    def _lead(self) -> None:
        with self._lock:
            batch, self._queue = self._queue[:MAX_GO], self._queue[MAX_GO:]
        try:
            results = self._write([item.item for item in batch])
        except BaseException as error:  # every item of the go fails alike; the next go still gets written
            results = [error] * len(batch)
        with self._lock:
            following = next((item for item in self._queue if item.done is not None), None)
            if following is not None:
                following.leads = True
            elif self._queue:
                self._arm()  # settles only: the thread writes them
            self._writing = following is not None
        for item, result in zip(batch, results, strict=True):
            item.result = result
            if item.done is not None:
                item.done.set()
        if following is not None and following.done is not None:
            following.done.set()
        failed = [result for item, result in zip(batch, results, strict=True) if item.done is None
                  and isinstance(result, StoreError)]
        if failed:
            metrics.DEDUP_STORE_ERRORS.inc()
            log.warning("the duplicate store failed to settle %d claims: %s; their forms' resends are delivered "
                        "again once one delivery's bound has passed", len(failed), failed[0], extra={"fields": {
                            "event": "dedup_store_error", "operation": "settle claims", "reason": str(failed[0])}})

    def _run_chores(self) -> None:
        try:
            self._chores()
        except StoreError:
            pass  # a checkpoint left undone is done by the next one


class _Item:
    __slots__ = ("item", "result", "leads", "done")

    def __init__(self, item: Any, done: threading.Event | None) -> None:
        self.item, self.result, self.leads, self.done = item, None, False, done
