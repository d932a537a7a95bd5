"""Hand a composed email to the SMTP relay, and say what each way of failing means for the client."""
from __future__ import annotations

import logging
import re
import smtplib
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app import metrics
from app.errors import (
    ATTACHMENTS_TOO_LARGE,
    DELIVERY_REFUSED,
    INVALID_MAILBOX,
    ApiError,
    PermanentDeliveryError,
    Problem,
    TransientDeliveryError,
)
from app.message import Envelope, OutgoingEmail
from app.options import SmtpOptions
from app.smtp_session import (
    DEADLINES,
    SetupRefused,
    close_kept_session,
    keep_session,
    kept_session,
    open_session,
)

log = logging.getLogger(__name__)
EXPECTED = {"MAIL": (250,), "RCPT": (250, 251), "DATA": (354,)}
DELIVERY_TIMEOUTS = 3  # one delivery takes at most this many times [smtp] timeout


def _too_large(envelope: Envelope, **where: Any) -> PermanentDeliveryError:
    problem = Problem(ATTACHMENTS_TOO_LARGE, "The message is larger than the mail server accepts.",
                      advice=envelope.max_size)
    return PermanentDeliveryError([problem], **where)


def _refusal(stage: str, code: int, envelope: Envelope, text: bytes | str = b"") -> ApiError:
    """The error for a reply `code` (and its `text`) other than the expected one at `stage`."""
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    where: dict[str, Any] = {"reply_code": code, "stage": stage, "reason": f"{code} {text}".strip()}
    if 400 <= code < 500:
        return TransientDeliveryError(**where)
    if code == 552:
        return _too_large(envelope, **where)
    if 500 <= code < 600 and stage == "RCPT":
        problem = Problem(INVALID_MAILBOX, "The mail server refused the mailbox.", field="mailbox")
        return PermanentDeliveryError([problem], **where)
    if stage == "END" and not 500 <= code < 600:
        return TransientDeliveryError(ambiguous=True, **where)
    problem = Problem(DELIVERY_REFUSED, f"The mail server refused the message at {stage} ({code}).")
    return PermanentDeliveryError([problem], **where)


def _socket_failure(exc: OSError, stage: str, *, ambiguous: bool = False) -> TransientDeliveryError:
    """The error for a connection that failed at `stage`: refused, timed out, closed or cut off at its deadline."""
    return TransientDeliveryError(ambiguous=ambiguous, stage=stage, reason=str(exc) or type(exc).__name__)


@dataclass
class _Progress:
    """How far a delivery got: the stage whose reply is awaited, for the log line of a failure."""

    stage: str = "connect"


class _SessionBroken(Exception):
    """A kept session failed RSET: it broke while resting, before this message's MAIL was taken."""


def _open(smtp: SmtpOptions, helo: str, envelope: Envelope, deadline: float) -> smtplib.SMTP:
    try:
        return open_session(smtp, helo, deadline)
    except SetupRefused as exc:
        raise _refusal(exc.stage, exc.code, envelope, exc.text) from None
    except ssl.SSLCertVerificationError as exc:
        problem = Problem(DELIVERY_REFUSED, f"The mail server's certificate is not trusted: {exc.verify_message}.")
        stage = "STARTTLS" if smtp.security == "starttls" else "connect"
        raise PermanentDeliveryError([problem], stage=stage, reason=exc.verify_message) from None
    except smtplib.SMTPServerDisconnected as exc:
        raise _socket_failure(exc, "connect") from None
    except smtplib.SMTPException as exc:  # the relay lacks STARTTLS or a usable AUTH method
        problem = Problem(DELIVERY_REFUSED, f"The mail server session could not be set up: {exc}.")
        raise PermanentDeliveryError([problem], stage="EHLO", reason=str(exc)) from None
    except OSError as exc:
        raise _socket_failure(exc, "connect") from None


def _envelope_replies(client: smtplib.SMTP, envelope: Envelope, reset: bool,
                      progress: _Progress) -> list[tuple[str, int, bytes]]:
    """Send [RSET,] MAIL, RCPT and DATA — in one write when the relay offers PIPELINING (RFC 2920) — and
    return the stages, reply codes and texts of MAIL, RCPT and DATA; one by one, a refusal ends the list early.

    Raises _SessionBroken when RSET fails: nothing of this message was taken, so a new session may try again.
    """
    commands = [("RSET", "RSET")] if reset else []
    size = f" SIZE={envelope.size}" if client.has_extn("size") and envelope.size else ""
    commands += [("MAIL", f"MAIL FROM:{smtplib.quoteaddr(envelope.mail_from)}{size}"),
                 ("RCPT", f"RCPT TO:{smtplib.quoteaddr(envelope.rcpt_to)}"), ("DATA", "DATA")]
    pipelining = client.has_extn("pipelining")
    replies: list[tuple[str, int, bytes]] = []
    resting = reset  # until RSET is answered, a failure means the session broke while it rested
    try:
        if pipelining:
            client.send("".join(f"{command}\r\n" for _, command in commands).encode("ascii"))
        for stage, command in commands:
            progress.stage = stage
            code, text = client.getreply() if pipelining else client.docmd(command)
            if stage == "RSET":
                if code != 250:
                    raise _SessionBroken()
                resting = False
                continue
            replies.append((stage, code, text))
            if code not in EXPECTED[stage] and not pipelining:
                break
    except OSError:
        if not resting:
            raise
        raise _SessionBroken() from None
    return replies


def _transaction(client: smtplib.SMTP, replies: list[tuple[str, int, bytes]], chunks: Iterable[bytes],
                 envelope: Envelope, progress: _Progress) -> None:
    refused = [(stage, code, text) for stage, code, text in replies if code not in EXPECTED[stage]]
    if refused:
        # A pipelined DATA may have been accepted although MAIL or RCPT was not: the session that waits
        # for content is closed by the caller, so that the relay drops the empty transaction.
        stage, code, text = refused[0]
        raise _refusal(stage, code, envelope, text)
    progress.stage = "DATA"
    _send_data(client, chunks)
    # The end of DATA is sent: from here on the relay may hold the message, so nothing is resent.
    progress.stage = "END"
    try:
        code, text = client.getreply()
    except OSError as exc:
        raise _socket_failure(exc, "END", ambiguous=True) from None
    if code != 250:
        raise _refusal("END", code, envelope, text)


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


def _check_size(client: smtplib.SMTP, envelope: Envelope) -> None:
    """Refuse, before any command, a message larger than the relay's advertised SIZE limit (RFC 1870)."""
    limit = client.esmtp_features.get("size", "")
    if limit.isdigit() and 0 < int(limit) < envelope.size:
        raise _too_large(envelope, stage="MAIL", reason=f"over the relay's SIZE limit of {limit} bytes")


def deliver(email: OutgoingEmail, smtp: SmtpOptions) -> None:
    """Send one email within `timeout` × 3; return only once the relay answered 250 to the end of DATA.

    Raises TransientDeliveryError when trying again may help, PermanentDeliveryError when not; an ambiguous end
    (the end of DATA sent, no reply) is logged with the interaction id, since the relay may hold the message.
    """
    started = time.monotonic()
    try:
        _deliver(email.chunks(), email.envelope, smtp)
    except ApiError as error:
        _log_failure(error, email, smtp)
        raise
    finally:
        metrics.SMTP_SECONDS.observe(time.monotonic() - started)
    metrics.RELAY_UP.set(1)
    metrics.ATTACHMENT_BYTES.inc(email.attachment_bytes)


def _log_failure(error: ApiError, email: OutgoingEmail, smtp: SmtpOptions) -> None:
    """One WARNING line per failed delivery: the relay, the stage, its reply or the socket error; and metrics."""
    relay, stage = f"{smtp.host}:{smtp.port}", error.stage or "unknown"
    metrics.DELIVERY_FAILURES.labels(stage, error.outcome).inc()
    metrics.RELAY_UP.set(0 if stage == "connect" and error.reply_code is None else 1)
    ambiguous = error.outcome == "ambiguous"
    what = ("the end of DATA was sent but no reply came; the relay may have it (ambiguous)"
            if ambiguous else f"{error.outcome} at {stage}")
    log.warning("delivery of %s to relay %s failed: %s: %s", email.interaction_id, relay, what, error.reason,
                extra={"fields": {"event": "ambiguous" if ambiguous else "delivery_failed",
                                  "interaction_id": email.interaction_id, "relay": relay, "stage": stage,
                                  "outcome": error.outcome, "smtp_reply": error.reply_code, "reason": error.reason}})


def _deliver(chunks: Iterable[bytes], envelope: Envelope, smtp: SmtpOptions) -> None:
    """Send one message within `timeout` × 3; return only once the relay answered 250 to the end of DATA.

    Raises TransientDeliveryError when trying again may help, PermanentDeliveryError when not.
    The thread's session is kept for its next message after a success, and closed after any failure.
    """
    helo = envelope.helo
    settings = (smtp, helo)
    progress = _Progress()
    deadline = time.monotonic() + DELIVERY_TIMEOUTS * smtp.timeout
    client = kept_session(settings)
    reset = client is not None
    if client is None:
        client = _open(smtp, helo, envelope, deadline)
        keep_session(settings, client)
    progress.stage = "RSET" if reset else "MAIL"
    try:
        client.deadline = deadline  # type: ignore[attr-defined]
        try:
            _check_size(client, envelope)
            replies = _envelope_replies(client, envelope, reset, progress)
        except _SessionBroken:
            close_kept_session()
            progress.stage = "connect"
            client = _open(smtp, helo, envelope, deadline)
            keep_session(settings, client)
            _check_size(client, envelope)
            replies = _envelope_replies(client, envelope, False, progress)
        if client.sock is None:
            raise smtplib.SMTPServerDisconnected("the relay closed the connection")
        with DEADLINES.cut_off(client.sock, deadline):  # the message's writes too, however slowly the relay reads
            _transaction(client, replies, chunks, envelope, progress)
    except OSError as exc:  # smtplib's errors too: the connection broke before the end of DATA was sent
        close_kept_session()
        raise _socket_failure(exc, progress.stage) from None
    except BaseException:
        close_kept_session()
        raise
    keep_session(settings, client)
