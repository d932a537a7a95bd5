"""A real clamd (Debian's clamav-daemon) for the tests and the benchmark: in the foreground, with a configuration
of its own and a database of one signature, the EICAR test file, so that no signature download is needed."""
from __future__ import annotations

import hashlib
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench.ports import ForegroundServer, system_program

ROOT = Path(__file__).parent.parent
# The limits of Debian's /etc/clamav/clamd.conf (package clamav-daemon), where clamd's built-in ones differ.
DEBIAN_LIMITS = {"MaxScanSize": "100M", "MaxFileSize": "25M", "MaxRecursion": "16", "MaxFiles": "10000",
                 "StreamMaxLength": "25M"}
# The EICAR test file, built here (never committed): every virus scanner reports it.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
SIGNATURE = "Eicar-Test-Signature"


def clamd_executable() -> str | None:
    """Where Debian's clamd is, if it is installed."""
    return system_program("clamd")


def deployed_settings() -> dict[str, str]:
    """Debian's limits with the lines of deploy/clamd.conf merged in, as docs/operating.md has operators do."""
    lines = (ROOT / "deploy" / "clamd.conf").read_text().splitlines()
    return {**DEBIAN_LIMITS, **dict(line.split(None, 1) for line in lines if line.strip() and line[0] != "#")}


class Clamd(ForegroundServer):
    """clamd listening on a Unix socket of its own, with `settings` (lines of clamd.conf) added; stopped by PID."""

    def __init__(self, stream_max_length: str = "10M", settings: dict[str, str] | None = None) -> None:
        executable = clamd_executable()
        if executable is None:
            raise FileNotFoundError("clamd (Debian's clamav-daemon) is not installed")
        self.folder = Path(tempfile.mkdtemp(prefix="clamd-"))  # a Unix socket's path must stay short
        (self.folder / "db").mkdir()
        (self.folder / "db" / "eicar.hdb").write_text(f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:{SIGNATURE}\n")
        self.socket = str(self.folder / "clamd.sock")
        (self.folder / "clamd.conf").write_text(
            f"Foreground yes\nLocalSocket {self.socket}\nDatabaseDirectory {self.folder / 'db'}\n"
            f"LogFile {self.folder / 'clamd.log'}\n"
            + "".join(f"{name} {value}\n" for name, value in {"StreamMaxLength": stream_max_length,
                                                              **(settings or {})}.items()))
        self.process = subprocess.Popen([executable, f"--config-file={self.folder / 'clamd.conf'}"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("clamd did not start: " + self.process.stderr.read().decode(errors="replace"))
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(self.socket)
                sock.sendall(b"zPING\0")
                return sock.recv(16) == b"PONG\0"
        except OSError:
            return False
