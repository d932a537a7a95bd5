"""Turns: a process's requests run one at a time while none waits long, so that its threads do not hand Python's
interpreter lock to each other at every system call; a request that waits on another server gives its turn away."""
from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# Threads that run together hand the interpreter lock over at each read, write and SQLite step: on a busy node that
# took a third of a worker's CPU (docs/benchmarks.md). Taking turns makes it one hand-over a request.
TURN_WAIT = 0.02  # seconds a request waits for the turn; past that the holder is waiting, and it runs beside it
PATIENCE = 0.001  # seconds a reply may take before its request gives the turn away (poll() counts milliseconds)
SMALL_BODY = 64 * 1024  # bytes; a larger body is read and composed without the turn, as it was before turns


class Turns:
    """The turn of one process's request threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mine = threading.local()
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self._lock, self._mine = threading.Lock(), threading.local()

    def _has(self) -> bool:
        return getattr(self._mine, "has", False)

    def _take(self) -> None:
        self._mine.has = self._lock.acquire(timeout=TURN_WAIT)

    def _give(self) -> None:
        if self._has():
            self._mine.has = False
            self._lock.release()

    @contextlib.contextmanager
    def taken(self) -> Iterator[None]:
        """Run the block in this thread's turn, or beside the holder once it took longer than TURN_WAIT."""
        self._take()
        try:
            yield
        finally:
            self._give()

    @contextlib.contextmanager
    def given_away(self) -> Iterator[None]:
        """Run the block (a wait on another server) without the turn, and take it again after."""
        if not self._has():
            yield
            return
        self._give()
        try:
            yield
        finally:
            self._take()

    @contextlib.contextmanager
    def awaiting(self, sock: socket.socket | None) -> Iterator[None]:
        """Run a block that reads a reply from `sock`, without the turn if none is there within PATIENCE."""
        if not self._has() or sock is None or _readable(sock, PATIENCE):
            yield
            return
        with self.given_away():
            yield


TURNS = Turns()


def _readable(sock: socket.socket, timeout: float) -> bool:
    # poll(), not select(): a busy worker's descriptors pass select()'s limit of 1024.
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


class InTurns:
    """WSGI middleware: each request with a small body runs in its turn."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]]) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = environ.get("CONTENT_LENGTH") or ("" if environ.get("HTTP_TRANSFER_ENCODING") else "0")
        if not (length.isdigit() and int(length) <= SMALL_BODY):
            return self.wsgi_app(environ, start_response)
        with TURNS.taken():
            return self.wsgi_app(environ, start_response)
