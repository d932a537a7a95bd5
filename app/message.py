"""Compose the email an agent receives from a validated submission."""
from __future__ import annotations

import secrets
import socket
import string
from email import policy
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import localtime

from app.options import ServiceOptions, SmtpOptions
from app.submission import Submission

ID_ALPHABET = string.digits + string.ascii_uppercase
HOST_NAME = socket.gethostname()  # read once: no look-up per request


def new_interaction_id() -> str:
    """A unique id of 16 characters of [0-9A-Z], shown to the client and carried by the email."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(16))


def helo_name(smtp: SmtpOptions) -> str:
    return smtp.helo_name or HOST_NAME


class _EncodedText(str):
    """Header text sent wholly as RFC 2047 encoded words.

    Used when the text itself looks like an encoded word (`=?...?=`), which a mail
    client would otherwise decode: encoding it makes it read back exactly as sent.
    The email package stores and folds any value with a `name` and a `fold()` as is.
    """

    def __new__(cls, name: str, text: str) -> _EncodedText:
        obj = super().__new__(cls, text)
        obj.name = name
        return obj

    def fold(self, *, policy: policy.Policy) -> str:
        encoded = Header(str(self), "utf-8", header_name=self.name).encode(linesep=policy.linesep)
        return f"{self.name}: {encoded}{policy.linesep}"


def _add_text_header(message: EmailMessage, name: str, text: str) -> None:
    message[name] = _EncodedText(name, text) if "=?" in text else text


def compose(submission: Submission, interaction_id: str, service: ServiceOptions, smtp: SmtpOptions) -> EmailMessage:
    """Build the email with the headers of contract section 6 and every attachment."""
    message = EmailMessage(policy=policy.SMTP)
    display_name = f"{submission.first_name} {submission.last_name}"
    message["From"] = Address(display_name=display_name, addr_spec=submission.from_address)
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
