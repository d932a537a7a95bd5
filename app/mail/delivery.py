"""Hand a composed email to the relay, and decide what each way of failing means for the client: a retry, a
refusal, or an ambiguous end once the end of DATA was sent."""
from __future__ import annotations

import logging
import smtplib
import ssl
import threading
import time
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
from app.mail.message import OutgoingEmail
from app.mail.session import (
    EXPECTED_REPLIES,
    OverSizeLimit,
    RelayBroke,
    RelayRefused,
    RelaySession,
    Reply,
    SessionBroken,
)
from app.options.model import SmtpOptions
from app.recent import RECENT

log = logging.getLogger(__name__)
SETUP_STAGES = ("connect", "greeting", "EHLO", "STARTTLS", "AUTH")


def error_for_reply(stage: str, code: int, email: OutgoingEmail, text: bytes | str = b"") -> DeliveryError:
    """The error for a reply `code` (and its `text`) other than the expected one at `stage`."""
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    where: dict[str, Any] = {"reply_code": code, "stage": stage, "reason": f"{code} {text}".strip()}
    if 400 <= code < 500:
        return TransientDeliveryError(**where)
    if code == 552:
        return PermanentDeliveryError([attachments_too_large(email.envelope.max_size)], **where)
    if 500 <= code < 600 and stage == "RCPT":
        problem = Problem(INVALID_MAILBOX, "The mail server refused the mailbox.", field="mailbox")
        return PermanentDeliveryError([problem], **where)
    if stage == "END" and not 500 <= code < 600:
        return TransientDeliveryError(ambiguous=True, **where)
    problem = Problem(DELIVERY_REFUSED, f"The mail server refused the message at {stage} ({code}).")
    return PermanentDeliveryError([problem], **where)


def error_for_break(broke: RelayBroke) -> DeliveryError:
    """The error for a session that broke at a stage: refused, timed out, closed, or a set-up it cannot do."""
    error, stage = broke.error, broke.stage
    if stage not in SETUP_STAGES:
        # Once the end of DATA was sent, the relay may hold the message: nothing is resent.
        return TransientDeliveryError(ambiguous=stage == "END", stage=stage, reason=str(error) or type(error).__name__)
    if isinstance(error, ssl.SSLCertVerificationError):
        problem = Problem(DELIVERY_REFUSED, f"The mail server's certificate is not trusted: {error.verify_message}.")
        return PermanentDeliveryError([problem], stage=stage, reason=error.verify_message)
    if isinstance(error, smtplib.SMTPException) and not isinstance(error, smtplib.SMTPServerDisconnected):
        # the relay lacks STARTTLS or a usable AUTH method
        problem = Problem(DELIVERY_REFUSED, f"The mail server session could not be set up: {error}.")
        return PermanentDeliveryError([problem], stage=stage, reason=str(error))
    return TransientDeliveryError(stage=stage, reason=str(error) or type(error).__name__)


class KeptSessions:
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


KEPT = KeptSessions()


def _send_envelope(email: OutgoingEmail, smtp: SmtpOptions, deadline: float) -> tuple[RelaySession, list[Reply]]:
    """The envelope on this thread's kept session (RSET first) or, if it broke while resting, on a new one."""
    session = KEPT.take(smtp, email.envelope.helo)
    if session is not None:
        session.begin(deadline)
        try:
            return session, session.send_envelope(email.envelope, reset=True)
        except SessionBroken:  # nothing of this message was taken: a new session may try
            session.close()
        except BaseException:
            session.close()
            raise
    session = RelaySession(smtp, email.envelope.helo, deadline)
    try:
        return session, session.send_envelope(email.envelope, reset=False)
    except BaseException:
        session.close()
        raise


def _send(email: OutgoingEmail, smtp: SmtpOptions) -> None:
    """One message within one delivery's bound; the session is kept after a success, closed after any failure."""
    deadline = time.monotonic() + smtp.delivery_bound
    try:
        session, replies = _send_envelope(email, smtp, deadline)
    except RelayRefused as refused:
        raise error_for_reply(refused.stage, refused.code, email, refused.text) from None
    except RelayBroke as broke:
        raise error_for_break(broke) from None
    except OverSizeLimit as over:
        raise PermanentDeliveryError([attachments_too_large(email.envelope.max_size)], stage="MAIL",
                                     reason=str(over)) from None
    try:
        # A pipelined DATA may have been accepted although MAIL or RCPT was not: the session that waits for
        # content is closed below, so that the relay drops the empty transaction.
        for stage, code, text in replies:
            if code not in EXPECTED_REPLIES[stage]:
                raise error_for_reply(stage, code, email, text)
        session.send_data(email.chunks(), deadline)
        code, text = session.read_end()
        if code != 250:
            raise error_for_reply("END", code, email, text)
    except RelayBroke as broke:
        session.close()
        raise error_for_break(broke) from None
    except BaseException:
        session.close()
        raise
    KEPT.keep(session)


def deliver(email: OutgoingEmail, smtp: SmtpOptions) -> None:
    """Send one email within one delivery's bound, returning once the relay answered 250 to the end of DATA; raises
    TransientDeliveryError when trying again may help, PermanentDeliveryError when not."""
    started = time.monotonic()
    try:
        _send(email, smtp)
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


def close_kept_session() -> None:
    """Close this thread's kept session with the relay, if any."""
    KEPT.close_this_threads()
