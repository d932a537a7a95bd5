from __future__ import annotations

import asyncio
import functools
import os
import shutil
import ssl
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import support
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult
from support import Received, RedisServer, free_port, post_form

from app import create_app
from app.mail.delivery import close_kept_session


def pytest_configure(config: pytest.Config) -> None:
    """The quick loop (README) draws fewer property-test examples than the whole suite."""
    support.QUICK_LOOP = config.getoption("markexpr") == "not e2e"


@dataclass
class FaultyHandler:
    """Records every message it accepts; `faults[stage]` makes it reply, stall or drop at MAIL, RCPT or END,
    `delays[stage]` makes it answer that many seconds late; `reached[stage]` is set once a client got there."""

    messages: list[Received] = field(default_factory=list)
    faults: dict[str, str] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)
    reached: defaultdict[str, threading.Event] = field(default_factory=lambda: defaultdict(threading.Event))
    on_message: Callable[[], None] | None = None  # called once a message is recorded, before the 250 goes out
    sessions: int = 0
    pipelining: bool = True  # offer RFC 2920 PIPELINING, as Postfix does (aiosmtpd reads pipelined commands)
    size_limit: int | None = None  # offer RFC 1870 SIZE with this limit
    mail_commands: int = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses) -> list[str]:
        session.host_name = hostname
        extensions = ["250-PIPELINING"] if self.pipelining else []
        if self.size_limit is not None:
            extensions.append(f"250-SIZE {self.size_limit}")
        return responses[:-1] + extensions + [responses[-1]]

    async def inject_fault(self, server: Any, stage: str) -> str | None:
        self.reached[stage].set()
        if stage in self.delays:
            await asyncio.sleep(self.delays[stage])
        fault = self.faults.get(stage)
        if fault == "stall":  # until the client gives up
            await server.lost.wait()
        if fault == "drop":
            server.transport.abort()
            return "421 dropped"
        return fault

    async def handle_MAIL(self, server, session, envelope, address, options) -> str:
        self.mail_commands += 1
        if reply := await self.inject_fault(server, "MAIL"):
            return reply
        envelope.mail_from = address
        envelope.mail_options = options
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, options) -> str:
        if reply := await self.inject_fault(server, "RCPT"):
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        if reply := await self.inject_fault(server, "END"):
            return reply
        options = dict(option.partition("=")[::2] for option in envelope.mail_options)
        self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content, options))
        if self.on_message is not None:
            self.on_message()
        return "250 Message accepted"


class FaultySMTP(SMTP):
    """aiosmtpd's SMTP session, faulted on demand at the greeting, EHLO, STARTTLS, AUTH or DATA command."""

    def connection_made(self, transport) -> None:
        self.lost = asyncio.Event()
        self.greeted = False
        fault = self.event_handler.faults.get("greeting")
        if fault == "drop":
            transport.abort()
        elif fault and fault != "stall":  # a refusing greeting; "stall" never greets, until the client gives up
            transport.write(f"{fault}\r\n".encode())
            transport.close()
        if fault:
            return
        self.greeted = True
        super().connection_made(transport)

    def connection_lost(self, error) -> None:
        self.lost.set()
        if self.greeted:  # a session that never started has nothing of aiosmtpd's to end
            super().connection_lost(error)

    async def inject_fault(self, stage: str) -> bool:
        fault = self.event_handler.faults.get(stage)
        if not fault:
            return False
        if fault == "stall":  # until the client gives up
            await self.lost.wait()
        elif fault == "drop":
            self.transport.abort()
        else:
            await self.push(fault)
        return True

    async def smtp_EHLO(self, arg: str) -> None:
        self.event_handler.sessions += 1  # a client's session; the controller's own start-up probe says no EHLO
        if not await self.inject_fault("EHLO"):
            await super().smtp_EHLO(arg)

    async def smtp_STARTTLS(self, arg: str) -> None:
        if not await self.inject_fault("STARTTLS"):
            await super().smtp_STARTTLS(arg)

    async def smtp_AUTH(self, arg: str) -> None:
        if not await self.inject_fault("AUTH"):
            await super().smtp_AUTH(arg)

    async def smtp_RSET(self, arg: str) -> None:
        if not await self.inject_fault("RSET"):
            await super().smtp_RSET(arg)

    async def smtp_DATA(self, arg: str) -> None:
        if not await self.inject_fault("DATA"):
            await super().smtp_DATA(arg)


class FaultyController(Controller):
    def factory(self) -> SMTP:
        return FaultySMTP(self.handler, **self.SMTP_kwargs)


@pytest.fixture(autouse=True, scope="session")
def state_folder(tmp_path_factory):
    """The node snapshots of the apps the tests build, kept with the tests' other temporary files."""
    folder = tmp_path_factory.mktemp("state")
    folder.chmod(0o700)
    os.environ["EMAIL_API_STATE_DIR"] = str(folder)
    return folder


@pytest.fixture
def own_state_folder(tmp_path, monkeypatch):
    """A state folder of this test's own: its claims and snapshots seen by no other test."""
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("EMAIL_API_STATE_DIR", str(folder))
    return folder


@pytest.fixture
def redis_server(tmp_path):
    """A real Redis server (Debian's redis-server) on a free port, for the store several nodes share."""
    if shutil.which("redis-server") is None:
        pytest.skip("Debian's redis-server is not installed (.ci/run installs it)")
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def smtp_server():
    """A real SMTP server (aiosmtpd) on a free port whose handler records messages and can be told to fail."""
    handler = FaultyHandler()
    controller = FaultyController(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    handler.port = controller.port
    yield handler
    close_kept_session()  # the app keeps its session per thread; this thread's ends with the test
    controller.stop()


@pytest.fixture(scope="session")
def relay_tls(tmp_path_factory) -> tuple[ssl.SSLContext, Path]:
    """The test relays' TLS: a server context holding a certificate for 127.0.0.1 from a throw-away CA, and the
    CA file that trusts it (issued once: a key takes a while to make)."""
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path_factory.mktemp("tls") / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    return context, ca_file


@pytest.fixture
def secure_relay(options_file, relay_tls, smtp_server):
    """Start a second server with STARTTLS or implicit TLS and AUTH (user gms), recording into `smtp_server`."""
    controllers = []
    context, ca_file = relay_tls

    def start(security: str) -> None:
        def authenticate(server, session, envelope, mechanism, auth_data):
            valid = (auth_data.login, auth_data.password) == (b"gms", b"p%$w,d")
            return AuthResult(success=valid, handled=False)

        port = free_port()
        tls = {"ssl_context": context} if security == "ssl" else {"tls_context": context, "require_starttls": True}
        controller = FaultyController(smtp_server, hostname="127.0.0.1", port=port, authenticator=authenticate,
                                      auth_require_tls=security == "starttls", **tls)
        controller.start()
        controllers.append(controller)
        options_file.write(smtp={"port": str(port), "security": security, "ca_file": str(ca_file),
                                 "username": "gms", "password": '"p%$w,d"'})

    yield start
    close_kept_session()
    for controller in controllers:
        controller.stop()


class OptionsFile:
    """An options.ini in a temporary folder, rewritten whole (a new inode, as editors save) by `write`."""

    def __init__(self, path: Path, smtp_port: int) -> None:
        self.path = path
        self.sections: dict[str, dict[str, str]] = {
            "email": {"mailbox": "support@example.com", "tenant": "Environment"},
            "email.sales": {"mailbox": "sales@example.com", "max_files": "3"},
            "smtp": {"host": "127.0.0.1", "port": str(smtp_port), "timeout": "10", "helo_name": "gms.test"},
            # No probes unless a test turns them on: they would open sessions with the test relay.
            "server": {"reload_interval": "0", "status_file": str(path.with_name("node.status")),
                       "probe_interval": "0"},
        }
        self.write()

    def write(self, text: str | None = None, **changes: dict[str, str | None]) -> None:
        for section, values in changes.items():
            section_values = self.sections.setdefault(section.replace("__", "."), {})
            for key, value in values.items():
                if value is None:
                    section_values.pop(key, None)
                else:
                    section_values[key] = value
        if text is None:
            text = "".join(
                f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
                for name, values in self.sections.items()
            )
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, self.path)


@pytest.fixture
def options_file(tmp_path, smtp_server) -> OptionsFile:
    """An options file in tmp_path pointing at the test SMTP server, re-read on every request."""
    return OptionsFile(tmp_path / "options.ini", smtp_server.port)


@pytest.fixture
def app(options_file):
    """The app built from the test options file."""
    return create_app(options_file.path)


@pytest.fixture
def client(app):
    """A Flask test client of the app."""
    return app.test_client()


@pytest.fixture
def submit(client) -> Callable[..., Any]:
    """Post the known-good form, changed by keyword (None drops a field); `extra` parts and `files` are appended."""
    return functools.partial(post_form, client)
