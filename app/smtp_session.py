"""The session with the SMTP relay, as one small class: connect, EHLO, STARTTLS and AUTH as [smtp] says, RSET
between messages, close; and the one session each worker thread keeps from message to message."""
from __future__ import annotations

import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from app.deadlines import DEADLINES
from app.options import SmtpOptions

IDLE_LIMIT = 30  # seconds a kept session may rest; relays close idle ones (Postfix after 300 s)


class SetupRefused(Exception):
    """The relay answered `code` at `stage` (greeting, EHLO, STARTTLS or AUTH) while the session was set up."""

    def __init__(self, stage: str, code: int, text: bytes | str = b"") -> None:
        super().__init__(f"{stage}: {code}")
        self.stage, self.code = stage, code
        self.text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text


class SetupFailed(Exception):
    """The session could not be set up, at `stage` (connect, greeting, EHLO, STARTTLS or AUTH), for `error`: what
    the socket, ssl or smtplib raised (a timeout, a closed connection, an untrusted certificate, a missing
    extension), the relay's replies aside."""

    def __init__(self, stage: str, error: OSError) -> None:
        super().__init__(f"{stage}: {error}")
        self.stage, self.error = stage, error


class _BoundedReplies:
    """An SMTP client whose every reply must be complete within `timeout`, and before `deadline`."""

    timeout: float
    sock: socket.socket | None
    connected = False  # a reply was awaited: the connection was made

    def __init__(self, host: str, port: int, *, deadline: float, **kwargs: Any) -> None:
        """Connect and read the greeting before `deadline`; raises SetupRefused or SetupFailed."""
        self.deadline = deadline  # the end of the current delivery
        try:
            super().__init__(host, port, **kwargs)  # type: ignore[call-arg]
        except smtplib.SMTPConnectError as exc:
            raise SetupRefused("greeting", exc.smtp_code, exc.smtp_error) from None
        except OSError as exc:  # smtplib's errors too
            raise SetupFailed("greeting" if self.connected else "connect", exc) from None

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
    """One session with the relay, greeted, secured and authenticated, for one message after another.

    smtplib's documented API can neither pipeline commands (RFC 2920) nor stream a message, nor read one reply or
    the SIZE limit: `send`, `getreply` and `esmtp_features` (public names smtplib does not document) are used here
    and nowhere else, for the speed the benchmark measured.
    """

    def __init__(self, smtp: SmtpOptions, helo: str, deadline: float) -> None:
        """Open the session before `deadline` (a time.monotonic() value). Raises SetupRefused for a refusing reply,
        SetupFailed for anything else that stops it, each with the stage it happened at."""
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
            raise SetupRefused(stage, exc.smtp_code, exc.smtp_error) from None
        except OSError as exc:  # smtplib's errors too: a missing extension, a closed connection
            self.close()
            raise SetupFailed(stage, exc) from None
        except BaseException:
            self.close()
            raise

    def _hello(self) -> None:
        code, text = self.client.ehlo()
        if 500 <= code < 600:  # an old server that knows no EHLO
            code, text = self.client.helo()
        if code != 250:
            raise SetupRefused("EHLO", code, text)

    def serves(self, smtp: SmtpOptions, helo: str) -> bool:
        """Whether this session is for these settings and has not rested too long."""
        return (self.smtp, self.helo) == (smtp, helo) and time.monotonic() - self.last_used < IDLE_LIMIT

    def begin(self, deadline: float) -> None:
        """Start a message that must be done by `deadline`: every reply is cut off there."""
        self.client.deadline = deadline

    def offers(self, extension: str) -> bool:
        """Whether the relay's EHLO offered `extension` (PIPELINING, SIZE)."""
        return self.client.has_extn(extension)

    def size_limit(self) -> int:
        """The relay's SIZE limit (RFC 1870), 0 when it names none."""
        limit = self.client.esmtp_features.get("size", "")
        return int(limit) if limit.isdigit() else 0

    def command(self, line: str) -> tuple[int, bytes]:
        """Send one command and read its reply."""
        return self.client.docmd(line)

    def send(self, data: bytes) -> None:
        """Send bytes as they are (pipelined commands, message data)."""
        self.client.send(data)

    def reply(self) -> tuple[int, bytes]:
        """Read one reply, within the message's deadline."""
        return self.client.getreply()

    @contextmanager
    def writes_until(self, deadline: float) -> Iterator[None]:
        """Cut the connection at `deadline` while the block writes, however slowly the relay reads."""
        if self.client.sock is None:
            raise smtplib.SMTPServerDisconnected("the relay closed the connection")
        with DEADLINES.cut_off(self.client.sock, deadline):
            yield

    def close(self) -> None:
        """End the session (QUIT is not waited for: the relay drops an unfinished transaction)."""
        self.client.close()


class _KeptSessions:
    """The session each worker thread keeps for its next message; those of ended threads are closed as found."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_thread: dict[threading.Thread, RelaySession] = {}

    def take(self, smtp: SmtpOptions, helo: str) -> RelaySession | None:
        """This thread's session for these settings, if it has one that may serve; any other is closed."""
        with self._lock:
            ended = [thread for thread in self._by_thread if not thread.is_alive()]
            stale = [self._by_thread.pop(thread) for thread in ended]
            session = self._by_thread.pop(threading.current_thread(), None)
        for old in stale:
            old.close()
        if session is not None and not session.serves(smtp, helo):
            session.close()
            session = None
        return session

    def keep(self, session: RelaySession) -> None:
        """Keep `session` as this thread's, for its next message."""
        session.last_used = time.monotonic()
        with self._lock:
            self._by_thread[threading.current_thread()] = session

    def close_this_threads(self) -> None:
        """Close this thread's kept session, if any."""
        with self._lock:
            session = self._by_thread.pop(threading.current_thread(), None)
        if session is not None:
            session.close()


KEPT = _KeptSessions()


def close_kept_session() -> None:
    """Close this thread's kept session with the relay, if any."""
    KEPT.close_this_threads()
