"""The rules that more than one stage applies, each defined once: which characters may stand where, and which
addresses may be a mailbox (the open-relay guard of contract section 5)."""
from __future__ import annotations

import re
import socket

from email_validator import validate_email

# The format characters that reorder or hide text, so that "evil\u202efdp.exe" shows as "evilexe.pdf": bidi
# marks, embeddings, overrides and isolates.
TEXT_DIRECTION = "\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069"
# Every line boundary str.splitlines knows.
LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_C0_BUT_TAB, _DEL_C1, _UNICODE_LINE_BREAKS = "\x00-\x08\x0a-\x1f", "\x7f-\x9f", "\u2028\u2029"

# Anything that could end or bend a line: C0 (TAB too), DEL, C1, Unicode line breaks, text-direction marks.
# Refused in file names and options values.
CONTROL = re.compile(f"[\t{_C0_BUT_TAB}{_DEL_C1}{_UNICODE_LINE_BREAKS}{TEXT_DIRECTION}]")
# The same, TAB aside (it is whitespace): refused in the one-line fields and userData keys.
CONTROL_BUT_TAB = re.compile(f"[{_C0_BUT_TAB}{_DEL_C1}{_UNICODE_LINE_BREAKS}{TEXT_DIRECTION}]")
# In a userData value, which may hold line breaks and TABs (Widgets 9.x send textareas as userData): other C0,
# DEL, C1.
CONTROL_IN_VALUE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
LINE_BREAK = re.compile(f"[{LINE_BREAKS}]")
ANY_LINE_END = re.compile(f"\r\n|[{LINE_BREAKS}]")  # CRLF as one
LINE_END = re.compile(r"\r\n|\r|\n")  # what a text body's lines end with (contract section 6)
# "=?" is valid in an address's local part, but mail clients decode it as an RFC 2047 word and show another
# address (or none) than the one the email was sent to or from.
ENCODED_WORD_START = "=?"


def mailbox_address(value: str) -> str:
    """A mailbox's address in ASCII form; raises EmailNotValidError. Unlike a customer's, it may be internal."""
    address = validate_email(value, check_deliverability=False, allow_smtputf8=False, globally_deliverable=False)
    return address.ascii_email or address.normalized  # ASCII: SMTPUTF8 is not allowed


def mailbox_allowed(mailbox: str, as_sent: str, configured: frozenset[str], allowed: tuple[str, ...]) -> bool:
    """Whether a request may name `mailbox` (`as_sent` as the request wrote it): one of the `configured` mailboxes,
    or matching an `allowed` address or `*@domain` with a local part no relay routes onward."""
    # Refused under `*@domain`: the percent hack, bang paths, quoting and source routes (relays honour them), and
    # `=?` anywhere (mail clients decode it).
    wanted = mailbox.lower()
    if ENCODED_WORD_START in wanted:
        return False
    if wanted in configured:
        return True
    local, _, domain = wanted.rpartition("@")
    if any(mark in local for mark in '%!@"') or as_sent.lstrip().startswith(("@", "<")) or '"' in as_sent:
        return False
    return any(pattern == wanted or pattern == f"*@{domain}" for pattern in allowed)


# This host's names, read once (a DNS look-up per request would hold a form up): its name and its fully qualified
# name as the resolver gives it.
HOST_NAMES = (socket.gethostname(), socket.getfqdn())
LOCAL_NAMES = ("localhost", "localdomain", "local")  # names with a dot that are no domain of this host's


def qualified_host_name() -> str:
    """This host's name when it is fully qualified (it has a dot), else "": the Message-ID's domain must never be a
    bare host name, which spam filters score (rspamd's MID_RHS_NOT_FQDN)."""
    for name in HOST_NAMES:
        labels = name.lower().split(".")
        if len(labels) > 1 and all(labels) and labels[0] not in LOCAL_NAMES and labels[-1] not in LOCAL_NAMES:
            return name
    return ""


def host_and_port(address: str) -> tuple[str, int]:
    """A checked `host:port` or `[IPv6]:port` option value as a socket address."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)
