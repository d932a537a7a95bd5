"""Compose the email an agent receives from a validated submission."""
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
from email.message import EmailMessage, Message
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


class _FoldedHeader(str):
    """A header whose wire form this module writes itself.

    Plain short ASCII needs no parsing or folding. Text that looks like an encoded word
    (`=?...?=`) would be decoded by a reader, and a long non-ASCII display name comes out
    of the email package with spaces moved: encoded words written here read back exactly.
    The email package stores and emits any value with a `name` and a `fold()` as it is.
    """

    name: str
    wire: str

    def __new__(cls, name: str, text: str, wire: str) -> _FoldedHeader:
        obj = super().__new__(cls, text)
        obj.name, obj.wire = name, wire
        return obj

    def fold(self, *, policy: policy.Policy) -> str:
        """The header as written here, whatever the policy (the email package's header protocol)."""
        return f"{self.name}: {self.wire}{policy.linesep}"


def _fits_as_written(name: str, text: str) -> bool:
    """Whether the header is ASCII and fits one 78-column line, so it needs no encoding or folding."""
    return text.isascii() and len(name) + 2 + len(text) <= 78


def _encoded_words(text: str) -> str:
    """Encoded words of at most ENCODED_WORD_BYTES bytes each, one per folded line, every character encoded that
    a phrase cannot hold. Unlike email.header.Header, which breaks text at its line breaks, a decoder joins them
    back to exactly `text`, line breaks and all."""
    words, piece = [], ""
    for character in text:
        if len((piece + character).encode()) > ENCODED_WORD_BYTES:
            words.append(UTF8_QP.header_encode(piece))
            piece = ""
        piece += character
    words.append(UTF8_QP.header_encode(piece))
    return "\r\n ".join(words)


def _add_text_header(message: EmailMessage, name: str, text: str) -> None:
    """Add an unstructured header; only a userData value may hold line breaks (and TABs), never other controls."""
    if "=?" in text or "\r" in text or "\n" in text:
        message[name] = _FoldedHeader(name, text, _encoded_words(text))
    elif _fits_as_written(name, text):
        message[name] = _FoldedHeader(name, text, text)
    else:
        message[name] = text


def _set_text(message: EmailMessage, text: str) -> None:
    """The body as text/plain; charset=utf-8: 7bit when it is short-lined ASCII, else quoted-printable
    (the email package's own encoder), so the message is 7-bit clean. CR, LF and CRLF end lines (sent as
    CRLF); every other character, form feed and U+2028 included, arrives as it was sent."""
    lines = LINE_END.split(text)
    body = "\n".join(lines) + "\n"
    if body.isascii() and max(map(len, lines), default=0) <= 78:
        encoding = "7bit"
    else:
        encoding = "quoted-printable"
        body = UTF8_QP.body_encode(body)
    for name, value in (("MIME-Version", "1.0"), ("Content-Type", 'text/plain; charset="utf-8"'),
                        ("Content-Transfer-Encoding", encoding)):
        message[name] = _FoldedHeader(name, value, value)
    message.set_payload(body)


def _freeze_short_headers(part: Message) -> None:
    """Keep the MIME headers that add_attachment wrote, when short ASCII, as they read now, so that writing
    the message out does not parse and refold them again."""
    for name, value in part.items():
        text = str(value)
        if not isinstance(value, _FoldedHeader) and _fits_as_written(name, text):
            part.replace_header(name, _FoldedHeader(name, text, text))


_date_cache: tuple[int, str] = (0, "")


def _date() -> str:
    """The Date header's value, formatted once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, format_datetime(localtime()))
    return _date_cache[1]


def _from_header(display_name: str, address: str) -> _FoldedHeader:
    """`"First Last" <address>`: a quoted string when ASCII and short enough for one line, else encoded words
    folded under 78 columns (a name full of quotes or backslashes doubles in length when quoted)."""
    wire = f'"{quote(display_name)}" <{address}>'
    if not display_name.isascii() or "=?" in display_name or len("From: ") + len(wire) > MAX_LINE:
        wire = f"{_encoded_words(display_name)} <{address}>"
    return _FoldedHeader("From", f"{display_name} <{address}>", wire)


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
    display_name = f"{submission.first_name} {submission.last_name}"
    message["From"] = _from_header(display_name, submission.from_address)
    if smtp.envelope_from:
        message["Sender"] = _FoldedHeader("Sender", smtp.envelope_from, smtp.envelope_from)
    message["To"] = _FoldedHeader("To", submission.mailbox, submission.mailbox)
    _add_text_header(message, "Subject", submission.subject)
    message["Date"] = _FoldedHeader("Date", date := _date(), date)
    message["Message-ID"] = _FoldedHeader("Message-ID", message_id := f"<{interaction_id}@{helo}>", message_id)
    _add_text_header(message, "X-Genesys-Interaction-Id", interaction_id)
    _add_text_header(message, "X-Genesys-Service", submission.service)
    if service.tenant:
        _add_text_header(message, "X-Genesys-Tenant", service.tenant)
    _add_text_header(message, "X-Genesys-First-Name", submission.first_name)
    _add_text_header(message, "X-Genesys-Last-Name", submission.last_name)
    for key, value in submission.user_data:
        _add_text_header(message, "X-Genesys-User-Data", f"{key}={value}")
    _set_text(message, submission.text)
    envelope = Envelope(helo, smtp.envelope_from or submission.mailbox, submission.mailbox, service.max_size)
    outgoing = OutgoingEmail(interaction_id, message, envelope)
    for attachment in submission.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        message.add_attachment(b"", maintype=maintype, subtype=subtype, filename=attachment.filename)
        placeholder = f"ATTACHMENT-{secrets.token_hex(16)}"
        *_, part = message.iter_parts()
        part.set_payload(placeholder)
        outgoing.placeholders[placeholder.encode()] = attachment
    for part in message.iter_parts():
        _freeze_short_headers(part)
    outgoing.envelope = replace(envelope, size=outgoing.size())
    return outgoing
