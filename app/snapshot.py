"""The node's state folder and its snapshot: the newest good options text that any process of the node has seen,
with a version number that only grows, in a private file shared by the processes of one process group
(gunicorn's master and its workers). A process whose options file is invalid serves it; a new process group
starts a new one.

The folder is opened once per process and every file in it is reached through that descriptor, never by its
path again, so a symlink swapped in under the path later changes nothing. A record is used only when its text
hashes to its digest.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

STATE_DIR_VARIABLE = "EMAIL_API_STATE_DIR"
log = logging.getLogger("app.options")


class StateFolderError(Exception):
    """The state folder cannot be used; the message names it, why, and what to do."""


def file_signature(path: Path | str, dir_fd: int | None = None) -> tuple[int, ...] | None:
    """What tells a changed file from the same one: device, inode, size and modification time. With `dir_fd`,
    `path` is a name in that folder, and a symlink is not followed."""
    try:
        st = os.stat(path, dir_fd=dir_fd, follow_symlinks=dir_fd is None)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class StateFolder:
    """The node's state folder, opened once: a folder of this user that no one else may write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fix = (f"set {STATE_DIR_VARIABLE} to a folder of the service's own user (mode 0700)" if
               os.environ.get(STATE_DIR_VARIABLE) else f"remove it, or set {STATE_DIR_VARIABLE} to a folder of "
               "the service's own user (mode 0700)")
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            why = "it is a symbolic link" if path.is_symlink() else exc.strerror or str(exc)
            raise StateFolderError(f"the state folder {path} cannot be used ({why}): {fix}") from None
        st = os.fstat(self.fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022 or not os.access(path, os.W_OK | os.X_OK):
            os.close(self.fd)
            owner = "another user owns it" if st.st_uid != os.geteuid() else "others may write to it"
            raise StateFolderError(f"the state folder {path} cannot be used ({owner}): {fix}")

    def file(self, name: str) -> str:
        """A path to `name` through the held descriptor, for libraries that open files by path (SQLite)."""
        return f"/proc/self/fd/{self.fd}/{name}"

    def write(self, name: str, content: bytes) -> None:
        """Write `name` whole under a temporary name, then rename it into place; the temporary file never stays.
        Raises OSError when the folder cannot be written (full, read-only)."""
        temporary = f".{name}-{os.getpid()}-{threading.get_ident()}.tmp"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=self.fd)
            with os.fdopen(fd, "wb") as out:
                out.write(content)
            os.replace(temporary, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            try:
                os.unlink(temporary, dir_fd=self.fd)
            except OSError:
                pass
            raise

    def read(self, name: str, limit: int = 1024 * 1024) -> bytes | None:
        """The bytes of regular file `name` (at most `limit`), or None when there is none."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as file:
            return file.read(limit) if stat.S_ISREG(os.fstat(file.fileno()).st_mode) else None


_folders: dict[str, StateFolder] = {}
_folders_lock = threading.Lock()


def state_folder() -> StateFolder:
    """$EMAIL_API_STATE_DIR, else a private folder in the temporary one; opened once per process.

    Raises StateFolderError when it cannot be used."""
    path = Path(os.environ.get(STATE_DIR_VARIABLE) or Path(tempfile.gettempdir()) / f"email-api-{os.geteuid()}")
    with _folders_lock:
        if str(path) not in _folders:
            _folders[str(path)] = StateFolder(path)
        return _folders[str(path)]


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
        """Record `raw` as the newest good text and return its version, above `at_least` (the version this process
        serves, should the record have been lost); None when the file changed meanwhile.

        Raises OSError when the folder cannot be written (full, read-only); nothing is left behind then."""
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
        for name in os.listdir(self.folder.fd):
            stem, _, group = name.rpartition(".")[0].rpartition("-")
            if stem != self.name or not group.isdigit():
                continue
            try:
                os.killpg(int(group), 0)
            except ProcessLookupError:
                try:
                    os.unlink(name, dir_fd=self.folder.fd)
                except OSError:
                    pass
            except OSError:
                pass
