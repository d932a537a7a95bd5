"""Every dependency in use, probed without traffic (contract section 12): the relay (connect, EHLO, QUIT: never an
email), clamd (PING), the store and rspamd (/ping), by one process of the node every `[server] probe_interval`,
into a file of the state folder that the status page and /metrics read."""
from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from app import scanning, spam
from app.mail.message import ehlo_name
from app.mail.session import RelayBroke, RelayRefused, RelaySession
from app.options.model import Options
from app.store import StoreError, open_store
from app.store.folder import StateFolderError, state_folder

log = logging.getLogger(__name__)
FILE = "probes.json"
PROBE_TIMEOUT = 5.0  # seconds each probe may take at most


def _relay(options: Options) -> None:
    smtp = options.smtp
    try:  # a session as deliveries open it, TLS and AUTH included, then QUIT
        RelaySession(smtp, ehlo_name(smtp), time.monotonic() + min(smtp.timeout, PROBE_TIMEOUT)).quit()
    except RelayRefused as refused:
        raise OSError(f"{refused.code} {refused.text} at {refused.stage}".strip()) from None
    except RelayBroke as broke:
        raise OSError(f"{broke.error or type(broke.error).__name__} at {broke.stage}") from None


def _targets(options: Options) -> dict[str, tuple[str, Callable[[], None]]]:
    """The dependencies in use, each with what it is and how to probe it."""
    found: dict[str, tuple[str, Callable[[], None]]] = {
        "relay": (f"{options.smtp.host}:{options.smtp.port}", lambda: _relay(options))}
    if options.scan.clamd:
        found["clamd"] = (options.scan.clamd, lambda: scanning.ping(options.scan.clamd, PROBE_TIMEOUT))
    store = open_store(options.server.dedup_store)
    found["store"] = (store.description, store.check)
    if options.spam.rspamd:
        found["rspamd"] = (options.spam.rspamd, lambda: spam.ping(options.spam.rspamd, options.spam.timeout))
    return found


def probe(options: Options) -> dict[str, dict[str, Any]]:
    """Probe every dependency in use once: whether it is up, what it is, and the error when it is not."""
    results = {}
    try:
        targets = _targets(options)
    except StoreError as exc:  # the state folder itself cannot be used
        return {"store": {"up": False, "target": "the state folder", "error": str(exc), "at": time.time()}}
    for name, (target, check) in targets.items():
        try:
            check()
            error = ""
        except (OSError, StoreError, scanning.ScanFailed, spam.SpamCheckFailed) as exc:
            error = str(exc) or type(exc).__name__
        results[name] = {"up": not error, "target": target, "error": error, "at": time.time()}
    return results


def read_probes() -> dict[str, dict[str, Any]]:
    """The node's latest probes, by dependency ({} before the first)."""
    try:
        content = state_folder().read(FILE)
        found = json.loads(content) if content else {}
    except (StateFolderError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


class Prober:
    """The thread of this process that probes, while this process holds the node's probe lock. A process that forks
    (gunicorn's master, with preload) leaves the probing to its children, which start their own threads."""

    FIRST_DELAY = 1.0  # seconds before the first probe: a master forks its workers meanwhile

    def __init__(self) -> None:
        self._options: Callable[[], Options] | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._busy = threading.Lock()  # held while probing: a fork waits for the probes in flight, never copies them
        self._forks = False  # this process forked: its children probe
        self._held = -1  # the descriptor holding the node's probe lock, in this process
        os.register_at_fork(before=self._busy.acquire, after_in_parent=self._forked,
                            after_in_child=self._after_fork_in_child)

    def start(self, options: Callable[[], Options]) -> None:
        """Probe the dependencies of the options `options()` gives, from now on in this process."""
        with self._lock:
            self._options = options
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="probes", daemon=True).start()

    def _forked(self) -> None:
        self._forks = True
        self._busy.release()

    def _after_fork_in_child(self) -> None:
        self._busy, self._lock, self._forks = threading.Lock(), threading.Lock(), False
        if self._held >= 0:  # the parent's hold: this child never holds the node's lock through it
            os.close(self._held)
            self._held = -1
        if self._options is not None:
            self.start(self._options)

    def _run(self) -> None:
        time.sleep(self.FIRST_DELAY)
        last = 0.0
        while not self._forks:
            with self._busy:
                options = self._options() if self._options is not None else None
                interval = options.server.probe_interval if options is not None else 0
                if options is not None and interval and time.monotonic() - last >= interval:
                    self._held = self._held if self._held >= 0 else _take_node_lock()
                    if self._held >= 0:
                        last = time.monotonic()
                        self._publish(probe(options))
            time.sleep(1.0 if self._held >= 0 or not interval else interval)
        if self._held >= 0:  # a forking process: its lock goes to one of its children
            os.close(self._held)
            self._held = -1

    @staticmethod
    def _publish(results: dict[str, dict[str, Any]]) -> None:
        before = read_probes()
        for name, result in results.items():
            was = before.get(name, {}).get("up")
            if not result["up"] and was is not False:
                log.warning("%s %s is down: %s", name, result["target"], result["error"], extra={"fields": {
                    "event": "dependency_down", "dependency": name, "target": result["target"],
                    "reason": result["error"]}})
            elif result["up"] and was is False:
                log.info("%s %s is reachable again", name, result["target"], extra={"fields": {
                    "event": "dependency_up", "dependency": name, "target": result["target"]}})
        try:
            state_folder().write(FILE, json.dumps(results).encode())
        except (OSError, StateFolderError):
            pass  # the page and /metrics then show the last probes they could read


def _take_node_lock() -> int:
    """A descriptor holding the node's probe lock, or -1 while another process of the node holds it."""
    try:
        folder = state_folder()
        fd = os.open("probes.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600, dir_fd=folder.fd)
    except (OSError, StateFolderError):
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return -1
    return fd  # held for the process's life: another process takes over when it ends


PROBER = Prober()
