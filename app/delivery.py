"""Hand a composed email to the SMTP relay, and say what each way of failing means for the client."""
from __future__ import annotations

import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from app.errors import (
    ATTACHMENTS_TOO_LARGE,
    DELIVERY_REFUSED,
    INVALID_FROM_ADDRESS,
    INVALID_MAILBOX,
    PermanentDeliveryError,
    Problem,
    TransientDeliveryError,
)
from app.options import SmtpOptions

RETRY_LATER = "The message could not be delivered now; please try again later."
EXPECTED = {"MAIL": (250,), "RCPT": (250, 251), "DATA": (354,)}
IDLE_LIMIT = 30  # seconds a kept session may rest; relays close idle ones (Postfix after 300 s)


@dataclass(frozen=True)
class Envelope:
    """The SMTP envelope; `customer_sender` when MAIL FROM is the customer's own address."""

    mail_from: str
    rcpt_to: str
    customer_sender: bool
    max_size: int  # the service's limit, the advice given when the relay answers 552


def _refusal(stage: str, code: int, envelope: Envelope) -> Exception:
    """The error for a reply `code` other than the expected one at `stage`."""
    if 400 <= code < 500:
        return TransientDeliveryError(RETRY_LATER, code)
    if code == 552:
        problem = Problem(ATTACHMENTS_TOO_LARGE, "The message is larger than the mail server accepts.",
                          advice=envelope.max_size)
        return PermanentDeliveryError(problem, code, 400)
    if 500 <= code < 600 and stage == "RCPT":
        problem = Problem(INVALID_MAILBOX, "The mail server refused the mailbox.", field="mailbox")
        return PermanentDeliveryError(problem, code, 400)
    if 500 <= code < 600 and stage == "MAIL" and envelope.customer_sender:
        problem = Problem(INVALID_FROM_ADDRESS, "The mail server refused the sender address.", field="fromAddress")
        return PermanentDeliveryError(problem, code, 400)
    if stage == "END" and not 500 <= code < 600:
        return TransientDeliveryError(RETRY_LATER, code, ambiguous=True)
    problem = Problem(DELIVERY_REFUSED, f"The mail server refused the message at {stage} ({code}).")
    return PermanentDeliveryError(problem, code, 200)


def _tls_context(smtp: SmtpOptions) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=smtp.ca_file or None)


def _connect(smtp: SmtpOptions, helo: str) -> smtplib.SMTP:
    if smtp.security == "ssl":
        return smtplib.SMTP_SSL(smtp.host, smtp.port, local_hostname=helo, timeout=smtp.timeout,
                                context=_tls_context(smtp))
    return smtplib.SMTP(smtp.host, smtp.port, local_hostname=helo, timeout=smtp.timeout)


def _hello(client: smtplib.SMTP, envelope: Envelope) -> None:
    code, _ = client.ehlo()
    if 500 <= code < 600:  # an old server that knows no EHLO
        code, _ = client.helo()
    if code != 250:
        raise _refusal("EHLO", code, envelope)


def _open_session(smtp: SmtpOptions, helo: str, envelope: Envelope) -> smtplib.SMTP:
    try:
        client = _connect(smtp, helo)
    except smtplib.SMTPConnectError as exc:
        raise _refusal("greeting", exc.smtp_code, envelope) from None
    # Each command waits for its reply: send at once rather than wait to fill a segment (Nagle).
    client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stage = "EHLO"
    try:
        _hello(client, envelope)
        if smtp.security == "starttls":
            stage = "STARTTLS"
            client.starttls(context=_tls_context(smtp))
            _hello(client, envelope)
        if smtp.username:
            stage = "AUTH"
            client.login(smtp.username, smtp.password)
    except smtplib.SMTPResponseException as exc:
        client.close()
        raise _refusal(stage, exc.smtp_code, envelope) from None
    except BaseException:
        client.close()
        raise
    return client


@dataclass
class _KeptSession:
    settings: tuple
    client: smtplib.SMTP
    last_used: float


_kept = threading.local()  # one session per worker thread, reused from message to message


def close_kept_session() -> None:
    """Close this thread's kept session with the relay, if any."""
    kept = getattr(_kept, "session", None)
    _kept.session = None
    if kept is not None:
        kept.client.close()


def _session(smtp: SmtpOptions, helo: str, envelope: Envelope) -> smtplib.SMTP:
    """This thread's session with the relay: the kept one if it answers RSET, else a new one.

    A kept session that broke is replaced before MAIL, when nothing of this message was sent.
    """
    settings = (smtp, helo)
    kept = getattr(_kept, "session", None)
    if kept is not None and kept.settings == settings and time.monotonic() - kept.last_used < IDLE_LIMIT:
        try:
            if kept.client.rset()[0] == 250:
                return kept.client
        except (OSError, smtplib.SMTPException):
            pass
    close_kept_session()
    client = _open_session(smtp, helo, envelope)
    _kept.session = _KeptSession(settings, client, time.monotonic())
    return client


DOT_AT_LINE_START = re.compile(rb"(?m)^\.")


def _send_data(client: smtplib.SMTP, chunks: Iterable[bytes]) -> None:
    """Send the message dot-stuffed, then the end-of-data marker; each chunk starts a line or with CRLF.

    The last chunk goes out with the marker in one write, so that no small write waits on a delayed ACK.
    """
    pending = b""
    for chunk in chunks:
        if chunk:
            if pending:
                client.send(pending)
            pending = DOT_AT_LINE_START.sub(b"..", chunk)
    client.send(pending + (b".\r\n" if pending.endswith(b"\r\n") or not pending else b"\r\n.\r\n"))


def _envelope_replies(client: smtplib.SMTP, envelope: Envelope) -> list[tuple[str, int]]:
    """Send MAIL, RCPT and DATA, in one write when the relay offers PIPELINING (RFC 2920); their reply codes.

    Without PIPELINING, a refusal ends the list early.
    """
    commands = [("MAIL", f"MAIL FROM:{smtplib.quoteaddr(envelope.mail_from)}"),
                ("RCPT", f"RCPT TO:{smtplib.quoteaddr(envelope.rcpt_to)}"), ("DATA", "DATA")]
    if client.has_extn("pipelining"):
        client.send("".join(f"{command}\r\n" for _, command in commands).encode("ascii"))
        return [(stage, client.getreply()[0]) for stage, _ in commands]
    replies = []
    for stage, command in commands:
        replies.append((stage, client.docmd(command)[0]))
        if replies[-1][1] not in EXPECTED[stage]:
            break
    return replies


def _transaction(client: smtplib.SMTP, chunks: Iterable[bytes], envelope: Envelope) -> None:
    replies = _envelope_replies(client, envelope)
    refused = [(stage, code) for stage, code in replies if code not in EXPECTED[stage]]
    if refused:
        # A pipelined DATA may have been accepted although MAIL or RCPT was not: the session that waits
        # for content is closed by the caller, so that the relay drops the empty transaction.
        raise _refusal(*refused[0], envelope)
    _send_data(client, chunks)
    # The end of DATA is sent: from here on the relay may hold the message, so nothing is resent.
    try:
        code, _ = client.getreply()
    except (OSError, smtplib.SMTPException):
        raise TransientDeliveryError(RETRY_LATER, ambiguous=True) from None
    if code != 250:
        raise _refusal("END", code, envelope)


def deliver(chunks: Iterable[bytes], envelope: Envelope, smtp: SmtpOptions, helo: str) -> None:
    """Send one message; return only once the relay answered 250 to the end of DATA.

    Raises TransientDeliveryError when trying again may help, PermanentDeliveryError when not.
    The session is kept for the thread's next message only after a success.
    """
    try:
        client = _session(smtp, helo, envelope)
    except ssl.SSLCertVerificationError as exc:
        problem = Problem(DELIVERY_REFUSED, f"The mail server's certificate is not trusted: {exc.verify_message}.")
        raise PermanentDeliveryError(problem, None, 200) from None
    except smtplib.SMTPServerDisconnected:
        raise TransientDeliveryError(RETRY_LATER) from None
    except smtplib.SMTPException as exc:  # the relay lacks STARTTLS or a usable AUTH method
        problem = Problem(DELIVERY_REFUSED, f"The mail server session could not be set up: {exc}.")
        raise PermanentDeliveryError(problem, None, 200) from None
    except OSError:
        raise TransientDeliveryError(RETRY_LATER) from None
    try:
        _transaction(client, chunks, envelope)
    except OSError:  # smtplib's errors too: the connection broke before the end of DATA was sent
        close_kept_session()
        raise TransientDeliveryError(RETRY_LATER) from None
    except BaseException:
        close_kept_session()
        raise
    _kept.session.last_used = time.monotonic()
