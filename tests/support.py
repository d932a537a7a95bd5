"""Test data and small encoders shared by the tests."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from app.duplicates import new_interaction_id
from app.form import read_form
from app.logs import JsonFormatter
from app.mail.message import OutgoingEmail, compose
from app.options.load import load_options
from app.options.model import SmtpOptions
from app.submission import validate_submission
from bench.forms import GOOD_FORM, multipart  # noqa: F401 - shared with the benchmark
from bench.gunicorn import DEPLOY_CONFIG, ROOT, Gunicorn, LineWatcher  # noqa: F401 - shared with the benchmark
from bench.ports import free_port, system_program, wait_for_port  # noqa: F401 - shared with the tests

DATA = Path(__file__).parent / "data"
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9ccd\xf8\x0f\x04\x00\t\xfb\x03\xfd\xe3U\xf2\x9c\x00\x00\x00\x00IEND\xaeB`\x82"
)
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


# The property tests draw all their examples in the whole suite (as CI runs it) and a quarter of them in the quick
# loop, `pytest -m "not e2e"`, so that it stays under a minute; conftest.py sets which.
QUICK_LOOP = False


def examples(whole_suite: int) -> int:
    """How many examples a property test draws in this run."""
    return max(whole_suite // 4, 10) if QUICK_LOOP else whole_suite


def zipped(*entries: tuple[str, bytes | str]) -> bytes:
    """A zip archive of these (name, content) entries, the same bytes on every run (a fixed timestamp)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in entries:
            archive.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), content)
    return buffer.getvalue()


def post_form(client: Any, service: str = "support", extra: Sequence[tuple[str, Any]] = (),
              files: Sequence[tuple[str, bytes]] = (), headers: dict[str, str] | None = None,
              **changes: str | None) -> Any:
    """Post the known-good form through a Flask test client, changed by keyword (None drops a field), with `extra`
    parts and `files` appended; the response."""
    parts = [(k, v) for k, v in {**GOOD_FORM, **changes}.items() if v is not None] + list(extra)
    body, content_type = multipart(parts + [("files", file) for file in files])
    path = "/genesys/2/email" + (f"/{service}" if service else "")
    return client.post(path, data=body, content_type=content_type, headers=headers or {})


def encoded_form(**changes: str) -> tuple[bytes, dict[str, str]]:
    """The known-good form changed by keyword, encoded for a real HTTP client: its body and headers."""
    body, content_type = multipart(list({**GOOD_FORM, **changes}.items()))
    return body, {"Content-Type": content_type}


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


def log_lines(caplog, event: str | None = None) -> list[dict[str, Any]]:
    """The service's log records as its JSON log writes them; only those of `event`, if given."""
    return [json.loads(JsonFormatter().format(record)) for record in caplog.records
            if record.name.startswith("app") and (event is None or getattr(record, "fields", {}).get("event") == event)]


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


REDIS_PASSWORD = "s3cret-r3dis-pass"


class RedisServer:
    """Debian's redis-server with no persistence and a password, on a free port; stopped by PID."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--requirepass", REDIS_PASSWORD, "--dir", str(folder),
             "--enable-debug-command", "local"],
            stdout=subprocess.DEVNULL)
        wait_for_port(self.port, self.process)

    @contextlib.contextmanager
    def asleep(self, seconds: float) -> Iterator[None]:
        """Redis blocked for `seconds` (DEBUG SLEEP) while the block runs: every command waits, then runs late.
        Leaving the block waits until Redis answers again."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(f"AUTH {REDIS_PASSWORD}\r\n".encode())
            assert sock.recv(64) == b"+OK\r\n"
            sock.sendall(f"DEBUG SLEEP {seconds}\r\n".encode())
            yield
            assert sock.recv(64) == b"+OK\r\n"

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
