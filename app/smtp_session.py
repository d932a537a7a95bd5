"""The session with the SMTP relay: connect, EHLO, STARTTLS and AUTH, and one session kept per worker thread."""
from __future__ import annotations

import smtplib
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from app.options import SmtpOptions

IDLE_LIMIT = 30  # seconds a kept session may rest; relays close idle ones (Postfix after 300 s)


class SetupRefused(Exception):
    """The relay answered `code` at `stage` (greeting, EHLO, STARTTLS or AUTH) while the session was set up."""

    def __init__(self, stage: str, code: int) -> None:
        super().__init__(f"{stage}: {code}")
        self.stage, self.code = stage, code


def _tls_context(smtp: SmtpOptions) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=smtp.ca_file or None)


def _hello(client: smtplib.SMTP) -> None:
    code, _ = client.ehlo()
    if 500 <= code < 600:  # an old server that knows no EHLO
        code, _ = client.helo()
    if code != 250:
        raise SetupRefused("EHLO", code)


def open_session(smtp: SmtpOptions, helo: str) -> smtplib.SMTP:
    """A new session, greeted, secured and authenticated as [smtp] says.

    Raises SetupRefused for a refusing reply, or what smtplib, ssl and the socket raise.
    """
    try:
        if smtp.security == "ssl":
            client = smtplib.SMTP_SSL(smtp.host, smtp.port, local_hostname=helo, timeout=smtp.timeout,
                                      context=_tls_context(smtp))
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, local_hostname=helo, timeout=smtp.timeout)
    except smtplib.SMTPConnectError as exc:
        raise SetupRefused("greeting", exc.smtp_code) from None
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
        raise SetupRefused(stage, exc.smtp_code) from None
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
