"""The local run's mailbox: every email its embedded SMTP server kept, shown as the contact center receives it
(registered by `python -m app` only, never by wsgi:app)."""
# Pages are Jinja templates (every value escaped) under a Content-Security-Policy that runs no script, since an
# email's every byte came from a stranger.
from __future__ import annotations

import mailbox
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from functools import cached_property
from io import BytesIO
from pathlib import Path

from flask import Blueprint, Flask, Response, abort, current_app, render_template, send_file

from app.rules import CONTROL
from app.web.responses import page_headers

bp = Blueprint("mailbox", __name__, url_prefix="/mailbox", template_folder="templates")
PARSER = BytesParser(policy=policy.default)
LISTED = 500  # the newest emails the list shows
MAX_HEAD = 256 * 1024  # bytes of header block read for the list


@dataclass
class File:
    """An attached file: its position (from 1), name, type and bytes."""

    number: int
    name: str
    content_type: str
    content: bytes


@dataclass
class Listed:
    """One email of the list, read as far as its headers (and its parts' boundaries, counted, never kept)."""

    key: str
    received: datetime
    email: EmailMessage  # the headers only
    attachment_count: int

    @property
    def id(self) -> str:
        """The interaction id, which the client was given; the Maildir key for an email without one."""
        return str(self.email.get("X-Genesys-Interaction-Id") or self.key)


@dataclass
class Captured:
    """One email in the Maildir: its key, when it arrived, its bytes and its parsed form."""

    key: str
    received: datetime
    raw: bytes
    email: EmailMessage

    @property
    def id(self) -> str:
        """The interaction id, which the client was given; the Maildir key for an email without one."""
        return str(self.email.get("X-Genesys-Interaction-Id") or self.key)

    @cached_property
    def attachments(self) -> list[File]:
        """The attached files, in order, under names with no control character (a stranger chose them)."""
        files = []
        for number, part in enumerate(self.email.iter_attachments(), 1):
            content = part.get_payload(decode=True)
            name = CONTROL.sub("_", part.get_filename() or "") or f"attachment-{number}"
            files.append(File(number, name, part.get_content_type(), content if isinstance(content, bytes) else b""))
        return files

    @property
    def user_data(self) -> list[tuple[str, str]]:
        """The userData pairs, decoded, in request order."""
        return [tuple(str(value).partition("=")[::2])  # type: ignore[misc]
                for value in self.email.get_all("X-Genesys-User-Data") or []]

    @property
    def text(self) -> str:
        """The body's text, as an agent reads it; in a charset Python does not know, as UTF-8 with replacements."""
        body = self.email.get_body(("plain",))
        if body is None:
            return ""
        try:
            return str(body.get_content())
        except (LookupError, UnicodeError):
            payload = body.get_payload(decode=True)
            return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""


def register(app: Flask, maildir: Path, relay: str = "") -> None:
    """Serve the Maildir at /mailbox/; `relay` names where email goes instead, when it is not captured here."""
    app.config["MAILDIR"], app.config["RELAY"] = maildir, relay
    app.register_blueprint(bp)


def _maildir() -> mailbox.Maildir:
    return mailbox.Maildir(current_app.config["MAILDIR"], factory=None, create=True)


def _delivered_at(key: str) -> datetime:
    """When the email arrived: a Maildir name starts with its delivery time in seconds (then .M<microseconds>)."""
    seconds, _, rest = key.partition(".")
    micro = re.match(r"M(\d{1,6})", rest)
    try:
        return datetime.fromtimestamp(int(seconds) + (int(micro[1]) / 1e6 if micro else 0))
    except (ValueError, OverflowError, OSError):
        return datetime.fromtimestamp(0)


def _lines_that_are(marker: bytes, read: Callable[[int], bytes]) -> int:
    """How many of the lines `read` gives are `marker` (ended by CRLF or LF), read a block at a time."""
    count, rest = 0, b""
    while block := read(1 << 16):
        lines = (rest + block).split(b"\n")
        rest = lines.pop()  # the line the next block goes on with
        count += lines.count(marker) + lines.count(marker + b"\r")
    return count + (rest.rstrip(b"\r") == marker)


def _listed(box: mailbox.Maildir, key: str) -> Listed:
    """Read an email's headers, then only count its top-level parts' boundaries line by line."""
    with box.get_file(key) as file:
        head = b""
        for line in file:
            head += line
            if line in (b"\r\n", b"\n") or len(head) > MAX_HEAD:
                break
        headers = PARSER.parsebytes(head, headersonly=True)
        boundary = headers.get_boundary() if headers.get_content_maintype() == "multipart" else None
        parts = _lines_that_are(b"--" + boundary.encode("ascii", "replace"), file.read) if boundary else 0
    return Listed(key, _delivered_at(key), headers, max(parts - 1, 0))  # the first part is the text


def _captured(box: mailbox.Maildir, key: str) -> Captured:
    raw = box.get_bytes(key)
    return Captured(key, _delivered_at(key), raw, PARSER.parsebytes(raw))


def _find(email_id: str) -> Captured:
    box = _maildir()
    if email_id in box:
        return _captured(box, email_id)
    for key in box.iterkeys():
        if _listed(box, key).id == email_id:
            return _captured(box, key)
    abort(404)


@bp.after_request
def no_scripts(response: Response) -> Response:
    """Every page and file of the mailbox: no script runs, nothing is sniffed, nothing is framed."""
    return page_headers(response, "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
                                  "frame-ancestors 'none'")


@bp.get("/")
def index() -> str:
    """The captured emails, newest first."""
    box = _maildir()
    emails = sorted((_listed(box, key) for key in box.iterkeys()), key=lambda c: c.received, reverse=True)
    return render_template("mailbox/list.html", emails=emails[:LISTED], total=len(emails),
                           relay=current_app.config["RELAY"])


@bp.get("/<email_id>")
def show(email_id: str) -> str:
    """One email: its headers, decoded userData pairs, text, attachments and source."""
    captured = _find(email_id)
    return render_template("mailbox/email.html", captured=captured, email=captured.email,
                           source=captured.raw.decode("ascii", "replace"))


@bp.get("/<email_id>/raw")
def raw(email_id: str) -> Response:
    """The email as it was received, byte for byte."""
    return Response(_find(email_id).raw, content_type="text/plain; charset=us-ascii")


@bp.get("/<email_id>/attachments/<int:number>")
def attachment(email_id: str, number: int) -> Response:
    """The attachment at position `number` (from 1), downloaded under its own name."""
    attachments = _find(email_id).attachments
    if not 1 <= number <= len(attachments):
        abort(404)
    file = attachments[number - 1]
    return send_file(BytesIO(file.content), as_attachment=True, download_name=file.name, mimetype=file.content_type)
