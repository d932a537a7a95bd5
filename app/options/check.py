"""`python -m app check [OPTIONS_FILE]`: validate an options file before a reload or a restart, touching nothing."""
from __future__ import annotations

import os
import sys

from app.options.load import load_options
from app.options.model import Options, OptionsError
from app.rules import HOST_NAMES, qualified_host_name


def summary(options: Options) -> str:
    """One line saying what a valid file configures, without any secret."""
    services = ", ".join(f"{s.name} → {s.mailbox}" for s in (options.catch_all, *options.services.values()))
    smtp = options.smtp
    relay = f"{smtp.host}:{smtp.port} ({smtp.security}{', AUTH' if smtp.username else ''})"
    admin = "on" if options.admin.username else "off"
    return (f"services: {services}; relay: {relay}; API keys: {len(options.security.api_keys)}; "
            f"CORS origins: {len(options.cors.allowed_origins)}; admin API: {admin}; "
            f"virus scan: {'clamd at ' + options.scan.clamd if options.scan.clamd else 'off'}")


def main(argv: list[str]) -> int:
    """Print every problem of the file (exit 1) or a one-line summary of what it configures (exit 0)."""
    if argv[:1] in (["-h"], ["--help"]) or len(argv) > 1:
        print("usage: python -m app check [OPTIONS_FILE]   (default: $OPTIONS_FILE or options.ini)", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    path = argv[0] if argv else os.environ.get("OPTIONS_FILE", "options.ini")
    try:
        options = load_options(path)
    except OptionsError as error:
        print(f"{path} has problems:", *error.problems, sep="\n  ")
        return 1
    print(f"{path} is valid: {summary(options)}")
    if not options.smtp.helo_name and not qualified_host_name():
        print(f"warning: [smtp] helo_name is unset and this host's name ({HOST_NAMES[0]}) is not fully qualified: "
              "the Message-ID takes the envelope sender's domain; set helo_name to this host's public name",
              file=sys.stderr)
    return 0
