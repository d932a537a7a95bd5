"""Loopback ports, and where the system's programs are, for the servers that the benchmark and the tests start."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

_ports_given: set[int] = set()


def free_port() -> int:
    """A loopback port free now, never one this process handed out before (the kernel may repeat itself)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def system_program(name: str) -> str | None:
    """Where a program from Debian's packages is, also in /usr/sbin and /sbin (not on every user's PATH)."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


class ForegroundServer:
    """A daemon of Debian's run in the foreground with a folder of its own (clamd, rspamd); stopped by PID."""

    process: subprocess.Popen
    folder: Path

    def stop(self) -> None:
        """Stop the daemon by its PID and remove its folder."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        if self.process.stderr is not None:
            self.process.stderr.close()
        shutil.rmtree(self.folder, ignore_errors=True)
