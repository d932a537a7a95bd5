"""The local run's embedded SMTP server keeps every email it accepts in a Maildir."""
from __future__ import annotations

import logging
import mailbox
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger("app.local")


class MaildirHandler:
    """An aiosmtpd handler that stores each message it accepts as a file in a Maildir."""

    def __init__(self, path: Path) -> None:
        self.maildir = mailbox.Maildir(path, create=True)
        self.path = path

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Store the message, under the envelope's headers as a delivering server writes them, and accept it."""
        delivered = "".join(f"Delivered-To: {rcpt}\r\n" for rcpt in envelope.rcpt_tos)
        key = self.maildir.add(f"Return-Path: <{envelope.mail_from}>\r\n{delivered}".encode()
                               + (envelope.original_content or b""))
        log.info("stored an email from %s to %s: %s", envelope.mail_from, ", ".join(envelope.rcpt_tos),
                 self.path / "new" / key)
        return "250 Message accepted for delivery"
