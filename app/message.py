"""Compose the email an agent receives from a validated submission.

Built with `EmailMessage` and `policy.SMTP`, through three documented hooks that keep composing fast (the
package's documented path for everything takes 1.1 ms an email, this 0.07 ms; `set_content` alone costs w1
16 %: docs/benchmarks.md): header values go through `header()`, which hands the package values already written
(the header-object protocol of `email.policy`) where its parser is slow or wrong; `_set_text` writes the body
as `set_content` would; and the header registry builds each header class once.
tests/test_email_characters.py reads back every character class of contract section 6.
"""
from __future__ import annotations

import base64
import re
import secrets
import socket
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from email import policy
from email.charset import QP, Charset
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime, localtime, quote
from functools import cached_property

from app.attachments import Attachment
from app.options import ServiceOptions, SmtpOptions
from app.submission import Submission

ID_ALPHABET = string.digits + string.ascii_uppercase
UTF8_QP = Charset("utf-8")
UTF8_QP.body_encoding = QP
HOST_NAME = socket.gethostname()  # read once: no look-up per request
BASE64_BLOCK = 57 * 1024  # bytes read at a time: 1024 lines of base64
MAX_LINE = 998  # octets in a line, CRLF aside (RFC 5322)
LINE_END = re.compile(r"\r\n|\r|\n")
LINE_BREAK = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")  # where str.splitlines breaks
ANY_LINE_END = re.compile("\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
ENCODED_WORD_BYTES = 36  # text bytes per encoded word: 48 characters of base64, a line under 78 columns


class _CachedHeaderRegistry(HeaderRegistry):
    """The standard registry, but building each header class once instead of once per header set."""

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        if key not in self._classes:
            self._classes[key] = super().__getitem__(name)
        return self._classes[key]


# 7bit: a non-ASCII body is quoted-printable or base64, so the message passes any relay without 8BITMIME.
POLICY = policy.SMTP.clone(cte_type="7bit", header_factory=_CachedHeaderRegistry())


def new_interaction_id() -> str:
    """A unique id of 16 characters of [0-9A-Z] (82 random bits), shown to the client and carried by the email."""
    number = secrets.randbits(83) % 36**16
    digits = []
    for _ in range(16):
        number, digit = divmod(number, 36)
        digits.append(ID_ALPHABET[digit])
    return "".join(digits)


@dataclass(frozen=True)
class Envelope:
    """The SMTP envelope. MAIL FROM is never the customer's address: a bounce must not reach a stranger."""

    helo: str  # the EHLO name, also the domain of Message-ID
    mail_from: str
    rcpt_to: str
    max_size: int  # the service's limit, the advice given when the relay answers 552
    size: int = 0  # the message's size, declared with SIZE= when the relay offers it


class _Prewritten(str):
    """A header value with its wire form: `EmailPolicy` stores and emits as it is any value that has a `name`
    and a `fold()` (the header-object protocol of `email.policy`), without parsing or refolding it."""

    name: str
    wire: str

    def __new__(cls, name: str, text: str, wire: str) -> _Prewritten:
        obj = super().__new__(cls, text)
        obj.name, obj.wire = name, wire
        return obj

    def fold(self, *, policy: policy.Policy) -> str:
        """The header as written here, whatever the policy."""
        return f"{self.name}: {self.wire}{policy.linesep}"


def header(name: str, text: str, address: str | None = None) -> str:
    """The value to store as header `name` so that a mail client reads `text` back exactly (contract section 6):
    this module's one way past the email package's header parser, for speed and where that parser is wrong.

    With `address`, `text` is the display name of a mailbox header: `"text" <address>` as a quoted string when
    ASCII and short enough, else encoded words (a name full of quotes or backslashes doubles when quoted).
    Otherwise `text` is unstructured. Text holding `=?` or a line break (anything str.splitlines breaks at) is
    written as encoded words: the email package would decode the first and refuse the second. Short ASCII is
    written as it is, also when only the header's name pushes it past 78 columns (the email package would move
    it whole onto a second line, and its parser reads that back with a leading space). Anything else (long or
    non-ASCII text) is returned as a plain string, for the email package to fold and encode.
    Encoded words here hold at most ENCODED_WORD_BYTES bytes each, one per folded line, and every character a
    phrase cannot hold is encoded, so that a decoder joins them back to exactly `text`, line breaks and all.
    """
    if address is not None:
        wire = f'"{quote(text)}" <{address}>'
        if not text.isascii() or "=?" in text or len(name) + 2 + len(wire) > MAX_LINE:
            wire = f"{_encoded_words(text)} <{address}>"
        return _Prewritten(name, f"{text} <{address}>", wire)
    if "=?" in text or LINE_BREAK.search(text):
        return _Prewritten(name, text, _encoded_words(text))
    if text.isascii() and (len(name) + 2 + len(text) <= 78 or len(text) < 78):
        return _Prewritten(name, text, text)
    return text


def _encoded_words(text: str) -> str:
    """`text` as RFC 2047 Q-encoded words of at most ENCODED_WORD_BYTES bytes each, joined by folds."""
    words, piece = [], ""
    for character in text:
        if len((piece + character).encode()) > ENCODED_WORD_BYTES:
            words.append(UTF8_QP.header_encode(piece))
            piece = ""
        piece += character
    words.append(UTF8_QP.header_encode(piece))
    return "\r\n ".join(words)


def _set_text(message: EmailMessage, text: str) -> None:
    """The body, as `set_content(text)` writes it without parsing its own headers: text/plain; charset=utf-8, 7bit when
    short-lined ASCII, else quoted-printable (the email package's own encoder). CR, LF and CRLF end lines (sent
    as CRLF, with one added when the text does not end with one); every other character arrives as sent."""
    body = LINE_END.sub("\n", text)
    body += "" if body.endswith("\n") else "\n"
    if body.isascii() and max(map(len, body.split("\n"))) <= 78:
        encoding = "7bit"
    else:
        encoding = "quoted-printable"
        body = UTF8_QP.body_encode(body)
    for name, value in (("MIME-Version", "1.0"), ("Content-Type", 'text/plain; charset="utf-8"'),
                        ("Content-Transfer-Encoding", encoding)):
        message[name] = header(name, value)
    message.set_payload(body)


def _details(submission: Submission, interaction_id: str) -> str:
    """The block `[email] details_in_body` puts before the text, for agents whose mail client hides X- headers.

    Its own lines come first and no customer data can pass for one of them: each userData pair is on a line of
    its own starting `userData[`, and every line boundary in a value (any str.splitlines knows, U+2028 and
    U+2029 too) starts an indented continuation line; the customer's text follows the block's last line."""
    lines = ["---- Details from the contact form ----", f"Service: {submission.service}",
             f"Interaction ID: {interaction_id}"]
    for key, value in submission.user_data:
        lines.append(f"userData[{key}]: " + "\n    ".join(ANY_LINE_END.split(value)))
    return "\n".join([*lines, "---- Message ----", ""])


_date_cache: tuple[int, str] = (0, "")


def _date() -> str:
    """The Date header's value, formatted once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, format_datetime(localtime()))
    return _date_cache[1]


@dataclass
class OutgoingEmail:
    """The composed email and its envelope. Attachment bodies stand in `message` as placeholders and are
    streamed by `chunks()`."""

    interaction_id: str
    message: EmailMessage
    envelope: Envelope
    placeholders: dict[bytes, Attachment] = field(default_factory=dict)

    @property
    def attachment_bytes(self) -> int:
        """The bytes of all attachments."""
        return sum(attachment.size for attachment in self.placeholders.values())

    @cached_property
    def wire(self) -> bytes:
        """The message as written by the email package, attachment bodies still as placeholders."""
        return self.message.as_bytes()

    def size(self) -> int:
        """The size in octets of what `chunks()` yields, for SIZE= in MAIL FROM (RFC 1870)."""
        wire = self.wire
        size = len(wire) - sum(len(p) * wire.count(p) for p in self.placeholders)
        for attachment in self.placeholders.values():
            encoded = 4 * -(-attachment.size // 3)
            size += encoded + 2 * max(-(-encoded // 76) - 1, 0)
        return size

    def chunks(self) -> Iterator[bytes]:
        """The email as CRLF-terminated lines, with each attachment base64-encoded a block at a time.

        Every chunk starts at the beginning of a line or with CRLF, so that each can be dot-stuffed alone.
        """
        wire = self.wire
        if not self.placeholders:
            yield wire
            return
        position = 0
        for match in re.finditer(b"|".join(map(re.escape, self.placeholders)), wire):
            yield wire[position:match.start()]
            yield from _base64_lines(self.placeholders[match[0]])
            position = match.end()
        yield wire[position:]


def _base64_lines(attachment: Attachment) -> Iterator[bytes]:
    """The attachment's bytes as base64 lines of 76 characters joined by CRLF, with no CRLF after the last."""
    attachment.stream.seek(0)
    separator = b""
    while block := attachment.stream.read(BASE64_BLOCK):
        yield separator + base64.encodebytes(block)[:-1].replace(b"\n", b"\r\n")
        separator = b"\r\n"


def compose(submission: Submission, interaction_id: str, service: ServiceOptions, smtp: SmtpOptions) -> OutgoingEmail:
    """Build the email with the headers of contract section 6, every attachment, and the envelope: MAIL FROM is
    `envelope_from` (also the Sender: header) or else the mailbox itself; HELO names the Message-ID's domain."""
    helo = smtp.helo_name or HOST_NAME
    message = EmailMessage(policy=POLICY)
    name = f"{submission.first_name} {submission.last_name}"
    if service.from_header == "service":  # DMARC: the customer's domain may not be sent from another host
        message["From"] = header("From", name, smtp.envelope_from or submission.mailbox)
        message["Reply-To"] = header("Reply-To", name, submission.from_address)
    else:
        message["From"] = header("From", name, submission.from_address)
    fields = [("Sender", smtp.envelope_from), ("To", submission.mailbox), ("Subject", submission.subject),
              ("Date", _date()), ("Message-ID", f"<{interaction_id}@{helo}>"),
              ("X-Genesys-Interaction-Id", interaction_id), ("X-Genesys-From-Address", submission.from_address),
              ("X-Genesys-Service", submission.service),
              ("X-Genesys-Tenant", service.tenant), ("X-Genesys-First-Name", submission.first_name),
              ("X-Genesys-Last-Name", submission.last_name),
              *(("X-Genesys-User-Data", f"{key}={value}") for key, value in submission.user_data)]
    for name, text in fields:
        if text or name not in ("Sender", "X-Genesys-Tenant"):  # these two only when configured
            message[name] = header(name, text)
    text = (_details(submission, interaction_id) if service.details_in_body else "") + submission.text
    _set_text(message, text)
    envelope = Envelope(helo, smtp.envelope_from or submission.mailbox, submission.mailbox, service.max_size)
    outgoing = OutgoingEmail(interaction_id, message, envelope)
    for attachment in submission.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        message.add_attachment(b"", maintype=maintype, subtype=subtype, filename=attachment.filename)
        placeholder = f"ATTACHMENT-{secrets.token_hex(16)}"
        *_, part = message.iter_parts()
        part.set_payload(placeholder)
        outgoing.placeholders[placeholder.encode()] = attachment
    outgoing.envelope = replace(envelope, size=outgoing.size())
    return outgoing
