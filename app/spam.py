"""Spam from strangers (contract section 11): rspamd's verdict on each email, as the exact bytes the relay would get,
and where that verdict sends it. The check fails open: no verdict is never a lost message."""
from __future__ import annotations

import http.client
import json
import logging
import time
from dataclasses import dataclass

from app import metrics
from app.deadlines import DEADLINES
from app.mail.message import OutgoingEmail
from app.options.model import SpamOptions
from app.recent import RECENT
from app.rules import host_and_port
from app.turns import TURNS

log = logging.getLogger(__name__)
ACTIONS = ("no action", "greylist", "add header", "rewrite subject", "soft reject", "reject")
QUARANTINED = ("soft reject", "reject")  # go to the quarantine mailbox, where a person reviews them
MARKED = ("add header", "rewrite subject", *QUARANTINED)  # carry X-Spam: Yes
metrics.start_at_zero(metrics.SPAM_CHECKS, (*ACTIONS, "error"))
SETTINGS_ID = "web-form"  # tells rspamd which of its settings apply (docs/operating.md, "Spam")
MAX_REPLY = 256 * 1024  # bytes of rspamd's answer read at most


@dataclass(frozen=True)
class Verdict:
    """rspamd's action for an email, its score and the score of the action `reject`."""

    action: str
    score: float
    required: float


class SpamCheckFailed(Exception):
    """rspamd gave no verdict: unreachable, too slow, or an answer that is not a result."""


def _ask(email: OutgoingEmail, client: str, spam: SpamOptions) -> Verdict:
    """POST the email to rspamd's /checkv2 and read its verdict, all within [spam] timeout."""
    host, port = host_and_port(spam.rspamd)
    deadline = time.monotonic() + spam.timeout
    connection = http.client.HTTPConnection(host, port, timeout=spam.timeout)
    try:
        connection.connect()
        assert connection.sock is not None
        with DEADLINES.cut_off(connection.sock, deadline):
            connection.putrequest("POST", "/checkv2", skip_accept_encoding=True)
            headers = {"Content-Length": str(email.envelope.size), "IP": client, "From": email.envelope.mail_from,
                       "Rcpt": email.envelope.rcpt_to, "Queue-Id": email.interaction_id, "Settings-ID": SETTINGS_ID}
            for name, value in headers.items():
                connection.putheader(name, value)
            connection.endheaders()
            for chunk in email.chunks():
                connection.send(chunk)
            response = connection.getresponse()
            answer = response.read(MAX_REPLY)
    except (OSError, http.client.HTTPException) as exc:
        late = time.monotonic() >= deadline
        raise SpamCheckFailed(f"rspamd at {spam.rspamd} " + ("did not answer within the spam timeout" if late
                              else f"cannot be used: {exc.strerror if isinstance(exc, OSError) else exc}")) from None
    finally:
        connection.close()
    try:
        result = json.loads(answer)
        verdict = Verdict(result["action"], float(result["score"]), float(result["required_score"]))
    except (ValueError, KeyError, TypeError):
        verdict = None
    if response.status != 200 or verdict is None or verdict.action not in ACTIONS:
        raise SpamCheckFailed(f"rspamd at {spam.rspamd} answered {response.status} without a result")
    return verdict


def ping(address: str, timeout: float) -> None:
    """rspamd's GET /ping, answered pong; raises SpamCheckFailed otherwise (the probes)."""
    host, port = host_and_port(address)
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", "/ping")
        answer = connection.getresponse().read(64).strip()
    except (OSError, http.client.HTTPException) as exc:
        raise SpamCheckFailed(f"rspamd at {address} cannot be used: {exc}") from None
    finally:
        connection.close()
    if answer != b"pong":
        raise SpamCheckFailed(f"rspamd at {address} answered {answer[:40]!r} to /ping")


def check_spam(email: OutgoingEmail, client: str, spam: SpamOptions) -> Verdict | None:
    """rspamd's verdict on the email when `[spam] rspamd` is set; None when off or when rspamd gave none (logged)."""
    if not spam.rspamd:
        return None
    try:
        with TURNS.given_away():  # from the connect on: rspamd takes milliseconds, more when busy
            verdict = _ask(email, client, spam)
    except SpamCheckFailed as exc:
        metrics.labelled(metrics.SPAM_CHECKS, "error").inc()
        RECENT.failure("spam check", email.interaction_id, str(exc))
        log.warning("spam check failed, the email is delivered unmarked: %s", exc, extra={"fields": {
            "event": "spam_check_failed", "rspamd": spam.rspamd, "interaction_id": email.interaction_id,
            "reason": str(exc)}})
        return None
    metrics.labelled(metrics.SPAM_CHECKS, verdict.action).inc()
    return verdict


def apply_verdict(email: OutgoingEmail, verdict: Verdict, spam: SpamOptions) -> bool:
    """Mark the email with rspamd's verdict and send a rejected one to the quarantine mailbox; whether it went
    there. The customer's subject and text are never changed."""
    marks = [("X-Spam", "Yes")] if verdict.action in MARKED else []
    marks += [("X-Spam-Action", verdict.action), ("X-Spam-Score", f"{verdict.score:.2f} / {verdict.required:.2f}")]
    quarantine = spam.quarantine_mailbox if verdict.action in QUARANTINED else ""
    email.mark(marks, quarantine)  # the envelope's recipient only: To: still names the mailbox it was meant for
    return bool(quarantine)
