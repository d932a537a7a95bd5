"""Compose the email an agent receives from a validated submission: its headers, body and envelope, and the wire
form that streams each attachment base64-encoded."""
from __future__ import annotations

import binascii
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from email.utils import format_datetime, localtime
from functools import cached_property

from app.attachments import Attachment
from app.mail.headers import POLICY, UTF8_QP, header, header_line
from app.options.model import ServiceOptions, SmtpOptions
from app.rules import ANY_LINE_END, HOST_NAMES, LINE_END, qualified_host_name
from app.submission import Submission

BASE64_BLOCK = 57 * 1024  # bytes read at a time: 1024 lines of base64
PLACEHOLDER = re.compile(rb"ATTACHMENT-[0-9a-f]{32}")  # where an attachment's body goes in the written message


@dataclass(frozen=True)
class Envelope:
    """The SMTP envelope. MAIL FROM is never the customer's address: a bounce must not reach a stranger."""

    helo: str  # the EHLO name
    mail_from: str
    rcpt_to: str
    max_size: int  # the service's limit, the advice given when the relay answers 552
    size: int = 0  # the message's size, declared with SIZE= when the relay offers it


def ehlo_name(smtp: SmtpOptions) -> str:
    """The name the service gives in EHLO: `helo_name`, else this host's name."""
    return smtp.helo_name or HOST_NAMES[0]


def message_id_domain(smtp: SmtpOptions, mail_from: str) -> str:
    """The right-hand side of Message-ID: `helo_name`, else this host's qualified name, else the envelope sender's
    domain; never a bare host name, which spam filters score (rspamd's MID_RHS_NOT_FQDN)."""
    return smtp.helo_name or qualified_host_name() or mail_from.rpartition("@")[2]


def _set_text(message: EmailMessage, text: str) -> None:
    """The body as `set_content(text)` writes it, without its cost: text/plain; charset=utf-8, 7bit when short-lined
    ASCII, else quoted-printable."""
    # CR, LF and CRLF end lines (sent as CRLF, with one added when the text does not end with one); every other
    # character arrives as sent.
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
    """The block `[email] details_in_body` puts before the text, for agents whose mail client hides X- headers."""
    # Its own lines come first and no customer data can pass for one of them: each userData pair is on a line of
    # its own starting `userData[`, and every line boundary in a value (any str.splitlines knows, U+2028 and
    # U+2029 too) starts an indented continuation line; the customer's text follows the block's last line.
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
    marks: bytes = b""  # header lines a filter adds on top, as the relay gets them

    def mark(self, headers: list[tuple[str, str]], recipient: str = "") -> None:
        """Add `headers` on top of the email and, with `recipient`, send it there instead (the envelope only)."""
        self.marks += b"".join(header_line(name, value) for name, value in headers)
        rcpt_to = recipient or self.envelope.rcpt_to
        self.envelope = replace(self.envelope, rcpt_to=rcpt_to, size=self.size())

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
        size = len(self.marks) + len(wire) - sum(len(p) * wire.count(p) for p in self.placeholders)
        for attachment in self.placeholders.values():
            encoded = 4 * -(-attachment.size // 3)
            size += encoded + 2 * max(-(-encoded // 76) - 1, 0)
        return size

    def chunks(self) -> Iterator[bytes]:
        """The email as CRLF-terminated lines, with each attachment base64-encoded a block at a time."""
        # Every chunk starts at the beginning of a line or with CRLF, so that each can be dot-stuffed alone.
        wire = self.wire
        if self.marks:
            yield self.marks
        if not self.placeholders:
            yield wire
            return
        position = 0
        for match in PLACEHOLDER.finditer(wire):
            if match[0] in self.placeholders:
                yield wire[position:match.start()]
                yield from _base64_lines(self.placeholders[match[0]])
                position = match.end()
        yield wire[position:]


def _base64_lines(attachment: Attachment) -> Iterator[bytes]:
    """The attachment's bytes as base64 lines of 76 characters joined by CRLF, with no CRLF after the last."""
    attachment.stream.seek(0)
    separator = b""
    while block := attachment.stream.read(BASE64_BLOCK):
        encoded = binascii.b2a_base64(block, newline=False)  # one pass in C, then cut into lines
        yield separator + b"\r\n".join([encoded[i:i + 76] for i in range(0, len(encoded), 76)])
        separator = b"\r\n"


def compose(submission: Submission, interaction_id: str, service: ServiceOptions, smtp: SmtpOptions) -> OutgoingEmail:
    """Build the email with the headers of contract section 6, every attachment, and its envelope."""
    # MAIL FROM is `envelope_from` (also the Sender: header) or else the mailbox itself: never the customer.
    mail_from = smtp.envelope_from or submission.mailbox
    message = EmailMessage(policy=POLICY)
    name = f"{submission.first_name} {submission.last_name}"
    if service.from_header == "service":  # DMARC: the customer's domain may not be sent from another host
        message["From"] = header("From", name, smtp.envelope_from or submission.mailbox)
        message["Reply-To"] = header("Reply-To", name, submission.from_address)
    else:
        message["From"] = header("From", name, submission.from_address)
    fields = [("Sender", smtp.envelope_from), ("To", submission.mailbox), ("Subject", submission.subject),
              ("Date", _date()), ("Message-ID", f"<{interaction_id}@{message_id_domain(smtp, mail_from)}>"),
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
    envelope = Envelope(ehlo_name(smtp), mail_from, submission.mailbox, service.max_size)
    outgoing = OutgoingEmail(interaction_id, message, envelope)
    for attachment in submission.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        message.add_attachment(b"", maintype=maintype, subtype=subtype, filename=attachment.filename)
        placeholder = f"ATTACHMENT-{secrets.token_hex(16)}"
        *_, part = message.iter_parts()
        part.set_payload(placeholder)
        outgoing.placeholders[placeholder.encode()] = attachment
    if submission.attachments:
        # A random boundary of our own: the email package would search the whole message for its own with a regex
        # compiled for each message. Neither base64 nor quoted-printable can hold "=_", and 128 random bits cannot
        # be guessed by a customer's 7bit text.
        boundary = f'multipart/mixed; boundary="=_{secrets.token_hex(16)}"'
        message.replace_header("Content-Type", header("Content-Type", boundary))
    outgoing.envelope = replace(envelope, size=outgoing.size())
    return outgoing
