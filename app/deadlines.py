"""Deadlines on sockets: a relay or a virus scanner that is too slow is cut off, however it trickles its answer."""
from __future__ import annotations

import os
import socket
import threading
import time


class Watch:
    """One deadline on one socket, registered while the `with` block runs; `expired` once it cut the socket off."""

    __slots__ = ("at", "sock", "expired", "deadlines")

    def __init__(self, deadlines: Deadlines, sock: socket.socket, at: float) -> None:
        self.deadlines, self.sock, self.at, self.expired = deadlines, sock, at, False

    def __enter__(self) -> Watch:
        self.deadlines.add(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.deadlines.discard(self)


class Deadlines:
    """Sockets shut down at their deadline, which ends any read or write waiting on them: a whole reply or a whole
    exchange is bounded, where a socket timeout bounds each recv() only."""

    # One thread per process looks at the watched sockets every TICK seconds: a registration costs a set insert,
    # and deadlines are met to within a tick.
    TICK = 0.05

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: set[Watch] = set()
        self._pid = 0
        # A fork never copies the lock while this process's thread holds it: the child would wait on it forever.
        os.register_at_fork(before=self._lock.acquire, after_in_parent=self._lock.release,
                            after_in_child=self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._pid, self._watches = 0, set()

    def cut_off(self, sock: socket.socket, at: float) -> Watch:
        """A context manager that shuts `sock` down if its block has not ended by `at` (a time.monotonic() value)."""
        return Watch(self, sock, at)

    def add(self, watch: Watch) -> None:
        """Watch `watch` until it is discarded."""
        with self._lock:
            if self._pid != os.getpid():  # the first use in this process (a forked worker has no thread)
                self._pid, self._watches = os.getpid(), set()
                threading.Thread(target=self._run, name="socket-deadlines", daemon=True).start()
            self._watches.add(watch)

    def discard(self, watch: Watch) -> None:
        """Stop watching `watch`."""
        with self._lock:
            self._watches.discard(watch)

    def _run(self) -> None:
        while True:
            time.sleep(self.TICK)
            now = time.monotonic()
            with self._lock:
                expired = [watch for watch in self._watches if watch.at <= now]
                for watch in expired:
                    self._watches.discard(watch)
                    watch.expired = True
            for watch in expired:
                try:
                    watch.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


DEADLINES = Deadlines()
