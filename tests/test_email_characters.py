"""Every character class of contract section 6, through the function that writes the email's headers and body.

`app.message.header` is the one place the email is written past the email package's own header parser; each
case here composes an email, writes it out, and reads it back with the email package's parser as a mail client
would: the value must come back exactly, every line must be 7-bit and at most 998 octets, and no header line may
be empty (which would end the header block early).
"""
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import parseaddr

import pytest
from support import raw_header

from app.mail.headers import header
from app.mail.message import compose
from app.options.load import options_from_bytes
from app.submission import Submission

OPTIONS = options_from_bytes(b"[email]\nmailbox = support@example.com\ntenant = Environment\n", "options.ini")
FORM = {"service": "support", "first_name": "Ana", "last_name": "Lee", "subject": "Invoice question",
        "from_address": "ana@example.com", "text": "Hello", "mailbox": "support@example.com"}

UNSTRUCTURED = {
    "short ASCII": "Invoice question",
    "long ASCII with spaces": " ".join(["word"] * 199),
    "long ASCII without a space": "s" * 998,
    "punctuation, quotes and backslashes": 'A "quoted" \\ back\\slash, (comment) <angle> ; colon: @at',
    "Latin-1 letters": "Facture n°17 — déjà payée",
    "CJK": "請求書について" * 40,
    "astral plane": "Order 🧾 arrived 📦 broken 💔",
    "looks like an encoded word": "=?utf-8?q?hi?=",
    "an encoded word inside text": "see =?iso-8859-1?b?w6k=?= here",
    "leading and inner spaces": "a  b   c",
    "tab": "a\tb",
}
LINE_BREAKS = {  # userData values only: the one-line fields refuse them (601)
    "CRLF": "line one\r\nline two",
    "LF": "line one\nline two",
    "CR": "line one\rline two",
    "blank lines": "\r\n\r\nafter blank lines\r\n",
    "a header to smuggle": "v\r\nBcc: victim@example.org\r\n\r\nbody",
    "line separators and bidi marks": "a\u2028b\u2029c\u200fd\u202ee",
    "encoded-word look-alike and a line break": "=?utf-8?q?x?=\nlooks encoded",
    "long, non-ASCII, multi-line": ("é" * 300 + "\n") * 4,
}
BODIES = {
    "ASCII": "Hello,\nmy invoice is wrong.",
    "CRLF, CR and LF": "crlf\r\ncr\rlf\nend",
    "form feed and vertical tab": "page one\fpage two\vvertical",
    "NEL, LINE and PARAGRAPH SEPARATOR": "nel\x85line\u2028para\u2029end",
    "C0 separators": "fs\x1cgs\x1drs\x1eus\x1f",
    "a line longer than 998 octets": "x" * 3000,
    "non-ASCII": "Bonjour, ça va ? 日本語 🧾",
    "dots and From at line starts": ".\n..\nFrom me\n. a",
    "trailing spaces and tabs": "spaces   \ntab\t\nend",
    "blank lines": "\n\n\nafter\n\n",
}


def written(**changes) -> bytes:
    """The email composed from the known-good form with `changes`, as handed to SMTP."""
    submission = Submission(**{**FORM, **changes})
    return compose(submission, "ABCDEFGHIJKLMNOP", OPTIONS.service("support"), OPTIONS.smtp).wire


def read_back(raw: bytes) -> EmailMessage:
    """Check the wire form any relay takes, and parse it as a mail client does."""
    assert max(raw) < 128
    header_block, _, _ = raw.partition(b"\r\n\r\n")
    assert all(line.strip() and len(line) <= 998 for line in header_block.split(b"\r\n"))
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    return message_from_bytes(raw, policy=policy.default)


@pytest.mark.parametrize("text", UNSTRUCTURED.values(), ids=UNSTRUCTURED.keys())
def test_one_line_fields_read_back_exactly(text):
    email = read_back(written(subject=text, first_name=text, user_data=[("key", text)]))
    assert email["Subject"] == text
    assert email["X-Genesys-First-Name"] == text
    assert email.get_all("X-Genesys-User-Data") == [f"key={text}"]


@pytest.mark.parametrize("name", UNSTRUCTURED.values(), ids=UNSTRUCTURED.keys())
def test_the_customer_name_reads_back_exactly_as_the_sender(name):
    raw = written(first_name=name, last_name="Lee")
    assert read_back(raw)["From"].addresses[0].addr_spec == "ana@example.com"
    # An RFC 2047 decoder, as mail clients have (Python's address parser keeps the spaces between encoded words)
    assert parseaddr(str(make_header(decode_header(raw_header(raw, "From"))))) == (f"{name} Lee", "ana@example.com")


@pytest.mark.parametrize("value", LINE_BREAKS.values(), ids=LINE_BREAKS.keys())
def test_user_data_values_keep_their_line_breaks_and_add_no_header(value):
    email = read_back(written(user_data=[("note", value), ("after", "1")]))
    assert email.get_all("X-Genesys-User-Data") == [f"note={value}", "after=1"]
    assert email["Bcc"] is None and email.get_content() == "Hello\r\n"


@pytest.mark.parametrize("text", BODIES.values(), ids=BODIES.keys())
def test_the_text_arrives_as_sent_with_crlf_line_ends(text):
    email = read_back(written(text=text))
    assert email.get_content_type() == "text/plain" and email.get_content_charset() == "utf-8"
    sent = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")
    assert email.get_content() == (sent if sent.endswith("\r\n") else sent + "\r\n")


@pytest.mark.parametrize("text", [text for kind, text in UNSTRUCTURED.items() if "encoded word" not in kind],
                         ids=[kind for kind in UNSTRUCTURED if "encoded word" not in kind])
def test_the_fast_path_reads_back_as_the_email_package_would_write_it(text):
    """Where the email package's own header writer is right, ours reads back the same."""
    ours, theirs = EmailMessage(policy=policy.SMTP), EmailMessage(policy=policy.SMTP)
    ours["Subject"], theirs["Subject"] = header("Subject", text), text
    parsed = [message_from_bytes(email.as_bytes(), policy=policy.default)["Subject"] for email in (ours, theirs)]
    assert parsed[0] == parsed[1] == text
