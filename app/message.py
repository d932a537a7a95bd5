"""Compose the email an agent receives from a validated submission."""
from __future__ import annotations

import secrets
import socket
import string
from email import policy
from email.header import Header
from email.message import EmailMessage
from email.utils import localtime, quote

from app.options import ServiceOptions, SmtpOptions
from app.submission import Submission

ID_ALPHABET = string.digits + string.ascii_uppercase
HOST_NAME = socket.gethostname()  # read once: no look-up per request


def new_interaction_id() -> str:
    """A unique id of 16 characters of [0-9A-Z], shown to the client and carried by the email."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(16))


def helo_name(smtp: SmtpOptions) -> str:
    return smtp.helo_name or HOST_NAME


class _FoldedHeader(str):
    """A header whose wire form this module writes itself, for two cases the email package gets wrong.

    Text that looks like an encoded word (`=?...?=`) would be decoded by a reader, and a
    long non-ASCII display name comes out with spaces moved; encoded words written here
    read back exactly. The email package stores and emits any value with a `name` and a
    `fold()` as it is.
    """

    def __new__(cls, name: str, text: str, wire: str) -> _FoldedHeader:
        obj = super().__new__(cls, text)
        obj.name, obj.wire = name, wire
        return obj

    def fold(self, *, policy: policy.Policy) -> str:
        return f"{self.name}: {self.wire}{policy.linesep}"


def _encoded_words(name: str, text: str) -> str:
    return Header(text, "utf-8", header_name=name).encode(linesep="\r\n")


def _add_text_header(message: EmailMessage, name: str, text: str) -> None:
    message[name] = _FoldedHeader(name, text, _encoded_words(name, text)) if "=?" in text else text


def _from_header(display_name: str, address: str) -> _FoldedHeader:
    """`"First Last" <address>`: a quoted string when ASCII, else encoded words folded under 78 columns."""
    if display_name.isascii() and "=?" not in display_name:
        wire = f'"{quote(display_name)}" <{address}>'
    else:
        wire = f"{_encoded_words('From', display_name)} <{address}>"
    return _FoldedHeader("From", f"{display_name} <{address}>", wire)


def compose(submission: Submission, interaction_id: str, service: ServiceOptions, smtp: SmtpOptions) -> EmailMessage:
    """Build the email with the headers of contract section 6 and every attachment."""
    message = EmailMessage(policy=policy.SMTP)
    display_name = f"{submission.first_name} {submission.last_name}"
    message["From"] = _from_header(display_name, submission.from_address)
    if smtp.envelope_from:
        message["Sender"] = smtp.envelope_from
    message["To"] = submission.mailbox
    _add_text_header(message, "Subject", submission.subject)
    message["Date"] = localtime()
    message["Message-ID"] = f"<{interaction_id}@{helo_name(smtp)}>"
    message["X-Genesys-Interaction-Id"] = interaction_id
    message["X-Genesys-Service"] = submission.service
    if service.tenant:
        _add_text_header(message, "X-Genesys-Tenant", service.tenant)
    _add_text_header(message, "X-Genesys-First-Name", submission.first_name)
    _add_text_header(message, "X-Genesys-Last-Name", submission.last_name)
    for key, value in submission.user_data:
        _add_text_header(message, "X-Genesys-User-Data", f"{key}={value}")
    message.set_content(submission.text, charset="utf-8")
    for attachment in submission.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        attachment.stream.seek(0)
        message.add_attachment(attachment.stream.read(), maintype=maintype, subtype=subtype,
                               filename=attachment.filename)
    return message
