"""The real gunicorn on a free port, stopped by PID: the one launcher of the benchmark and the end-to-end tests."""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from bench.ports import free_port

ROOT = Path(__file__).parent.parent
DEPLOY_CONFIG = ("-c", "deploy/gunicorn.conf.py")


class LineWatcher:
    """Collects a process's output lines in a thread, so that a caller can wait for a line instead of sleeping."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self.closed = threading.Event()
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()
        self.closed.set()

    def wait_for(self, *texts: str, timeout: float = 30) -> str:
        """The first line that holds every one of `texts`, once there is one."""
        def found(line: str) -> bool:
            return all(text in line for text in texts)

        with self._changed:
            if not self._changed.wait_for(lambda: any(map(found, self.lines)), timeout):
                raise AssertionError(f"no line with {texts!r} in:\n" + "".join(self.lines))
            return next(filter(found, self.lines))


class Gunicorn:
    """gunicorn serving `app` (wsgi:app, or the benchmark's references) from `root` on a free port, with the deploy
    configuration or the given arguments (such as `-w 2`, no configuration file); its state and metrics folders
    under `folder`. Its output (stdout and stderr in one stream, as journald has them) is watched line by line, or
    written to `log_file` where reading it would take CPU from what is measured."""

    def __init__(self, options: Path, folder: Path, arguments: tuple[str, ...] = DEPLOY_CONFIG,
                 environment: dict[str, str] | None = None, workers: int = 2, app: str = "wsgi:app",
                 root: Path = ROOT, log_file: Path | None = None, metrics_folder: bool = True,
                 port: int | None = None) -> None:
        self.port, self.workers_wanted, self.log_file = port or free_port(), workers, log_file
        (folder / "metrics").mkdir(parents=True, exist_ok=True)
        (folder / "state").mkdir(mode=0o700, exist_ok=True)
        environment = {**os.environ, "OPTIONS_FILE": str(options), "GUNICORN_BIND": f"127.0.0.1:{self.port}",
                       "GUNICORN_WORKERS": str(workers), "PROMETHEUS_MULTIPROC_DIR": str(folder / "metrics"),
                       "EMAIL_API_STATE_DIR": str(folder / "state"), **(environment or {})}
        if not metrics_folder:  # as `gunicorn -w 2 wsgi:app` runs without the deploy configuration
            del environment["PROMETHEUS_MULTIPROC_DIR"]
        output: Any = subprocess.PIPE if log_file is None else open(log_file, "ab")  # the child has its own copy
        try:
            self.process = subprocess.Popen(self.command(arguments, self.port, app), cwd=root, env=environment,
                                            stdout=output, stderr=subprocess.STDOUT, text=log_file is None)
        finally:
            if log_file is not None:
                output.close()
        self.log = LineWatcher(self.process.stdout) if self.process.stdout else None
        self.wait_for_workers()

    @staticmethod
    def command(arguments: tuple[str, ...], port: int, app: str = "wsgi:app") -> list[str]:
        """The command line that starts gunicorn with `arguments` on `port`."""
        return [sys.executable, "-m", "gunicorn", *arguments, "-b", f"127.0.0.1:{port}", app]

    def lines(self) -> list[str]:
        """What the master and its workers logged so far."""
        if self.log is not None:
            return list(self.log.lines)
        assert self.log_file is not None
        return self.log_file.read_text(errors="replace").splitlines(keepends=True)

    def workers(self) -> set[int]:
        """The pids of the master's live workers."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return {int(pid) for pid in children}

    def wait_for_workers(self, replacing: set[int] = frozenset()) -> set[int]:
        """Wait until the master has its workers, none of `replacing`, each booted; their pids."""
        deadline = time.monotonic() + 60
        while True:
            workers, lines = self.workers(), self.lines()
            if len(workers) == self.workers_wanted and not workers & replacing and all(
                    any(f"Booting worker with pid: {pid}" in line for line in lines) for pid in workers):
                return workers
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError("gunicorn's workers did not start:\n" + "".join(lines))
            time.sleep(0.05)

    def post(self, body: bytes, headers: dict[str, str], path: str = "/genesys/2/email/support",
             timeout: float = 60) -> tuple[int, dict[str, Any]]:
        """POST and return the HTTP status and the JSON answer; a client timeout raises TimeoutError."""
        status, _, answer = self.request("POST", path, body, headers, timeout)
        return status, json.loads(answer)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: float = 60) -> tuple[int, http.client.HTTPMessage, bytes]:
        """Any request: the HTTP status, headers and body of the answer."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body, headers or {})
            response = connection.getresponse()
            return response.status, response.headers, response.read()
        finally:
            connection.close()

    def stop(self) -> str:
        """Stop the master and its workers; everything they logged."""
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.log is not None:
            self.log.closed.wait(timeout=10)
        return "".join(self.lines())
