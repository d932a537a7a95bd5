"""The node's state folder: a private folder, opened once per process, that every file of the node's shared state
is reached through."""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path

STATE_DIR_VARIABLE = "EMAIL_API_STATE_DIR"


class StateFolderError(Exception):
    """The state folder cannot be used; the message names it, why, and what to do."""


def file_signature(path: Path | str, dir_fd: int | None = None) -> tuple[int, ...] | None:
    """Device, inode, size and modification time: what tells a changed file from the same one."""
    try:
        # With dir_fd, `path` is a name in that folder, and a symlink is not followed.
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
            # Held open: every file is reached through this descriptor, so a symlink swapped in under the path
            # later changes nothing.
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
        """Write `name` whole, then rename it into place; raises OSError when the folder cannot be written."""
        temporary = f".{name}-{os.getpid()}-{threading.get_ident()}.tmp"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=self.fd)
            with os.fdopen(fd, "wb") as out:
                out.write(content)
            os.replace(temporary, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            try:  # the temporary file never stays
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

    def names(self) -> list[str]:
        """The names of the folder's files."""
        return os.listdir(self.fd)

    def remove(self, name: str) -> None:
        """Remove file `name`, if it is still there."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except OSError:
            pass


def process_alive(pid: int, *, group: bool = False) -> bool:
    """Whether process (or process group) `pid` still runs: the files it left in the folder are still its own."""
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it runs, as another user
        pass
    return True


_folders: dict[str, StateFolder] = {}
_folders_lock = threading.Lock()


def state_folder() -> StateFolder:
    """$EMAIL_API_STATE_DIR, else a private folder in the temporary one; raises StateFolderError if unusable."""
    path = Path(os.environ.get(STATE_DIR_VARIABLE) or Path(tempfile.gettempdir()) / f"email-api-{os.geteuid()}")
    with _folders_lock:
        if str(path) not in _folders:
            _folders[str(path)] = StateFolder(path)
        return _folders[str(path)]


METRICS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
OWN_METRICS_VARIABLE = "EMAIL_API_OWN_METRICS_DIR"  # set beside it when the folder is the service's own


def use_own_metrics_folder() -> None:
    """Without PROMETHEUS_MULTIPROC_DIR, a metrics folder of this node's own in its state folder, shared by its
    processes (one process group: gunicorn's master and workers), so that /metrics is the node's however gunicorn
    was started. Must run before prometheus_client is imported; folders of ended nodes are removed."""
    inherited = os.environ.get(METRICS_VARIABLE)
    if inherited and inherited != os.environ.get(OWN_METRICS_VARIABLE):
        return  # the operator's (or the deploy configuration's) folder
    folder = state_folder()
    name = f"metrics-{os.getpgid(0)}"
    if inherited and Path(inherited).name == name:
        return  # this node's own, from the master that forked this worker
    for other in folder.names():
        group = other.removeprefix("metrics-")
        if other.startswith("metrics-") and group.isdigit() and not process_alive(int(group), group=True):
            shutil.rmtree(folder.path / other, ignore_errors=True)
    try:
        os.mkdir(name, 0o700, dir_fd=folder.fd)
    except FileExistsError:
        pass
    except OSError:
        return
    # prometheus_client maps its files into memory: on a full or read-only disk a write would kill the process
    # (SIGBUS). Room for them is made sure of first; without it, each process shows its own metrics.
    room = folder.path / name / f".room-{os.getpid()}"
    try:
        fd = os.open(room, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, 1024 * 1024)
        finally:
            os.close(fd)
            os.unlink(room)
    except OSError:
        return
    os.environ[METRICS_VARIABLE] = os.environ[OWN_METRICS_VARIABLE] = str(folder.path / name)
