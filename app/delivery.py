"""Hand a composed email to the SMTP relay, and say what each way of failing means for the client."""
from __future__ import annotations

import logging
import re
import smtplib
import ssl
import time
from collections.abc import Iterable

from app import metrics
from app.errors import (
    ATTACHMENTS_TOO_LARGE,
    DELIVERY_REFUSED,
    INVALID_MAILBOX,
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


def _too_large(envelope: Envelope, code: int | None) -> PermanentDeliveryError:
    problem = Problem(ATTACHMENTS_TOO_LARGE, "The message is larger than the mail server accepts.",
                      advice=envelope.max_size)
    return PermanentDeliveryError([problem], reply_code=code)


def _refusal(stage: str, code: int, envelope: Envelope) -> Exception:
    """The error for a reply `code` other than the expected one at `stage`."""
    if 400 <= code < 500:
        return TransientDeliveryError(code)
    if code == 552:
        return _too_large(envelope, code)
    if 500 <= code < 600 and stage == "RCPT":
        problem = Problem(INVALID_MAILBOX, "The mail server refused the mailbox.", field="mailbox")
        return PermanentDeliveryError([problem], reply_code=code)
    if stage == "END" and not 500 <= code < 600:
        return TransientDeliveryError(code, ambiguous=True)
    problem = Problem(DELIVERY_REFUSED, f"The mail server refused the message at {stage} ({code}).")
    return PermanentDeliveryError([problem], reply_code=code)


class _SessionBroken(Exception):
    """A kept session failed RSET: it broke while resting, before this message's MAIL was taken."""


def _open(smtp: SmtpOptions, helo: str, envelope: Envelope, deadline: float) -> smtplib.SMTP:
    try:
        return open_session(smtp, helo, deadline)
    except SetupRefused as exc:
        raise _refusal(exc.stage, exc.code, envelope) from None
    except ssl.SSLCertVerificationError as exc:
        problem = Problem(DELIVERY_REFUSED, f"The mail server's certificate is not trusted: {exc.verify_message}.")
        raise PermanentDeliveryError([problem], reply_code=None) from None
    except smtplib.SMTPServerDisconnected:
        raise TransientDeliveryError() from None
    except smtplib.SMTPException as exc:  # the relay lacks STARTTLS or a usable AUTH method
        problem = Problem(DELIVERY_REFUSED, f"The mail server session could not be set up: {exc}.")
        raise PermanentDeliveryError([problem], reply_code=None) from None
    except OSError:
        raise TransientDeliveryError() from None


def _envelope_replies(client: smtplib.SMTP, envelope: Envelope, reset: bool) -> list[tuple[str, int]]:
    """Send [RSET,] MAIL, RCPT and DATA — in one write when the relay offers PIPELINING (RFC 2920) — and
    return the stages and reply codes of MAIL, RCPT and DATA; one by one, a refusal ends the list early.

    Raises _SessionBroken when RSET fails: nothing of this message was taken, so a new session may try again.
    """
    commands = [("RSET", "RSET")] if reset else []
    size = f" SIZE={envelope.size}" if client.has_extn("size") and envelope.size else ""
    commands += [("MAIL", f"MAIL FROM:{smtplib.quoteaddr(envelope.mail_from)}{size}"),
                 ("RCPT", f"RCPT TO:{smtplib.quoteaddr(envelope.rcpt_to)}"), ("DATA", "DATA")]
    pipelining = client.has_extn("pipelining")
    replies = []
    resting = reset  # until RSET is answered, a failure means the session broke while it rested
    try:
        if pipelining:
            client.send("".join(f"{command}\r\n" for _, command in commands).encode("ascii"))
        for stage, command in commands:
            code = client.getreply()[0] if pipelining else client.docmd(command)[0]
            if stage == "RSET":
                if code != 250:
                    raise _SessionBroken()
                resting = False
                continue
            replies.append((stage, code))
            if code not in EXPECTED[stage] and not pipelining:
                break
    except OSError:
        if not resting:
            raise
        raise _SessionBroken() from None
    return replies


def _transaction(client: smtplib.SMTP, replies: list[tuple[str, int]], chunks: Iterable[bytes],
                 envelope: Envelope) -> None:
    refused = [(stage, code) for stage, code in replies if code not in EXPECTED[stage]]
    if refused:
        # A pipelined DATA may have been accepted although MAIL or RCPT was not: the session that waits
        # for content is closed by the caller, so that the relay drops the empty transaction.
        raise _refusal(*refused[0], envelope)
    _send_data(client, chunks)
    # The end of DATA is sent: from here on the relay may hold the message, so nothing is resent.
    try:
        code, _ = client.getreply()
    except OSError:
        raise TransientDeliveryError(ambiguous=True) from None
    if code != 250:
        raise _refusal("END", code, envelope)


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
        raise _too_large(envelope, None)


def deliver(email: OutgoingEmail, smtp: SmtpOptions) -> None:
    """Send one email within `timeout` × 3; return only once the relay answered 250 to the end of DATA.

    Raises TransientDeliveryError when trying again may help, PermanentDeliveryError when not; an ambiguous end
    (the end of DATA sent, no reply) is logged with the interaction id, since the relay may hold the message.
    """
    started = time.monotonic()
    try:
        _deliver(email.chunks(), email.envelope, smtp)
    except TransientDeliveryError as error:
        if error.ambiguous:
            log.warning("ambiguous delivery of %s: the end of DATA was sent but no reply came; the relay may have "
                        "it", email.interaction_id,
                        extra={"fields": {"event": "ambiguous", "interaction_id": email.interaction_id}})
        raise
    finally:
        metrics.SMTP_SECONDS.observe(time.monotonic() - started)
    metrics.ATTACHMENT_BYTES.inc(email.attachment_bytes)


def _deliver(chunks: Iterable[bytes], envelope: Envelope, smtp: SmtpOptions) -> None:
    """Send one message within `timeout` × 3; return only once the relay answered 250 to the end of DATA.

    Raises TransientDeliveryError when trying again may help, PermanentDeliveryError when not.
    The thread's session is kept for its next message after a success, and closed after any failure.
    """
    helo = envelope.helo
    settings = (smtp, helo)
    deadline = time.monotonic() + DELIVERY_TIMEOUTS * smtp.timeout
    client = kept_session(settings)
    reset = client is not None
    if client is None:
        client = _open(smtp, helo, envelope, deadline)
        keep_session(settings, client)
    try:
        client.deadline = deadline  # type: ignore[attr-defined]
        try:
            _check_size(client, envelope)
            replies = _envelope_replies(client, envelope, reset)
        except _SessionBroken:
            close_kept_session()
            client = _open(smtp, helo, envelope, deadline)
            keep_session(settings, client)
            _check_size(client, envelope)
            replies = _envelope_replies(client, envelope, reset=False)
        if client.sock is None:
            raise TransientDeliveryError()
        with DEADLINES.cut_off(client.sock, deadline):  # the message's writes too, however slowly the relay reads
            _transaction(client, replies, chunks, envelope)
    except OSError:  # smtplib's errors too: the connection broke before the end of DATA was sent
        close_kept_session()
        raise TransientDeliveryError() from None
    except BaseException:
        close_kept_session()
        raise
    keep_session(settings, client)
