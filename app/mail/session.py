"""The SMTP session with the relay, which owns the wire: connect, EHLO, STARTTLS and AUTH as [smtp] says, the
envelope (pipelined when offered, with SIZE), the dot-stuffed message, and the end of DATA."""
from __future__ import annotations

import contextlib
import functools
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from app.deadlines import DEADLINES
from app.mail.message import Envelope
from app.options.model import SmtpOptions
from app.turns import TURNS

IDLE_LIMIT = 30  # seconds a kept session may rest; relays close idle ones (Postfix after 300 s)
EXPECTED_REPLIES = {"MAIL": (250,), "RCPT": (250, 251), "DATA": (354,)}
DOT_AT_LINE_START = re.compile(rb"(?m)^\.")
Reply = tuple[str, int, bytes]  # the stage, the reply code and its text


class RelayRefused(Exception):
    """The relay answered `code` at `stage` (greeting, EHLO, STARTTLS or AUTH) while the session was set up."""

    def __init__(self, stage: str, code: int, text: bytes | str = b"") -> None:
        super().__init__(f"{stage}: {code}")
        self.stage, self.code = stage, code
        self.text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text


class RelayBroke(Exception):
    """The session failed at `stage` for `error`: what the socket, ssl or smtplib raised, the replies aside."""

    def __init__(self, stage: str, error: OSError) -> None:
        super().__init__(f"{stage}: {error}")
        self.stage, self.error = stage, error


class SessionBroken(Exception):
    """A kept session failed RSET: it broke while resting, before any of this message was taken."""


class OverSizeLimit(Exception):
    """The message is larger than the relay's advertised SIZE limit (RFC 1870)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"over the relay's SIZE limit of {limit} bytes")
        self.limit = limit


@contextmanager
def _stage(stage: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:  # smtplib's errors too
        raise RelayBroke(stage, exc) from None


@functools.lru_cache(maxsize=256)
def _quoted(address: str) -> str:
    # Parsed once per address: the configured mailboxes come back with every message.
    return smtplib.quoteaddr(address)


class _BoundedReplies:
    """An SMTP client whose every reply must be complete within `timeout`, and before `deadline`."""

    timeout: float
    sock: socket.socket | None
    connected = False  # a reply was awaited: the connection was made

    def __init__(self, host: str, port: int, *, deadline: float, **kwargs: Any) -> None:
        """Connect and read the greeting before `deadline`; raises RelayRefused or RelayBroke."""
        self.deadline = deadline  # the end of the current delivery
        try:
            super().__init__(host, port, **kwargs)  # type: ignore[call-arg]
        except smtplib.SMTPConnectError as exc:
            raise RelayRefused("greeting", exc.smtp_code, exc.smtp_error) from None
        except OSError as exc:  # smtplib's errors too
            raise RelayBroke("greeting" if self.connected else "connect", exc) from None

    def getreply(self) -> tuple[int, bytes]:
        """smtplib's getreply(), cut off at the reply's deadline."""
        if self.sock is None:
            raise smtplib.SMTPServerDisconnected("not connected")
        self.connected = True
        at = min(time.monotonic() + self.timeout, self.deadline)
        with DEADLINES.cut_off(self.sock, at) as watch:
            try:
                return super().getreply()  # type: ignore[misc]
            except OSError:
                if watch.expired:
                    raise TimeoutError("the relay's reply did not come in time") from None
                raise


class _BoundedSMTP(_BoundedReplies, smtplib.SMTP):
    pass


class _BoundedSMTP_SSL(_BoundedReplies, smtplib.SMTP_SSL):  # noqa: N801 - named after smtplib's class
    pass


def _tls_context(smtp: SmtpOptions) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=smtp.ca_file or None)


class RelaySession:
    """One session with the relay, greeted, secured and authenticated, for one message after another."""

    # smtplib's documented API can neither pipeline commands (RFC 2920) nor stream a message, nor read one reply or
    # the SIZE limit: `send`, `getreply` and `esmtp_features` (public names smtplib does not document) are used
    # here and nowhere else, for the speed the benchmark measured.

    def __init__(self, smtp: SmtpOptions, helo: str, deadline: float) -> None:
        """Open the session before `deadline` (a time.monotonic() value); raises RelayRefused or RelayBroke."""
        self.smtp, self.helo, self.last_used = smtp, helo, time.monotonic()
        timeout = max(min(smtp.timeout, deadline - time.monotonic()), 0.001)  # connect and greet in time
        self.client: _BoundedSMTP | _BoundedSMTP_SSL
        if smtp.security == "ssl":
            self.client = _BoundedSMTP_SSL(smtp.host, smtp.port, deadline=deadline, local_hostname=helo,
                                           timeout=timeout, context=_tls_context(smtp))
        else:
            self.client = _BoundedSMTP(smtp.host, smtp.port, deadline=deadline, local_hostname=helo, timeout=timeout)
        stage = "greeting"
        try:
            if self.client.sock is None:  # the greeting closed the connection
                raise smtplib.SMTPServerDisconnected("the relay closed the connection")
            self.client.timeout = smtp.timeout
            self.client.sock.settimeout(smtp.timeout)
            # Each command waits for its reply: send at once rather than wait to fill a segment (Nagle).
            self.client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stage = "EHLO"
            self._hello()
            if smtp.security == "starttls":
                stage = "STARTTLS"
                self.client.starttls(context=_tls_context(smtp))
                stage = "EHLO"
                self._hello()
            if smtp.username:
                stage = "AUTH"
                self.client.login(smtp.username, smtp.password)
        except smtplib.SMTPResponseException as exc:
            self.close()
            raise RelayRefused(stage, exc.smtp_code, exc.smtp_error) from None
        except OSError as exc:  # smtplib's errors too: a missing extension, a closed connection
            self.close()
            raise RelayBroke(stage, exc) from None
        except BaseException:
            self.close()
            raise

    def _hello(self) -> None:
        code, text = self.client.ehlo()
        if 500 <= code < 600:  # an old server that knows no EHLO
            code, text = self.client.helo()
        if code != 250:
            raise RelayRefused("EHLO", code, text)

    def serves(self, smtp: SmtpOptions, helo: str) -> bool:
        """Whether this session is for these settings and has not rested too long."""
        return (self.smtp, self.helo) == (smtp, helo) and time.monotonic() - self.last_used < IDLE_LIMIT

    def begin(self, deadline: float) -> None:
        """Start a message that must be done by `deadline`: every reply is cut off there."""
        self.client.deadline = deadline

    def send_envelope(self, envelope: Envelope, reset: bool) -> list[Reply]:
        """Send [RSET,] MAIL, RCPT and DATA, in one write when the relay offers PIPELINING (RFC 2920); the replies
        to MAIL, RCPT and DATA (one by one, a refusal ends them early)."""
        limit = self.client.esmtp_features.get("size", "")
        if limit.isdigit() and 0 < int(limit) < envelope.size:
            raise OverSizeLimit(int(limit))
        size = f" SIZE={envelope.size}" if self.client.has_extn("size") and envelope.size else ""
        commands = [("RSET", "RSET")] if reset else []
        commands += [("MAIL", f"MAIL FROM:{_quoted(envelope.mail_from)}{size}"),
                     ("RCPT", f"RCPT TO:{_quoted(envelope.rcpt_to)}"), ("DATA", "DATA")]
        pipelining = self.client.has_extn("pipelining")
        replies: list[Reply] = []
        try:
            if pipelining:
                with _stage(commands[0][0]):
                    self.client.send("".join(f"{command}\r\n" for _, command in commands).encode("ascii"))
            with TURNS.awaiting(self.client.sock) if pipelining else contextlib.nullcontext():
                for stage, command in commands:
                    with _stage(stage):
                        code, text = self.client.getreply() if pipelining else self.client.docmd(command)
                    if stage == "RSET":
                        if code != 250:
                            raise SessionBroken()
                        continue
                    replies.append((stage, code, text))
                    if code not in EXPECTED_REPLIES[stage] and not pipelining:
                        break
        except RelayBroke as broke:
            if broke.stage == "RSET":  # the kept session broke while it rested
                raise SessionBroken() from None
            raise
        return replies

    def send_data(self, chunks: Iterable[bytes], deadline: float) -> None:
        """Send the message dot-stuffed, then the end of DATA, cut off at `deadline` however slowly the relay
        reads; each chunk starts a line or with CRLF."""
        if self.client.sock is None:
            raise RelayBroke("DATA", smtplib.SMTPServerDisconnected("the relay closed the connection"))
        pending = b""
        with _stage("DATA"), DEADLINES.cut_off(self.client.sock, deadline):
            for chunk in chunks:
                if chunk:
                    if pending:
                        self.client.send(pending)
                    # Only a chunk that holds a dot at a line start is stuffed (base64 never does).
                    pending = DOT_AT_LINE_START.sub(b"..", chunk) if b"\n." in chunk or chunk[:1] == b"." else chunk
            # The last chunk goes out with the marker in one write, so that no small write waits on a delayed ACK.
            self.client.send(pending + (b".\r\n" if pending.endswith(b"\r\n") or not pending else b"\r\n.\r\n"))

    def read_end(self) -> tuple[int, bytes]:
        """The relay's reply to the end of DATA."""
        with _stage("END"), TURNS.awaiting(self.client.sock):  # a relay's disk may take a while over it
            return self.client.getreply()

    def quit(self) -> None:
        """End the session politely (the probes): QUIT, its reply, then close."""
        with _stage("QUIT"):
            self.client.quit()

    def close(self) -> None:
        """End the session (QUIT is not waited for: the relay drops an unfinished transaction)."""
        self.client.close()
