"""Test data and small encoders shared by the tests."""
from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from app.form import read_form
from app.message import OutgoingEmail, compose, new_interaction_id
from app.options import SmtpOptions, load_options
from app.submission import validate_submission
from bench.forms import GOOD_FORM, multipart  # noqa: F401 - shared with the benchmark
from bench.ports import free_port, system_program, wait_for_port  # noqa: F401 - shared with the tests

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data"
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9ccd\xf8\x0f\x04\x00\t\xfb\x03\xfd\xe3U\xf2\x9c\x00\x00\x00\x00IEND\xaeB`\x82"
)
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
DEPLOY_CONFIG = ("-c", "deploy/gunicorn.conf.py")


def zipped(*entries: tuple[str, bytes | str]) -> bytes:
    """A zip archive of these (name, content) entries, the same bytes on every run (a fixed timestamp)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in entries:
            archive.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), content)
    return buffer.getvalue()


def composed(options: Path, service_name: str = "support", **changes: str) -> tuple[OutgoingEmail, SmtpOptions]:
    """The known-good form (changed by keyword) read, validated and composed as the view does, without Flask: the
    email deliver() is given, and the [smtp] options to give it with."""
    loaded = load_options(options)
    service = loaded.service(service_name)
    body, content_type = multipart(list({**GOOD_FORM, **changes}.items()))
    with read_form(io.BytesIO(body), content_type, len(body), service) as form:
        submission = validate_submission(form, service_name, service, loaded)
        return compose(submission, new_interaction_id(), service, loaded.smtp), loaded.smtp


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    mail_options: dict[str, str] = field(default_factory=dict)

    @property
    def email(self) -> EmailMessage:
        return message_from_bytes(self.raw, policy=policy.default)


def hostile_corpus() -> list[dict[str, Any]]:
    """The attacks of tests/data/hostile-corpus.jsonl, one a line, each as a request and the answer it must get:
    path, body, headers (Content-Type included), HTTP status and error codes."""
    attacks = []
    for line in (DATA / "hostile-corpus.jsonl").read_text(encoding="utf-8").splitlines():
        attack = json.loads(line)
        if "body" in attack:
            body, content_type = attack["body"].encode("latin-1"), attack["content_type"]
        else:
            files = [("files", (name, base64.b64decode(content))) for name, content in attack.get("files", [])]
            fields = {**GOOD_FORM, **attack.get("fields", {})}
            body, content_type = multipart([*fields.items(), *map(tuple, attack.get("extra", [])), *files])
        attacks.append({"attack": attack["attack"], "path": attack.get("path", "/genesys/2/email/support"),
                        "body": body, "headers": {"Content-Type": content_type, **attack.get("headers", {})},
                        "http": attack.get("http", 400), "codes": attack["code"]})
    return attacks


def raw_header(raw: bytes, name: str) -> str:
    """A header's value as sent, unfolded: what an RFC 2047 decoder starts from."""
    header_block = raw.split(b"\r\n\r\n")[0].decode("ascii")
    value = re.search(rf"^{name}: (.*?)\r\n(?! )", header_block, re.M | re.S)[1]
    return value.replace("\r\n ", " ")


def codes(response) -> list[int]:
    return [error["code"] for error in response.get_json()["errors"]]


def metric(page: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples on a Prometheus page whose labels include `labels`."""
    total = 0.0
    for line in page.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if match and match[1] == name and set(labels.items()) <= set(re.findall(r'(\w+)="([^"]*)"', match[2] or "")):
            total += float(match[3])
    return total


class LineWatcher:
    """Collects a process's output lines in a thread, so a test can wait for a line instead of sleeping."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self.closed = threading.Event()
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
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


class TrickleHandler:
    """A relay that answers MAIL (or the end of DATA) one byte at a time, a long multi-line reply."""

    def __init__(self, stage: str, every: float) -> None:
        self.stage, self.every, self.messages = stage, every, []
        self.cut_off = threading.Event()  # set once the client gave up while the reply was still trickling

    async def _trickle(self, server) -> None:
        try:
            for byte in b"250-" + b"x" * 60 + b"\r\n":
                server.transport.write(bytes([byte]))
                await asyncio.sleep(self.every)
        except asyncio.CancelledError:  # aiosmtpd ends the session's handler when the connection is lost
            self.cut_off.set()
            raise

    async def handle_MAIL(self, server, session, envelope, address, options):
        envelope.mail_from = address
        if self.stage == "MAIL":
            await self._trickle(server)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope.content)
        if self.stage == "END":
            await self._trickle(server)
        return "250 OK"


class Gunicorn:
    """The real gunicorn serving wsgi:app on a free port, with the deploy configuration or the given arguments
    (such as `-w 2`, no configuration file); its state and metrics folders under `folder`."""

    def __init__(self, options: Path, folder: Path, arguments: tuple[str, ...] = DEPLOY_CONFIG,
                 environment: dict[str, str] | None = None, workers: int = 2) -> None:
        self.port, self.workers_wanted = free_port(), workers
        (folder / "metrics").mkdir(exist_ok=True)
        (folder / "state").mkdir(mode=0o700, exist_ok=True)
        environment = {**os.environ, "OPTIONS_FILE": str(options), "GUNICORN_BIND": f"127.0.0.1:{self.port}",
                       "GUNICORN_WORKERS": str(workers), "PROMETHEUS_MULTIPROC_DIR": str(folder / "metrics"),
                       "EMAIL_API_STATE_DIR": str(folder / "state"), **(environment or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", *arguments, "-b", f"127.0.0.1:{self.port}", "wsgi:app"], cwd=ROOT,
            env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # one stream, as journald
        self.log = LineWatcher(self.process.stdout)
        self.wait_for_workers()

    def workers(self) -> set[int]:
        """The pids of the master's live workers."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return {int(pid) for pid in children}

    def wait_for_workers(self, replacing: set[int] = frozenset()) -> set[int]:
        """Wait until the master has its workers, none of `replacing`, each booted; their pids."""
        deadline = time.monotonic() + 60
        while True:
            workers = self.workers()
            if len(workers) == self.workers_wanted and not workers & replacing and all(
                    any(f"Booting worker with pid: {pid}" in line for line in self.log.lines) for pid in workers):
                return workers
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError("gunicorn's workers did not start:\n" + "".join(self.log.lines))
            time.sleep(0.05)

    def post(self, body: bytes, headers: dict[str, str], path: str = "/genesys/2/email/support",
             timeout: float = 60) -> tuple[int, dict[str, Any]]:
        """POST and return the HTTP status and the JSON answer; a client timeout raises TimeoutError."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("POST", path, body, headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
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
        self.log.closed.wait(timeout=10)
        return "".join(self.log.lines)
