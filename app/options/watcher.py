"""One watcher thread per process looks at every options store, so that idle workers take edits too."""
from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Protocol

TICK = 0.1  # seconds between the watcher's looks at the stores whose check is due


class Watched(Protocol):
    """What the watcher asks of an options store."""

    def refresh(self) -> None: ...

    def after_fork(self) -> None: ...


_watched: weakref.WeakSet[Watched] = weakref.WeakSet()
_watch_lock = threading.Lock()
_watcher_pid = 0


def watch(store: Watched) -> None:
    """Have this process's watcher look at `store`."""
    global _watcher_pid
    _watched.add(store)
    if _watcher_pid != os.getpid():
        _watcher_pid = os.getpid()
        threading.Thread(target=_run_watcher, name="options-watcher", daemon=True).start()


def _run_watcher() -> None:
    while True:
        with _watch_lock:
            for store in list(_watched):
                store.refresh()
        time.sleep(TICK)


def _after_fork_in_child() -> None:
    """A forked worker checks the file at once and runs a watcher of its own (threads do not survive fork)."""
    global _watcher_pid
    _watch_lock.release()
    stores = list(_watched)
    for store in stores:
        store.after_fork()
    if stores:
        _watcher_pid = 0
        watch(stores[0])


# A fork never copies a store in the middle of a check: its lock would stay taken in the child.
os.register_at_fork(before=_watch_lock.acquire, after_in_parent=_watch_lock.release,
                    after_in_child=_after_fork_in_child)
