"""The form reader (`read_form`) on its own, without Flask: what it makes of a body, however the body arrives, and
how it refuses one — the first stage below the view."""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
import urllib.parse

import pytest
from support import GOOD_FORM, PDF, PNG, multipart

from app.errors import ApiError
from app.form import ALLOWANCE, Form, read_form
from app.options.load import load_options

PARTS = [*GOOD_FORM.items(), ("userData", "order=A-17"), ("userData[note]", "x=y"), ("userData", "order=B-2"),
         ("files", ("invoice.pdf", PDF)), ("files", ("pixel.png", PNG))]


def spooled_files() -> set[tuple[str, str]]:
    """This process's open files that are nameless files in the temporary folder, as a spooled upload is. Other
    threads (servers of earlier tests being collected) open and close their sockets meanwhile: only these count."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            continue  # closed since it was listed
        if target.startswith(tempfile.gettempdir()) and target.endswith("(deleted)"):
            found.add((fd, target))
    return found


class Trickle(io.RawIOBase):
    """A body that arrives a few bytes per read, as from a slow client."""

    def __init__(self, body: bytes, every: int = 7) -> None:
        self.body, self.every = io.BytesIO(body), every

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self.body.read(min(self.every, size if size >= 0 else self.every))


class Unread(io.RawIOBase):
    """A body that must not be read."""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        raise AssertionError("the body was read")


@pytest.fixture
def service(options_file):
    """The support service's options (max_size 10 MiB, max_files 5)."""
    return load_options(options_file.path).service("support")


def read(body: bytes, content_type: str, service, stream=None, length: int | None = None) -> Form:
    return read_form(stream or io.BytesIO(body), content_type, len(body) if length is None else length, service)


def codes(raised) -> list[int]:
    return [problem.code for problem in raised.value.problems]


@pytest.mark.parametrize("arrival", ("at once", "a few bytes a read"))
def test_fields_keep_their_order_and_files_are_spooled_whole_and_hashed(service, arrival):
    body, content_type = multipart(PARTS)
    with read(body, content_type, service, stream=Trickle(body) if arrival != "at once" else None) as form:
        assert form.fields == [(name, value) for name, value in PARTS if isinstance(value, str)]
        uploads = [(u.field, u.filename, u.stream.read(), u.size, u.sha256) for u in form.uploads]
        assert uploads == [("files", "invoice.pdf", PDF, len(PDF), hashlib.sha256(PDF).hexdigest()),
                           ("files", "pixel.png", PNG, len(PNG), hashlib.sha256(PNG).hexdigest())]
    assert all(upload.stream.closed for upload in form.uploads)  # the context frees the spooled files


def test_a_file_part_without_a_file_name_is_no_upload(service):
    body, content_type = multipart([*GOOD_FORM.items(), ("files", ("", b""))])
    with read(body, content_type, service) as form:
        assert form.uploads == []


@pytest.mark.parametrize(("charset", "encoded"), (("utf-8", "Zo%C3%AB"), ("iso-8859-1", "Zo%EB"),
                                                  ("windows-1252", "Zo%EB")))
def test_an_urlencoded_form_is_read_in_its_charset(service, charset, encoded):
    body = urllib.parse.urlencode(GOOD_FORM).encode() + b"&firstName=" + encoded.encode()
    with read(body, f"application/x-www-form-urlencoded; charset={charset}", service) as form:
        assert form.fields[-1] == ("firstName", "Zoë")


def test_a_content_length_over_the_limit_is_202_before_the_body_is_read(service):
    with pytest.raises(ApiError) as raised:
        read(b"", "multipart/form-data; boundary=b", service, stream=Unread(), length=50 * 1024 * 1024)
    assert codes(raised) == [202] and raised.value.headers == {"Connection": "close"}
    assert raised.value.problems[0].advice == service.max_size


def test_a_body_longer_than_it_said_is_202_once_over_the_limit_and_frees_its_files(service):
    body, content_type = multipart([*GOOD_FORM.items(), ("files", ("big.pdf", PDF + b"\0" * (11 * 1024 * 1024)))])
    before = spooled_files()
    with pytest.raises(ApiError) as raised:
        read(body, content_type, service, length=0)  # chunked, or a Content-Length that lied
    assert codes(raised) == [202]
    assert spooled_files() <= before  # the file spooled to disk so far is closed


@pytest.mark.parametrize(("content_type", "body", "code"), (
    ("text/plain", b"firstName=Ana", 605),
    (None, b"firstName=Ana", 605),
    ("multipart/form-data", b"", 604),
    ("multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; name="text"\r\n\r\nHello', 604),
    ("application/x-www-form-urlencoded; charset=utf-7", b"firstName=Ana", 604),
    ("application/x-www-form-urlencoded", b"firstName=%FF", 604),
    ("application/x-www-form-urlencoded", b"text=" + b"x" * ALLOWANCE, 603),
    ("application/x-www-form-urlencoded", b"&".join([b"a=1"] * 1001), 603),
), ids=("other type", "no type", "no boundary", "cut short", "utf-7", "bad utf-8", "fields too large",
        "too many fields"))
def test_a_body_it_cannot_read_is_one_clear_error(service, content_type, body, code):
    with pytest.raises(ApiError) as raised:
        read(body, content_type, service)
    assert codes(raised) == [code]
