"""The session with the SMTP relay: connect, EHLO, STARTTLS and AUTH, and one session kept per worker thread."""
from __future__ import annotations

import math
import os
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from app.options import SmtpOptions

IDLE_LIMIT = 30  # seconds a kept session may rest; relays close idle ones (Postfix after 300 s)


class SetupRefused(Exception):
    """The relay answered `code` at `stage` (greeting, EHLO, STARTTLS or AUTH) while the session was set up."""

    def __init__(self, stage: str, code: int, text: bytes | str = b"") -> None:
        super().__init__(f"{stage}: {code}")
        self.stage, self.code = stage, code
        self.text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text


class _Watch:
    """One deadline on one socket; `expired` once the deadline cut it off."""

    __slots__ = ("at", "sock", "expired")

    def __init__(self, at: float, sock: socket.socket) -> None:
        self.at, self.sock, self.expired = at, sock, False


class Deadlines:
    """Cuts off a relay that is too slow: at a deadline the socket is shut down, which ends any read or write
    waiting on it. A socket timeout bounds each recv(); this bounds a whole reply however it trickles in.

    One thread per process looks at the watched sockets every TICK seconds: a registration costs a set insert,
    and deadlines are met to within a tick.
    """

    TICK = 0.05

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: set[_Watch] = set()
        self._pid = 0

    @contextmanager
    def cut_off(self, sock: socket.socket, at: float) -> Iterator[_Watch]:
        """Shut `sock` down if the block has not ended by `at` (a time.monotonic() value)."""
        watch = _Watch(at, sock)
        with self._lock:
            if self._pid != os.getpid():  # the first use in this process (a forked worker has no thread)
                self._pid, self._watches = os.getpid(), set()
                threading.Thread(target=self._run, name="smtp-deadlines", daemon=True).start()
            self._watches.add(watch)
        try:
            yield watch
        finally:
            with self._lock:
                self._watches.discard(watch)

    def _run(self) -> None:
        while True:
            time.sleep(self.TICK)
            now = time.monotonic()
            with self._lock:
                expired = [watch for watch in self._watches if watch.at <= now]
                for watch in expired:
                    self._watches.discard(watch)
                    watch.expired = True
            for watch in expired:
                try:
                    watch.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


DEADLINES = Deadlines()


class _BoundedReplies:
    """An SMTP client whose every reply must be complete within `timeout`, and before `deadline`."""

    timeout: float
    sock: socket.socket | None
    deadline = math.inf  # the end of the current delivery, set by the caller

    def getreply(self) -> tuple[int, bytes]:
        """smtplib's getreply(), cut off at the reply's deadline."""
        if self.sock is None:
            raise smtplib.SMTPServerDisconnected("not connected")
        at = min(time.monotonic() + self.timeout, self.deadline)
        with DEADLINES.cut_off(self.sock, at) as watch:
            try:
                return super().getreply()  # type: ignore[misc]
            except OSError:
                if watch.expired:
                    raise TimeoutError("the relay's reply did not come in time") from None
                raise


class BoundedSMTP(_BoundedReplies, smtplib.SMTP):
    """smtplib.SMTP with replies bounded as a whole."""


class BoundedSMTP_SSL(_BoundedReplies, smtplib.SMTP_SSL):  # noqa: N801 - named after smtplib's class
    """smtplib.SMTP_SSL with replies bounded as a whole."""


def _tls_context(smtp: SmtpOptions) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=smtp.ca_file or None)


def _hello(client: smtplib.SMTP) -> None:
    code, text = client.ehlo()
    if 500 <= code < 600:  # an old server that knows no EHLO
        code, text = client.helo()
    if code != 250:
        raise SetupRefused("EHLO", code, text)


def open_session(smtp: SmtpOptions, helo: str, deadline: float = math.inf) -> smtplib.SMTP:
    """A new session, greeted, secured and authenticated as [smtp] says, all before `deadline`.

    Raises SetupRefused for a refusing reply, or what smtplib, ssl and the socket raise.
    """
    timeout = max(min(smtp.timeout, deadline - time.monotonic()), 0.001)  # connect and greet within the deadline
    client: smtplib.SMTP
    try:
        if smtp.security == "ssl":
            client = BoundedSMTP_SSL(smtp.host, smtp.port, local_hostname=helo, timeout=timeout,
                                     context=_tls_context(smtp))
        else:
            client = BoundedSMTP(smtp.host, smtp.port, local_hostname=helo, timeout=timeout)
    except smtplib.SMTPConnectError as exc:
        raise SetupRefused("greeting", exc.smtp_code, exc.smtp_error) from None
    client.timeout, client.deadline = smtp.timeout, deadline
    if client.sock is None:  # the greeting closed the connection
        raise smtplib.SMTPServerDisconnected("the relay closed the connection")
    client.sock.settimeout(smtp.timeout)
    # Each command waits for its reply: send at once rather than wait to fill a segment (Nagle).
    client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stage = "EHLO"
    try:
        _hello(client)
        if smtp.security == "starttls":
            stage = "STARTTLS"
            client.starttls(context=_tls_context(smtp))
            _hello(client)
        if smtp.username:
            stage = "AUTH"
            client.login(smtp.username, smtp.password)
    except smtplib.SMTPResponseException as exc:
        client.close()
        raise SetupRefused(stage, exc.smtp_code, exc.smtp_error) from None
    except BaseException:
        client.close()
        raise
    return client


@dataclass
class _KeptSession:
    settings: tuple
    client: smtplib.SMTP
    last_used: float

    def __del__(self) -> None:
        # A thread that ends takes its kept session with it (servers that use a thread per request).
        self.client.close()


_kept = threading.local()  # one session per worker thread, reused from message to message


def kept_session(settings: tuple) -> smtplib.SMTP | None:
    """This thread's session for `settings`, unless it rested too long or the settings changed."""
    kept = getattr(_kept, "session", None)
    if kept is not None and kept.settings == settings and time.monotonic() - kept.last_used < IDLE_LIMIT:
        return kept.client
    close_kept_session()
    return None


def keep_session(settings: tuple, client: smtplib.SMTP) -> None:
    """Keep `client` as this thread's session (after a success, or to be closed on a failure)."""
    kept = getattr(_kept, "session", None)
    if kept is not None and kept.client is client:
        kept.last_used = time.monotonic()
    else:
        _kept.session = _KeptSession(settings, client, time.monotonic())


def close_kept_session() -> None:
    """Close this thread's kept session with the relay, if any."""
    kept = getattr(_kept, "session", None)
    _kept.session = None
    if kept is not None:
        kept.client.close()
