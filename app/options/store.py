"""The options in force in each process, and how every process of a node converges on the newest good file."""
# Each process re-reads options.ini when it changes: a watcher thread checks every `reload_interval`, and so does
# a request that finds the check due. A valid file is published to the node's snapshot (snapshot.py); a process
# whose file is invalid serves that snapshot when it is newer than its own options, so no process, however idle
# or newly forked, serves older options than any process of the node has seen. A node that never saw good
# options refuses to start.
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from app.metrics import DIGEST_LENGTH, FILE_VALID, OPTIONS_INFO, OPTIONS_VERSION, RELOADS, start_at_zero
from app.options.load import options_from_bytes, read_file
from app.options.model import Options, OptionsError, changed_keys
from app.options.snapshot import NodeSnapshot, digest_of
from app.options.watcher import watch
from app.store.folder import StateFolderError, file_signature

log = logging.getLogger("app.options")
REQUEST_WAIT = 1.0  # seconds a request waits for a check in progress (the contract allows reload_interval + 1 s)
start_at_zero(RELOADS, ("ok", "refused"))


@dataclass(frozen=True)
class InForce:
    """Options in force, with the node's version number and the digest of the file text they came from."""

    options: Options
    version: int
    digest: str


class OptionsStore:
    """The options in force in this process: re-read when options.ini changes, never older than the node's newest;
    an edit that does not validate is refused and logged."""

    def __init__(self, path: str | Path, relay: tuple[str, int] | None = None, clamd: str | None = None) -> None:
        self.path = Path(path)
        self.relay = relay  # (host, port) in place of [smtp]'s: the local run's --relay
        self.clamd = clamd  # in place of [scan] clamd: the local run's --clamd
        self.snapshot = NodeSnapshot(self.path)
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._signature = file_signature(self.path)
        self.file_problems: list[str] = []  # why the file on disk is not the one in force, while it is not
        self._failed: str | None = None  # why the snapshot could not be written, while it cannot
        try:
            raw = read_file(self.path)
            options = options_from_bytes(raw, self.path)
        except OptionsError as error:
            in_force = self._from_snapshot(0)
            if in_force is None:
                raise
            self._refused(error, in_force.version)
        else:
            digest = digest_of(raw)
            try:
                version = self.snapshot.publish(raw, digest, lambda: file_signature(self.path) == self._signature)
            except OSError as exc:
                record = self.snapshot.read()
                if record is None:  # a new node that cannot keep its snapshot must not start
                    raise StateFolderError(f"the state folder {self.snapshot.folder.path} cannot be written "
                                           f"({exc.strerror or exc}): free it, or make it writable") from None
                version = int(record["version"])
                self._publish_failed(exc, version)
            if version is None:
                self._signature = None  # read again at the first check
            in_force = InForce(options, version or 0, digest)
        self._in_force = self._with_overrides(in_force)
        self._checked = time.monotonic()
        self._published_in = 0  # the process that last set the version gauges
        self._shown_digest = ""
        watch(self)

    @property
    def file_valid(self) -> bool:
        """Whether the options file on disk is the one in force (else an edit of it was refused)."""
        return not self.file_problems

    @property
    def in_force(self) -> InForce:
        """The options in force with their version and digest."""
        return self._in_force

    def current(self) -> Options:
        """The options to serve one request with: one consistent set, never a half-applied edit."""
        if self._published_in != os.getpid():
            self._publish_version()
        if time.monotonic() - self._checked >= self._in_force.options.server.reload_interval:
            self.refresh(wait=False)
        return self._in_force.options

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` (in the thread that found it) whenever other options come into force."""
        self._listeners.append(listener)

    def refresh(self, wait: bool = True) -> None:
        """Look at the file, and at the node's snapshot while the file is invalid, if the check is due."""
        # With `wait` False (a request) a check that another thread is making is waited for at most REQUEST_WAIT
        # seconds: then the options in force serve the request, however slowly the file reads.
        if not self._lock.acquire(timeout=-1 if wait else REQUEST_WAIT):
            return
        try:
            if self._published_in != os.getpid():  # a new worker shows its version before it serves anything
                self._publish_version()
            if time.monotonic() - self._checked < self._in_force.options.server.reload_interval:
                return
            try:
                self._refresh()
            except Exception:  # noqa: BLE001 - the options in force stay; the watcher and requests go on
                log.exception("options check failed; the options in force stay",
                              extra={"fields": {"event": "options_reload", "result": "failed"}})
            finally:
                self._checked = time.monotonic()
        finally:
            self._lock.release()

    def _refresh(self) -> None:
        signature = file_signature(self.path)
        if signature != self._signature:
            try:
                raw = read_file(self.path)
                options = options_from_bytes(raw, self.path)
            except OptionsError as error:
                self._signature = signature
                RELOADS.labels("refused").inc()
                self._refused(error, self._in_force.version)
            else:
                if self.file_problems:
                    self.file_problems = []
                    FILE_VALID.set(1)
                    log.info("options file %s is valid again", self.path, extra={"fields": {
                        "event": "options_file_valid", "digest": digest_of(raw)[:DIGEST_LENGTH]}})
                digest = digest_of(raw)
                try:
                    version = self.snapshot.publish(raw, digest, lambda: file_signature(self.path) == signature,
                                                    self._in_force.version)
                except OSError as exc:  # the signature is not kept: the edit is tried again at the next check
                    self._publish_failed(exc, self._in_force.version)
                    if digest != self._in_force.digest:
                        self._adopt(InForce(options, self._in_force.version, digest), "read (not published)")
                    return
                self._signature = signature if version is not None else None
                self._failed = None
                if version is not None and (version, digest) != (self._in_force.version, self._in_force.digest):
                    RELOADS.labels("ok").inc()
                    self._adopt(InForce(options, version, digest), "reloaded")
        if self.file_problems and self.snapshot.changed():
            in_force = self._from_snapshot(self._in_force.version)
            if in_force is not None:
                self._adopt(in_force, "taken from the node's newest good options")

    def _publish_failed(self, error: OSError, version: int) -> None:
        """A valid edit that the node's snapshot cannot hold: refused for the node (counted and logged once per
        reason), served by this process, and tried again at every check."""
        reason = error.strerror or str(error)
        if reason == self._failed:
            return
        self._failed = reason
        RELOADS.labels("refused").inc()
        problem = (f"the node's snapshot in {self.snapshot.folder.path} cannot be written ({reason}); this process "
                   "serves the edit itself and tries again at every check")
        log.error("options reload refused for the node: %s", problem, extra={"fields": {
            "event": "options_reload", "result": "refused", "version": version, "problems": [problem]}})

    def _from_snapshot(self, newer_than: int) -> InForce | None:
        record = self.snapshot.read()
        if record is None or int(record["version"]) <= newer_than:
            return None
        try:
            options = options_from_bytes(record["text"].encode("utf-8"), self.path)
        except OptionsError as error:
            log.error("the node's newest good options no longer validate: %s", "; ".join(error.problems))
            return None
        return InForce(options, int(record["version"]), record["digest"])

    def _with_overrides(self, in_force: InForce) -> InForce:
        """The options with the local run's --relay and --clamd in place of what the file says."""
        options = in_force.options
        if self.relay is not None:
            options = replace(options, smtp=replace(options.smtp, host=self.relay[0], port=self.relay[1]))
        if self.clamd is not None:
            options = replace(options, scan=replace(options.scan, clamd=self.clamd))
        return replace(in_force, options=options)

    def _adopt(self, in_force: InForce, how: str) -> None:
        changed = changed_keys(self._in_force.options, in_force.options)
        self._in_force = self._with_overrides(in_force)
        self._publish_version()
        digest = in_force.digest[:DIGEST_LENGTH]
        # The names of the keys that changed, never their values: they may be secrets.
        log.info("options %s from %s (version %d, digest %s): %s", how, self.path, in_force.version, digest,
                 ", ".join(changed) or "no key changed", extra={"fields": {
                     "event": "options_reload", "result": "ok", "version": in_force.version, "digest": digest,
                     "changed": changed}})
        for listener in self._listeners:
            listener()

    def _publish_version(self) -> None:
        if self._published_in == os.getpid() and self._shown_digest != self._in_force.digest[:DIGEST_LENGTH]:
            OPTIONS_INFO.labels(self._shown_digest).set(0)
        self._published_in = os.getpid()
        self._shown_digest = self._in_force.digest[:DIGEST_LENGTH]
        OPTIONS_VERSION.set(self._in_force.version)
        OPTIONS_INFO.labels(self._shown_digest).set(1)
        FILE_VALID.set(0 if self.file_problems else 1)

    def _refused(self, error: OptionsError, version: int) -> None:
        """The file on disk does not validate: the newest good options stay in force, the problems are shown."""
        self.file_problems = error.problems
        FILE_VALID.set(0)
        log.error("options reload refused, the newest good options (version %d) stay in force: %s", version,
                  "; ".join(error.problems), extra={"fields": {
                      "event": "options_reload", "result": "refused", "version": version, "problems": error.problems}})

    def after_fork(self) -> None:
        """In a forked child: check the file at once, with a lock of its own."""
        self._lock = threading.Lock()
        self._checked = float("-inf")
        self._published_in = 0
