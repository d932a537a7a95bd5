"""Every header of the email is written here, past the email package's header parser (for speed, and where that
parser is wrong), by writers that refuse what could end a header line whatever their callers checked."""
from __future__ import annotations

import re
from email import policy
from email.charset import QP, Charset
from email.headerregistry import HeaderRegistry
from email.utils import quote

from app.rules import LINE_BREAK

UTF8_QP = Charset("utf-8")
UTF8_QP.body_encoding = QP
MAX_LINE = 998  # octets in a line, CRLF aside (RFC 5322)
ADDRESS = re.compile(r"[\x21-\x7e]+@[\x21-\x7e]+")  # an addr-spec already validated: no space, control or non-ASCII
ENCODED_WORD_BYTES = 36  # text bytes per encoded word: 48 characters of base64, a line under 78 columns


class HeaderInjection(ValueError):
    """A header value that would end its line or smuggle another: refused by the header writer itself."""


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


class _ComposingPolicy(policy.EmailPolicy):
    """The SMTP policy for the messages composed here, which set each header once by construction."""

    def header_max_count(self, name: str) -> None:
        # The email package would scan every header already set, for each header that may appear once.
        return None


# 7bit: a non-ASCII body is quoted-printable or base64, so the message passes any relay without 8BITMIME.
POLICY = _ComposingPolicy(linesep="\r\n", cte_type="7bit", header_factory=_CachedHeaderRegistry())


class _Prewritten(str):
    """A header value with its wire form: `EmailPolicy` stores and emits as it is any value that has a `name`
    and a `fold()` (the header-object protocol of `email.policy`), without parsing or refolding it."""

    name: str
    wire: str

    def __new__(cls, name: str, text: str, wire: str) -> _Prewritten:
        obj = super().__new__(cls, text)
        obj.name, obj.wire = name, wire
        return obj

    def fold(self, *, policy: policy.Policy) -> str:
        """The header as written here, whatever the policy."""
        return f"{self.name}: {self.wire}{policy.linesep}"


def header(name: str, text: str, address: str | None = None) -> str:
    """The value to store as header `name` so that a mail client reads `text` back exactly (contract section 6); with
    `address`, `text` is the display name of a mailbox header."""
    # The pre-written header protocol bypasses the email package's own guard: NUL, CR and LF are refused here.
    if "\0" in text:
        raise HeaderInjection(f"{name}: a NUL character")
    if address is not None:
        if LINE_BREAK.search(text) or not ADDRESS.fullmatch(address):
            raise HeaderInjection(f"{name}: a line break in the display name, or an address that is not one")
        # A quoted string when ASCII and short enough, else encoded words (a name full of quotes or backslashes
        # doubles when quoted).
        wire = f'"{quote(text)}" <{address}>'
        if not text.isascii() or "=?" in text or len(name) + 2 + len(wire) > MAX_LINE:
            wire = f"{_encoded_words(text)} <{address}>"
        return _Prewritten(name, f"{text} <{address}>", wire)
    # Text holding `=?` or a line break (anything str.splitlines breaks at) is written as encoded words: the email
    # package would decode the first and refuse the second.
    if "=?" in text or LINE_BREAK.search(text):
        return _Prewritten(name, text, _encoded_words(text))
    # Short ASCII is written as it is, also when only the header's name pushes it past 78 columns (the email
    # package would move it whole onto a second line, and its parser reads that back with a leading space).
    # Anything else (long or non-ASCII text) is left to the email package to fold and encode.
    if text.isascii() and (len(name) + 2 + len(text) <= 78 or len(text) < 78):
        return _Prewritten(name, text, text)
    return text


def _encoded_words(text: str) -> str:
    """`text` as RFC 2047 Q-encoded words of at most ENCODED_WORD_BYTES bytes each, joined by folds."""
    # One word per folded line, and every character a phrase cannot hold is encoded, so that a decoder joins them
    # back to exactly `text`, line breaks and all.
    words, piece = [], ""
    for character in text:
        if len((piece + character).encode()) > ENCODED_WORD_BYTES:
            words.append(UTF8_QP.header_encode(piece))
            piece = ""
        piece += character
    words.append(UTF8_QP.header_encode(piece))
    return "\r\n ".join(words)


def header_line(name: str, value: str) -> bytes:
    """One whole header line of short printable ASCII, as a filter adds it on top of an email."""
    line = f"{name}: {value}"
    if not re.fullmatch(r"[\x20-\x7e]{1,200}", line):
        raise HeaderInjection(f"{name}: not one short line of printable ASCII")
    return line.encode("ascii") + b"\r\n"
