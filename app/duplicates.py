"""One form, one email (contract section 9): a form's fingerprint, the Idempotency-Key header, and the claim
that lets one delivery of a form through per window, whichever process or node of the service it reaches.

A claim is a record in the node's store: `pending` while one request delivers (with the time its delivery
must have ended by), then `delivered` or `ambiguous` for the window, or removed when the form was not
delivered. A second copy waits while the first is pending, answers with the first's id once it was delivered,
and is delivered again under the same id (and so the same Message-ID) after an ambiguous end or a pending
claim whose process died.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from app import metrics
from app.errors import BAD_IDEMPOTENCY_KEY, IDEMPOTENCY_KEY_REUSED, ApiError, TransientDeliveryError
from app.options.model import Options, ServiceOptions
from app.quotas import refusal
from app.rules import LINE_END
from app.store import OverQuota, Quota, Store, StoreError, open_store
from app.submission import Submission
from app.turns import TURNS

log = logging.getLogger(__name__)
PENDING, DELIVERED, AMBIGUOUS = "pending", "delivered", "ambiguous"
KEY_WINDOW = 24 * 3600.0  # seconds an Idempotency-Key is remembered, whatever duplicate_window says
GRACE = 2.0  # seconds beyond the delivery's own bound, for composing and answering
POLL = 0.05  # seconds between looks at a claim whose delivery is in flight
BARE_KEY = re.compile(r"[\x21-\x7e]{1,255}")
QUOTED_KEY = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\\"])*)"')  # a structured-field string
ID_ALPHABET = string.digits + string.ascii_uppercase


def new_interaction_id() -> str:
    """A unique id of 16 characters of [0-9A-Z] (82 random bits), shown to the client and carried by the email."""
    number = secrets.randbits(83) % 36**16
    digits = []
    for _ in range(16):
        number, digit = divmod(number, 36)
        digits.append(ID_ALPHABET[digit])
    return "".join(digits)


def fingerprint(submission: Submission) -> str:
    """The SHA-256 of what makes two forms the same message (contract section 9); nothing of the client, its
    headers or the time."""
    # The service of the URL (two unconfigured services are still two), the mailbox and fromAddress (lower-cased),
    # the names, subject, text (line ends as LF), userData pairs in order, each attachment's name and bytes' hash.
    parts = [submission.service, submission.mailbox.lower(), submission.from_address.lower(), submission.first_name,
             submission.last_name, submission.subject, LINE_END.sub("\n", submission.text),
             [list(pair) for pair in submission.user_data],
             [[attachment.filename, attachment.sha256] for attachment in submission.attachments]]
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


def idempotency_key(value: str | None) -> str | None:
    """The key of an Idempotency-Key header (a structured-field string or a bare token of 1–255 visible ASCII
    characters), None without the header; a malformed key is a 400 (618)."""
    if value is None:
        return None
    value = value.strip(" \t")
    quoted = QUOTED_KEY.fullmatch(value)
    key = re.sub(r"\\(.)", r"\1", quoted[1]) if quoted else value if BARE_KEY.fullmatch(value) else ""
    if not 1 <= len(key) <= 255 or (not quoted and value.startswith('"')):
        raise ApiError.single(BAD_IDEMPOTENCY_KEY, "The Idempotency-Key header must be 1 to 255 visible ASCII "
                              "characters, bare or as a quoted string.")
    return key


def _record(state: str, interaction_id: str, form: str, until: float = 0) -> str:
    return json.dumps({"state": state, "id": interaction_id, "fingerprint": form, "until": until})


def _record_from(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
        return value if isinstance(value, dict) and {"state", "id", "fingerprint", "until"} <= value.keys() else None
    except ValueError:
        return None


def _store_failed(description: str, what: str, error: StoreError) -> None:
    metrics.DEDUP_STORE_ERRORS.inc()
    log.warning("the duplicate store (%s) failed to %s: %s; the form is delivered without the duplicate check "
                "and the quotas",
                description, what, error, extra={"fields": {
                    "event": "dedup_store_error", "store": description, "operation": what, "reason": str(error)}})


@dataclass
class Claim:
    """What the duplicate check decided for one form: deliver it under `interaction_id` (again, when `resend`), or
    answer with it and send nothing when `duplicate`; as a context manager it settles the claim."""

    interaction_id: str
    fingerprint: str
    duplicate: bool = False
    resend: bool = False
    store: Store | None = None
    key: str = ""
    record: str = ""  # the record this form wrote, or tried to write, under `key`
    window: float = 0.0

    def write(self, interaction_id: str, until: float) -> str:
        """The pending record of this form under `interaction_id`, taken as its own before it is written (a write
        that times out may still land)."""
        self.interaction_id = interaction_id
        self.record = _record(PENDING, interaction_id, self.fingerprint, until)
        return self.record

    def announce(self) -> None:
        """Log the interaction id before the message goes out: after a crash, the log names what the relay may hold."""
        log.info("sending %s (fingerprint %s%s)", self.interaction_id, self.fingerprint[:12],
                 ", again after an ambiguous attempt" if self.resend else "", extra={"fields": {
                     "event": "sending", "interaction_id": self.interaction_id,
                     "fingerprint": self.fingerprint[:12], "resend": self.resend}})

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        # Delivered when the block ends normally, ambiguous or released (the form may come again) when it raises;
        # a record that never landed is not there to replace, and one that landed late is settled like any.
        if self.store is None or self.duplicate:
            return
        if error is None:
            new: str | None = _record(DELIVERED, self.interaction_id, self.fingerprint)
        elif isinstance(error, TransientDeliveryError) and error.ambiguous:
            new = _record(AMBIGUOUS, self.interaction_id, self.fingerprint)
        else:
            new = None
        try:
            self.store.settle(self.key, self.record, new, self.window)
        except StoreError as exc:
            _store_failed(self.store.description, "settle a claim", exc)


def claim(submission: Submission, service: ServiceOptions, options: Options, key: str | None,
          quotas: Sequence[Quota] = ()) -> Claim:
    """Claim the form before anything is sent, by its Idempotency-Key (24 h) or, with `duplicate_window`, by its
    fingerprint, and count it against `quotas` with the claim (a duplicate counts nothing); waits while an
    identical form is being delivered, at most one delivery's bound."""
    form = fingerprint(submission)
    if key is None and not service.duplicate_window:
        if quotas:
            _count(quotas, options)
        return Claim(new_interaction_id(), form)
    if key is not None:
        store_key, window = f"key:{submission.service}:{hashlib.sha256(key.encode()).hexdigest()}", KEY_WINDOW
    else:
        store_key, window = f"form:{form}", service.duplicate_window
    # How long this form's delivery may take: its scan, its spam check, the relay, and a little more.
    scanning = options.scan.timeout if submission.attachments and options.scan.clamd else 0.0
    bound = scanning + (options.spam.timeout if options.spam.rspamd else 0.0) + options.smtp.delivery_bound + GRACE
    store = _open_store(options)
    if store is None:
        return Claim(new_interaction_id(), form)
    claimed = Claim(new_interaction_id(), form, store=store, key=store_key, window=window)
    try:
        _claim(claimed, bound, quotas)
    except OverQuota as over:
        raise refusal(over) from None
    except StoreError as exc:
        # A write that timed out leaves the store's state unknown, not "no": the form is delivered under the id of
        # the record it tried to write, which is settled (or removed) afterwards should the write land late.
        _store_failed(store.description, "claim a form", exc)
        if not exc.unknown:
            claimed.store = None
        return claimed
    if claimed.duplicate:
        metrics.labelled(metrics.DUPLICATES, service.name).inc()
    return claimed


def _open_store(options: Options) -> Store | None:
    try:
        return open_store(options.server.dedup_store)
    except StoreError as exc:
        _store_failed("the state folder's SQLite file" if not options.server.dedup_store else "Redis", "open", exc)
        return None


def _count(quotas: Sequence[Quota], options: Options) -> None:
    """Count a form that no claim counts: no duplicate check is asked for."""
    store = _open_store(options)
    if store is None:
        return
    try:
        store.count(quotas)
    except OverQuota as over:
        raise refusal(over) from None
    except StoreError as exc:
        _store_failed(store.description, "count the quotas", exc)


def _claim(claimed: Claim, bound: float, quotas: Sequence[Quota]) -> None:
    store, key, form, ttl = claimed.store, claimed.key, claimed.fingerprint, bound + claimed.window
    assert store is not None
    patience = time.monotonic() + bound
    while True:
        if store.add(key, claimed.write(claimed.interaction_id, time.time() + bound), ttl, quotas):
            return
        current = store.get(key)
        if current is None:  # settled as not delivered, or expired, meanwhile
            continue
        first = _record_from(current)
        if first is not None and first["fingerprint"] != form:
            raise ApiError.single(IDEMPOTENCY_KEY_REUSED, "This Idempotency-Key was used for a different form.")
        if first is not None and first["state"] == DELIVERED:
            claimed.interaction_id, claimed.duplicate, claimed.store = first["id"], True, None
            return
        if (first is not None and first["state"] == PENDING and first["until"] > time.time()
                and time.monotonic() < patience):
            with TURNS.given_away():
                time.sleep(POLL)
            continue
        # Ambiguous, or pending past its bound (its process died): deliver again under the same id and Message-ID.
        again = first["id"] if first is not None else claimed.interaction_id
        if store.swap(key, current, claimed.write(again, time.time() + bound), ttl):
            claimed.resend = first is not None
            return
