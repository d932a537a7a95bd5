"""The node's snapshot: the newest good options text that any process of the node has seen, with a version
number that only grows, in a private file shared by the processes of one process group (gunicorn's master and
its workers). A process whose options file is invalid serves it; a new process group starts a new one."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.options import OptionsError

STATE_DIR_VARIABLE = "EMAIL_API_STATE_DIR"


def file_signature(path: Path) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def state_folder() -> Path:
    """The folder for the node's snapshots: $EMAIL_API_STATE_DIR, else a private folder in the temporary one."""
    folder = Path(os.environ.get(STATE_DIR_VARIABLE) or Path(tempfile.gettempdir()) / f"email-api-{os.geteuid()}")
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = folder.stat()
    except OSError as exc:
        raise OptionsError([f"{STATE_DIR_VARIABLE} {folder}: cannot be used: {exc.strerror or exc}"]) from None
    if st.st_uid != os.geteuid() or st.st_mode & 0o022 or not os.access(folder, os.W_OK | os.X_OK):
        raise OptionsError([f"{STATE_DIR_VARIABLE} {folder}: must be a folder of this user that others cannot write"])
    return folder


class NodeSnapshot:
    """The newest good options text that any process of this node (process group) has seen, with its version."""

    def __init__(self, options_path: Path) -> None:
        self.folder = state_folder()
        self.name = "options-" + hashlib.sha256(str(options_path.resolve()).encode()).hexdigest()[:16]
        self._seen: tuple[int, ...] | None = None

    def _path(self, suffix: str) -> Path:
        return self.folder / f"{self.name}-{os.getpgid(0)}{suffix}"

    def changed(self) -> bool:
        """Whether the snapshot changed since this process last read or wrote it."""
        return file_signature(self._path(".json")) != self._seen

    def read(self) -> dict[str, Any] | None:
        """The snapshot's record, or None when there is none yet."""
        path = self._path(".json")
        self._seen = file_signature(path)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and {"version", "digest", "text"} <= record.keys() else None

    def publish(self, raw: bytes, digest: str, still_current: Callable[[], bool]) -> int | None:
        """Record `raw` as the newest good text and return its version; None when the file changed meanwhile."""
        with open(self._path(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            record = self.read()
            if record is not None and record["digest"] == digest:
                return int(record["version"])
            if not still_current():  # what this process read is older than the file: it must not win
                return None
            if record is None:
                self._forget_ended_nodes()
            version = (int(record["version"]) if record else 0) + 1
            handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=f".{self.name}-")
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump({"version": version, "digest": digest, "text": raw.decode("utf-8")}, out)
            os.replace(temporary, self._path(".json"))
            self._seen = file_signature(self._path(".json"))
            return version

    def _forget_ended_nodes(self) -> None:
        """Remove the snapshots of earlier runs, whose process group has ended."""
        for path in self.folder.glob(f"{self.name}-*"):
            group = path.stem.rpartition("-")[2]
            if not group.isdigit():
                continue
            try:
                os.killpg(int(group), 0)
            except ProcessLookupError:
                path.unlink(missing_ok=True)
            except OSError:
                pass
