"""The node's snapshot: the newest good options text that any process of the node (gunicorn's master and its
workers, one process group) has seen, with a version number that only grows, in the state folder."""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.store.folder import file_signature, process_alive, state_folder

log = logging.getLogger("app.options")


def digest_of(raw: bytes) -> str:
    """The SHA-256 of an options text, in hex."""
    return hashlib.sha256(raw).hexdigest()


class NodeSnapshot:
    """The newest good options text that any process of this node (process group) has seen, with its version."""

    def __init__(self, options_path: Path) -> None:
        self.folder = state_folder()
        self.name = "options-" + hashlib.sha256(str(options_path.resolve()).encode()).hexdigest()[:16]
        self._seen: tuple[int, ...] | None = None
        self._refused: tuple[int, ...] | None = None  # the last record that did not verify, logged once

    def _file(self, suffix: str) -> str:
        return f"{self.name}-{os.getpgid(0)}{suffix}"

    def changed(self) -> bool:
        """Whether the snapshot changed since this process last read or wrote it."""
        return file_signature(self._file(".json"), self.folder.fd) != self._seen

    def read(self) -> dict[str, Any] | None:
        """The snapshot's record, or None when there is none yet or it does not verify (logged once)."""
        name = self._file(".json")
        self._seen = file_signature(name, self.folder.fd)
        content = self.folder.read(name)
        try:
            record = json.loads(content) if content is not None else None
        except ValueError:
            return None
        if not (isinstance(record, dict) and {"version", "digest", "text"} <= record.keys()
                and isinstance(record["text"], str) and isinstance(record["version"], int)):
            return None
        if digest_of(record["text"].encode("utf-8")) != record["digest"]:
            if self._seen != self._refused:
                self._refused = self._seen
                log.error("refused the node's snapshot %s/%s: its text does not match its digest (a forged or "
                          "damaged record); it is ignored", self.folder.path, name,
                          extra={"fields": {"event": "snapshot_refused", "file": f"{self.folder.path}/{name}"}})
            return None
        return record

    def publish(self, raw: bytes, digest: str, still_current: Callable[[], bool], at_least: int = 0) -> int | None:
        """Record `raw` as the newest good text and return its version, above `at_least` (this process's, should the
        record have been lost); None when the file changed meanwhile, OSError when the folder cannot be written."""
        fd = os.open(self._file(".lock"), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=self.folder.fd)
        with os.fdopen(fd, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            record = self.read()
            if record is not None and record["digest"] == digest:
                return int(record["version"])
            if not still_current():  # what this process read is older than the file: it must not win
                return None
            if record is None:
                self._forget_ended_nodes()
            version = max(int(record["version"]) if record else 0, at_least) + 1
            record = {"version": version, "digest": digest, "text": raw.decode("utf-8")}
            self.folder.write(self._file(".json"), json.dumps(record).encode())
            self._seen = file_signature(self._file(".json"), self.folder.fd)
            return version

    def _forget_ended_nodes(self) -> None:
        """Remove the snapshots of earlier runs, whose process group has ended."""
        for name in self.folder.names():
            stem, _, group = name.rpartition(".")[0].rpartition("-")
            if stem == self.name and group.isdigit() and not process_alive(int(group), group=True):
                self.folder.remove(name)
