"""Hand a composed email to the SMTP relay, and say what each way of failing means for the client."""
from __future__ import annotations

import logging
import re
import smtplib
import ssl
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from app import metrics
from app.errors import (
    DELIVERY_REFUSED,
    INVALID_MAILBOX,
    DeliveryError,
    PermanentDeliveryError,
    Problem,
    TransientDeliveryError,
    attachments_too_large,
)
from app.message import Envelope, OutgoingEmail
from app.options import SmtpOptions
from app.recent import RECENT
from app.smtp_session import KEPT, RelaySession, SetupFailed, SetupRefused

log = logging.getLogger(__name__)
EXPECTED = {"MAIL": (250,), "RCPT": (250, 251), "DATA": (354,)}
DELIVERY_TIMEOUTS = 3  # one delivery takes at most this many times [smtp] timeout
DOT_AT_LINE_START = re.compile(rb"(?m)^\.")


def _too_large(envelope: Envelope, **where: Any) -> PermanentDeliveryError:
    return PermanentDeliveryError([attachments_too_large(envelope.max_size)], **where)


def _refusal(stage: str, code: int, envelope: Envelope, text: bytes | str = b"") -> DeliveryError:
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


def _broken(exc: OSError, stage: str, *, ambiguous: bool = False) -> TransientDeliveryError:
    """The error for a connection that failed at `stage`: refused, timed out, closed or cut off at its deadline."""
    return TransientDeliveryError(ambiguous=ambiguous, stage=stage, reason=str(exc) or type(exc).__name__)


@contextmanager
def _stage(stage: str, *, ambiguous: bool = False) -> Iterator[None]:
    """A connection that breaks during `stage` is a retry (ambiguous once the end of DATA was sent)."""
    try:
        yield
    except OSError as exc:  # smtplib's errors too
        raise _broken(exc, stage, ambiguous=ambiguous) from None


class _SessionBroken(Exception):
    """A kept session failed RSET: it broke while resting, before this message's MAIL was taken."""


def _open(smtp: SmtpOptions, envelope: Envelope, deadline: float) -> RelaySession:
    try:
        return RelaySession(smtp, envelope.helo, deadline)
    except SetupRefused as exc:
        raise _refusal(exc.stage, exc.code, envelope, exc.text) from None
    except SetupFailed as failed:
        raise _setup_failure(failed.stage, failed.error) from None


def _setup_failure(stage: str, error: OSError) -> DeliveryError:
    """The error for a session that could not be set up at `stage`, other than by a refusing reply."""
    if isinstance(error, ssl.SSLCertVerificationError):
        problem = Problem(DELIVERY_REFUSED, f"The mail server's certificate is not trusted: {error.verify_message}.")
        return PermanentDeliveryError([problem], stage=stage, reason=error.verify_message)
    if isinstance(error, smtplib.SMTPException) and not isinstance(error, smtplib.SMTPServerDisconnected):
        # the relay lacks STARTTLS or a usable AUTH method
        problem = Problem(DELIVERY_REFUSED, f"The mail server session could not be set up: {error}.")
        return PermanentDeliveryError([problem], stage=stage, reason=str(error))
    return _broken(error, stage)  # refused, timed out, closed


def _check_size(session: RelaySession, envelope: Envelope) -> None:
    """Refuse, before any command, a message larger than the relay's advertised SIZE limit (RFC 1870)."""
    limit = session.size_limit()
    if 0 < limit < envelope.size:
        raise _too_large(envelope, stage="MAIL", reason=f"over the relay's SIZE limit of {limit} bytes")


def _envelope(session: RelaySession, envelope: Envelope, reset: bool) -> list[tuple[str, int, bytes]]:
    """Send [RSET,] MAIL, RCPT and DATA — in one write when the relay offers PIPELINING (RFC 2920) — and return the
    stages, reply codes and texts of MAIL, RCPT and DATA; one by one, a refusal ends the list early.

    Raises _SessionBroken when RSET fails: nothing of this message was taken, so a new session may try again.
    """
    _check_size(session, envelope)
    size = f" SIZE={envelope.size}" if session.offers("size") and envelope.size else ""
    commands = [("RSET", "RSET")] if reset else []
    commands += [("MAIL", f"MAIL FROM:{smtplib.quoteaddr(envelope.mail_from)}{size}"),
                 ("RCPT", f"RCPT TO:{smtplib.quoteaddr(envelope.rcpt_to)}"), ("DATA", "DATA")]
    pipelining = session.offers("pipelining")
    replies: list[tuple[str, int, bytes]] = []
    try:
        if pipelining:
            with _stage(commands[0][0]):
                session.send("".join(f"{command}\r\n" for _, command in commands).encode("ascii"))
        for stage, command in commands:
            with _stage(stage):
                code, text = session.reply() if pipelining else session.command(command)
            if stage == "RSET":
                if code != 250:
                    raise _SessionBroken()
                continue
            replies.append((stage, code, text))
            if code not in EXPECTED[stage] and not pipelining:
                break
    except TransientDeliveryError as error:
        if error.stage == "RSET":  # the kept session broke while it rested
            raise _SessionBroken() from None
        raise
    return replies


def _send_data(session: RelaySession, chunks: Iterable[bytes]) -> None:
    """Send the message dot-stuffed, then the end-of-data marker; each chunk starts a line or with CRLF.

    Only a chunk that holds a dot at a line start is stuffed (base64 never does). The last chunk goes out with
    the marker in one write, so that no small write waits on a delayed ACK.
    """
    pending = b""
    for chunk in chunks:
        if chunk:
            if pending:
                session.send(pending)
            pending = DOT_AT_LINE_START.sub(b"..", chunk) if b"\n." in chunk or chunk[:1] == b"." else chunk
    session.send(pending + (b".\r\n" if pending.endswith(b"\r\n") or not pending else b"\r\n.\r\n"))


def _transaction(session: RelaySession, replies: list[tuple[str, int, bytes]], email: OutgoingEmail,
                 deadline: float) -> None:
    """After the envelope's replies: the message and the end of DATA, within `deadline`."""
    refused = [(stage, code, text) for stage, code, text in replies if code not in EXPECTED[stage]]
    if refused:
        # A pipelined DATA may have been accepted although MAIL or RCPT was not: the session that waits
        # for content is closed by the caller, so that the relay drops the empty transaction.
        stage, code, text = refused[0]
        raise _refusal(stage, code, email.envelope, text)
    with _stage("DATA"), session.writes_until(deadline):
        _send_data(session, email.chunks())
    # The end of DATA is sent: from here on the relay may hold the message, so nothing is resent.
    with _stage("END", ambiguous=True):
        code, text = session.reply()
    if code != 250:
        raise _refusal("END", code, email.envelope, text)


def _deliver(email: OutgoingEmail, smtp: SmtpOptions) -> None:
    """One message on this thread's kept session (RSET first) or a new one; the session is kept after a success
    and closed after any failure."""
    deadline = time.monotonic() + DELIVERY_TIMEOUTS * smtp.timeout
    session = KEPT.take(smtp, email.envelope.helo)
    replies: list[tuple[str, int, bytes]] = []
    if session is not None:
        session.begin(deadline)
        try:
            replies = _envelope(session, email.envelope, reset=True)
        except _SessionBroken:
            session.close()
            session = None
        except BaseException:
            session.close()
            raise
    if session is None:
        session = _open(smtp, email.envelope, deadline)
        try:
            replies = _envelope(session, email.envelope, reset=False)
        except BaseException:
            session.close()
            raise
    try:
        _transaction(session, replies, email, deadline)
    except BaseException:
        session.close()
        raise
    KEPT.keep(session)


def deliver(email: OutgoingEmail, smtp: SmtpOptions) -> None:
    """Send one email within `timeout` × 3; return only once the relay answered 250 to the end of DATA.

    Raises TransientDeliveryError when trying again may help, PermanentDeliveryError when not; an ambiguous end
    (the end of DATA sent, no reply) is logged with the interaction id, since the relay may hold the message.
    """
    started = time.monotonic()
    try:
        _deliver(email, smtp)
    except (PermanentDeliveryError, TransientDeliveryError) as error:
        _log_failure(error, email, smtp)
        raise
    finally:
        metrics.SMTP_SECONDS.observe(time.monotonic() - started)
    metrics.RELAY_UP.set(1)
    metrics.ATTACHMENT_BYTES.inc(email.attachment_bytes)
    RECENT.relay("delivered", "250")


def _log_failure(error: DeliveryError, email: OutgoingEmail, smtp: SmtpOptions) -> None:
    """One WARNING line per failed delivery: the relay, the stage, its reply or the socket error; and metrics."""
    relay, stage = f"{smtp.host}:{smtp.port}", error.stage or "unknown"
    metrics.DELIVERY_FAILURES.labels(stage, error.outcome).inc()
    metrics.RELAY_UP.set(0 if stage == "connect" else 1)  # past connect, the relay was reached
    RECENT.relay(error.outcome, error.reason or "")
    RECENT.failure("delivery", email.interaction_id, f"{error.outcome} at {stage}: {error.reason}")
    ambiguous = error.outcome == "ambiguous"
    what = ("the end of DATA was sent but no reply came; the relay may have it (ambiguous)"
            if ambiguous else f"{error.outcome} at {stage}")
    log.warning("delivery of %s to relay %s failed: %s: %s", email.interaction_id, relay, what, error.reason,
                extra={"fields": {"event": "ambiguous" if ambiguous else "delivery_failed",
                                  "interaction_id": email.interaction_id, "relay": relay, "stage": stage,
                                  "outcome": error.outcome, "smtp_reply": error.reply_code, "reason": error.reason}})
