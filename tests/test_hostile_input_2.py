"""Hostile input, round two: what an attacker found in the landed service, each reproduced first."""
from __future__ import annotations

import io
import json
import logging
import struct
import time
from email.header import decode_header, make_header

import pytest
from support import GOOD_FORM, TrickleHandler, codes, multipart, raw_header, zipped

from app.attachments import EOCD_SEARCH, content_matches
from app.logs import JsonFormatter


@pytest.fixture
def partner(options_file):
    options_file.write(email={"allowed_mailboxes": "*@partner.example"})


@pytest.mark.parametrize("mailbox", (
    "victim%evil.example@partner.example",  # the percent hack
    "evil.example!victim@partner.example",  # a bang path
    '"victim@evil.example"@partner.example',  # a quoted local part
    "@evil.example:victim@partner.example",  # a source route
))
def test_relay_tricks_in_a_requested_mailbox_are_383(partner, submit, smtp_server, mailbox):
    response = submit(mailbox=mailbox)
    assert response.status_code == 400 and codes(response) == [383]
    assert smtp_server.messages == []


def test_a_plain_address_under_an_allowed_domain_still_passes(partner, submit, smtp_server):
    assert submit(mailbox="claims@partner.example").get_json()["statusCode"] == 0
    assert smtp_server.messages[0].rcpt_tos == ["claims@partner.example"]


def _with_part_charset(charset: str, value: bytes) -> tuple[bytes, str]:
    body, content_type = multipart(list(GOOD_FORM.items()))
    body = body.replace(b'name="subject"\r\n', f'name="subject"\r\nContent-Type: text/plain; charset={charset}\r\n'
                        .encode())
    return body.replace(b"Invoice question", value), content_type


@pytest.mark.parametrize(("charset", "value"), (
    ("punycode", b"a" * 1000 + b"-" + b"9" * 1000),
    ("utf-7", b"A+2AA-B"),
    ("unicode_escape", b"\\ud800"),
    ("utf-16", b"\xff\xfeA\x00"),
    ("rot13", b"Vaibvpr"),
    ("x-unknown", b"Invoice"),
))
def test_only_four_part_charsets_are_read(client, smtp_server, charset, value):
    body, content_type = _with_part_charset(charset, value)
    response = client.post("/genesys/2/email/support", data=body, content_type=content_type)
    assert response.status_code == 400 and codes(response) == [604]
    assert smtp_server.messages == []


@pytest.mark.parametrize(("charset", "value", "subject"), (
    ("us-ascii", b"Invoice", "Invoice"), ("ISO-8859-1", b"Fa\xe7ture", "Façture"),
    ("windows-1252", b"\x80 5", "€ 5"), ("UTF-8", "Łukasz".encode(), "Łukasz"),
))
def test_the_four_part_charsets_are_read(client, smtp_server, charset, value, subject):
    body, content_type = _with_part_charset(charset, value)
    assert client.post("/genesys/2/email/support", data=body, content_type=content_type).get_json()["statusCode"] == 0
    assert smtp_server.messages[0].email["Subject"] == subject


def test_raw_utf8_in_an_urlencoded_body_is_read_as_utf8(client, smtp_server):
    fields = {**GOOD_FORM, "firstName": "José", "lastName": "Łukasz"}
    body = "&".join(f"{k}={v}" for k, v in fields.items()).encode("utf-8")
    response = client.post("/genesys/2/email/support", data=body, content_type="application/x-www-form-urlencoded")
    assert response.get_json()["statusCode"] == 0
    assert smtp_server.messages[0].email["X-Genesys-First-Name"] == "José"
    assert smtp_server.messages[0].email["X-Genesys-Last-Name"] == "Łukasz"


def test_backscatter_mail_from_is_the_mailbox_not_the_stranger(submit, smtp_server):
    submit(fromAddress="stranger@victim.example")
    received = smtp_server.messages[0]
    assert received.mail_from == "support@example.com"
    assert received.email["From"].addresses[0].addr_spec == "stranger@victim.example"
    assert received.email["Sender"] is None


def test_a_refused_mail_from_is_the_relay_refusing_the_service(submit, smtp_server):
    smtp_server.faults["MAIL"] = "553 5.7.1 sender rejected"
    response = submit()
    assert response.status_code == 200
    assert response.get_json()["statusCode"] == 2 and codes(response) == [613]


def test_mail_from_declares_the_size_when_the_relay_offers_size(submit, smtp_server):
    smtp_server.size_limit = 10_000_000
    submit(files=[("a.txt", b"x" * 5000)])
    [received] = smtp_server.messages
    declared = int(received.mail_options["SIZE"])
    assert abs(declared - len(received.raw)) <= 0.01 * len(received.raw)


def test_a_message_over_the_relays_advertised_size_is_202_before_any_data(submit, smtp_server):
    smtp_server.size_limit = 4000
    response = submit(files=[("a.txt", b"x" * 5000)])
    assert response.status_code == 400 and codes(response) == [202]
    assert response.get_json()["errors"][0]["advice"] == 10 * 1024 * 1024
    assert smtp_server.messages == [] and smtp_server.mail_commands == 0


def _zip_claiming(entries: int) -> bytes:
    """A small valid zip whose end-of-central-directory record claims `entries` entries."""
    data = bytearray(zipped(("a.txt", "x")))
    end = data.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", data, end + 8, entries, entries)
    return bytes(data)


class ReadsRecorded(io.BytesIO):
    """A spooled upload that records where each read started."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[int] = []

    def read(self, size: int | None = -1) -> bytes:
        self.reads.append(self.tell())
        return super().read(size)


def test_a_zip_claiming_too_many_entries_is_refused_before_its_directory_is_read(submit, smtp_server):
    archive = _zip_claiming(5000)
    assert codes(submit(files=[("many.zip", archive)])) == [203]
    stream = ReadsRecorded(archive)
    assert not content_matches("zip", stream)
    assert all(start >= len(archive) - EOCD_SEARCH for start in stream.reads)  # only the end record's search


def test_a_zip_with_a_huge_central_directory_is_refused(submit, smtp_server):
    data = bytearray(zipped(*((f"{i}.txt", "") for i in range(3000))))
    end = data.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", data, end + 8, 5, 5)  # under-declares its entries
    assert codes(submit(files=[("liar.zip", bytes(data))])) == [203]


@pytest.mark.parametrize("quote", ('"', "\\"))
def test_names_full_of_quotes_keep_the_from_line_under_998_octets(submit, smtp_server, quote):
    assert submit(firstName=quote * 256, lastName=quote * 256).get_json()["statusCode"] == 0
    raw = smtp_server.messages[0].raw
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    sent = str(make_header(decode_header(raw_header(raw, "From"))))  # as a mail client decodes it
    assert sent == f"{quote * 256} {quote * 256} <ana@example.com>"


@pytest.mark.parametrize(("name", "value"), (("userData[a=b]", "c"), ("userData", "a=b=c")))
def test_a_user_data_key_holding_an_equals_sign_is_refused_or_split(submit, smtp_server, name, value):
    response = submit(extra=[(name, value)])
    if name == "userData[a=b]":
        assert response.status_code == 400 and codes(response) == [606]
    else:
        assert smtp_server.messages[0].email["X-Genesys-User-Data"] == "a=b=c"


@pytest.mark.parametrize("mark", ("\u200e", "\u200f", "\u061c", "\u2066", "\u2067", "\u2068", "\u2069", "\u202e"))
def test_bidi_marks_are_refused_in_file_names_and_one_line_fields(submit, smtp_server, mark):
    assert codes(submit(files=[(f"invoice{mark}.pdf", b"%PDF-1.4\n")])) == [607]
    assert codes(submit(subject=f"Invoice{mark}")) == [601]
    assert smtp_server.messages == []


def test_log_lines_escape_unicode_line_breaks():
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "x\u2028y\x85z", None, None)
    line = JsonFormatter().format(record)
    assert line.isascii() and "\n" not in line
    assert json.loads(line)["message"] == "x\u2028y\x85z"


@pytest.mark.parametrize("stage", ("MAIL", "END"))
def test_a_relay_that_trickles_its_reply_is_cut_off_at_the_timeout(options_file, submit, stage, caplog):
    from aiosmtpd.controller import Controller
    from support import free_port

    timeout = 0.5
    handler = TrickleHandler(stage, every=timeout / 4)  # each byte well within the timeout, the reply far beyond it
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        options_file.write(smtp={"port": str(controller.port), "timeout": str(timeout)})
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="app"):
            response = submit()
        elapsed = time.monotonic() - started
    finally:
        controller.stop()
    assert response.get_json()["statusCode"] == 1
    assert elapsed / timeout <= 3.5  # one delivery never takes longer than timeout × 3
    assert any("ambiguous" in r.getMessage() for r in caplog.records) == (stage == "END")
