"""Run the service on this machine with an embedded SMTP server that keeps every email in a Maildir."""
from __future__ import annotations

import argparse
import logging
import mailbox
import re
import sys
from importlib import metadata
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from flask import Response

from app import create_app
from app.options import OptionsError

log = logging.getLogger("app.local")
CONTACT_FORM = Path(__file__).parent.parent / "examples" / "contact-form.html"


def contact_form() -> Response:
    """The example contact form, posting to this same service (so no CORS is needed)."""
    if not CONTACT_FORM.exists():
        return Response("The example form is not installed here.", 404, content_type="text/plain")
    page = re.sub(r'data-api-url="[^"]*"', 'data-api-url="/genesys/2/email/support"', CONTACT_FORM.read_text())
    return Response(page, content_type="text/html;charset=utf-8")


class MaildirHandler:
    """An aiosmtpd handler that stores each message it accepts as a file in a Maildir."""

    def __init__(self, path: Path) -> None:
        self.maildir = mailbox.Maildir(path, create=True)
        self.path = path

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Store the message and accept it."""
        key = self.maildir.add(envelope.original_content or b"")
        log.info("stored an email from %s to %s: %s", envelope.mail_from, ", ".join(envelope.rcpt_tos),
                 self.path / "new" / key)
        return "250 Message accepted for delivery"


def service_version() -> str:
    """The installed version of this service, as its package metadata says."""
    try:
        return metadata.version("gms-email-api")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    """Start the embedded SMTP server where [smtp] points, then the service on --host:--port."""
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--maildir", type=Path, default=Path("maildir"))
    parser.add_argument("--options", help="options file (default: $OPTIONS_FILE or options.ini)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {service_version()}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    try:
        app = create_app(args.options)
    except OptionsError as error:
        print("The service cannot start: options.ini has problems:", *error.problems, sep="\n  ", file=sys.stderr)
        return 1
    app.add_url_rule("/", view_func=contact_form)
    smtp = app.extensions["options"].current().smtp
    controller = Controller(MaildirHandler(args.maildir), hostname=smtp.host, port=smtp.port)
    controller.start()
    log.info("embedded SMTP server on %s:%d stores emails in %s/new", smtp.host, smtp.port, args.maildir)
    log.info("the example contact form is at http://%s:%d/", args.host, args.port)
    try:
        app.run(host=args.host, port=args.port, threaded=True)
    finally:
        controller.stop()
    return 0
