"""Run the service on this machine with an embedded SMTP server that keeps every email in a Maildir, shown at
/mailbox/; or, with --relay, delivering to a real relay (Mailpit, Postfix, the contact center's)."""
from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import re
import socket
import sys
from pathlib import Path

from aiosmtpd.controller import Controller
from flask import Flask, Response

from app import create_app
from app.build import commit, version
from app.local import mailbox_view
from app.local.maildir import MaildirHandler
from app.options.checks import Invalid, clamd_address
from app.options.model import OptionsError
from app.store.folder import StateFolderError

log = logging.getLogger("app.local")
CONTACT_FORM = Path(__file__).parent.parent.parent / "examples" / "contact-form.html"


def contact_form() -> Response:
    """The example contact form, posting to this same service (so no CORS is needed)."""
    if not CONTACT_FORM.exists():
        return Response("The example form is not installed here.", 404, content_type="text/plain")
    page = re.sub(r'data-api-url="[^"]*"', 'data-api-url="/genesys/2/email/support"', CONTACT_FORM.read_text())
    return Response(page, content_type="text/html;charset=utf-8")


LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_PATTERN = re.compile(rf"{LABEL}(?:\.{LABEL})*")  # ASCII host names and IPv4 addresses


def relay_address(text: str) -> tuple[str, int]:
    """HOST:PORT, or [IPv6]:PORT, as --relay takes it: an ASCII host name or address and a port of ASCII digits."""
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            valid_host = ipaddress.ip_address(host).version == 6
        except ValueError:
            valid_host = False
    else:
        valid_host = bool(HOST_PATTERN.fullmatch(host))  # an IPv6 address without brackets is ambiguous: refused
    if not colon or not valid_host or not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT or [IPv6]:PORT, such as localhost:1025 or [::1]:25, "
                                         f"not {text!r}")
    return host, int(port)


def clamd_argument(text: str) -> str:
    """--clamd as [scan] clamd takes it: an absolute socket path or HOST:PORT."""
    try:
        address = clamd_address(text)
    except Invalid:
        address = ""
    if not address:
        raise argparse.ArgumentTypeError(f"expected clamd's socket path or HOST:PORT, not {text!r}")
    return address


def local_app(options: str | None, maildir: Path, relay: tuple[str, int] | None = None,
              clamd: str | None = None, captured: bool | None = None) -> Flask:
    """The service with the local run's own pages: the example form at / and the captured mail at /mailbox/."""
    # `relay` replaces [smtp]'s host and port; unless `captured` says the embedded server listens there (the
    # default without a relay), the mailbox page says that mail goes to that relay.
    app = create_app(options, relay, clamd)
    app.add_url_rule("/", view_func=contact_form)
    elsewhere = relay is not None and not captured
    mailbox_view.register(app, maildir, f"{relay[0]}:{relay[1]}" if relay and elsewhere else "")
    return app


def main(argv: list[str] | None = None) -> int:
    """Start the embedded SMTP server where [smtp] points (unless --relay), then the service on --host:--port."""
    parser = argparse.ArgumentParser(
        prog="python -m app", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="other command:\n  python -m app check [FILE]  validate an options file (default: $OPTIONS_FILE or "
               "options.ini) and exit,\n                              touching nothing (exit 1 and every problem, or "
               "0 and a summary)")
    parser.add_argument("--host", default="127.0.0.1", help="address the service listens on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port of the service (default: %(default)s)")
    parser.add_argument("--maildir", type=Path, default=Path("maildir"),
                        help="folder where the embedded SMTP server keeps every email (default: ./%(default)s)")
    parser.add_argument("--smtp-port", type=int, metavar="PORT",
                        help="port of the embedded SMTP server, in place of [smtp] port (default: options.ini's, "
                             "2525 as shipped)")
    parser.add_argument("--options", help="options file (default: $OPTIONS_FILE or options.ini)")
    parser.add_argument("--relay", type=relay_address, metavar="HOST:PORT",
                        help="deliver to this SMTP relay (the rest of [smtp] still applies) instead of the "
                             "embedded server")
    parser.add_argument("--clamd", type=clamd_argument, metavar="SOCKET|HOST:PORT",
                        help="scan every attachment with this ClamAV daemon (in place of [scan] clamd)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()} (commit {commit()})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    embedded = ("127.0.0.1", args.smtp_port) if args.smtp_port and args.relay is None else None
    try:
        app = local_app(args.options, args.maildir, args.relay or embedded, args.clamd, captured=args.relay is None)
    except OptionsError as error:
        print("The service cannot start: options.ini has problems:", *error.problems, sep="\n  ", file=sys.stderr)
        return 1
    except StateFolderError as error:
        print(f"The service cannot start: {error}.", file=sys.stderr)
        return 1
    controller = None
    if args.relay is None:
        smtp = app.extensions["options"].current().smtp
        controller = Controller(MaildirHandler(args.maildir), hostname=smtp.host, port=smtp.port)
        try:
            # aiosmtpd reports a port it cannot bind only after its 5 s start-up timeout: try it at once first
            socket.create_server((smtp.host, smtp.port)).close()
            controller.start()
        except OSError as error:
            taken = (" — another local run, or another SMTP server, holds that port: stop it, or give this run "
                     "its own ports with --smtp-port and --port") if error.errno == errno.EADDRINUSE else ""
            print(f"The embedded SMTP server cannot listen on {smtp.host}:{smtp.port} ([smtp] host and port): "
                  f"{error.strerror or error}{taken}", file=sys.stderr)
            return 1
        log.info("embedded SMTP server on %s:%d stores emails in %s/new", smtp.host, smtp.port, args.maildir)
    else:
        log.info("delivering to the relay %s:%d (no embedded SMTP server)", *args.relay)
    log.info("the example contact form is at http://%s:%d/, the mailbox at http://%s:%d/mailbox/",
             args.host, args.port, args.host, args.port)
    try:
        app.run(host=args.host, port=args.port, threaded=True)
    finally:
        if controller is not None:
            controller.stop()
    return 0
