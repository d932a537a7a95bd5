"""Attachments (contract section 3): limits, types, content, names, and bytes that arrive intact."""
import io
import struct

import pytest
from support import PDF, PNG, codes, zipped

from app.attachments import EOCD_SEARCH, content_matches

GIF = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"
JPG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 32
BMP = b"BM" + b"\x00" * 60
DOC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 504 + b"\xec\xa5\xc1\x00" + b"\x00" * 100


def _zip() -> bytes:
    return zipped(("a.txt", "hello"))


def attachments(received):
    return [(part.get_filename(), part.get_content_type(), part.get_payload(decode=True))
            for part in received.email.iter_attachments()]


def test_attachments_arrive_byte_identical_with_types_from_the_extension(submit, smtp_server):
    files = [("invoice.pdf", PDF), ("pixel.PNG", PNG), ("a.gif", GIF), ("photo.jpg", JPG), ("b.bmp", BMP),
             ("letter.doc", DOC), ("archive.zip", _zip()), ("notes.txt", "naïve text\r\n".encode("cp1252"))]
    response = submit(files=files, extra=[("files[]", ("more.pdf", PDF))])
    assert response.get_json()["statusCode"] == 0
    assert attachments(smtp_server.messages[0]) == [
        ("more.pdf", "application/pdf", PDF), ("invoice.pdf", "application/pdf", PDF),
        ("pixel.PNG", "image/png", PNG), ("a.gif", "image/gif", GIF),
        ("photo.jpg", "image/jpeg", JPG), ("b.bmp", "image/bmp", BMP), ("letter.doc", "application/msword", DOC),
        ("archive.zip", "application/zip", _zip()), ("notes.txt", "text/plain", "naïve text\r\n".encode("cp1252")),
    ]


def test_too_many_files_is_201_with_the_limit(submit, smtp_server):
    response = submit(service="sales", files=[(f"f{i}.pdf", PDF) for i in range(4)])
    assert response.status_code == 400
    assert response.get_json()["errors"] == [
        {"code": 201, "message": "At most 3 files may be attached.", "advice": 3, "field": "files"}]
    assert smtp_server.messages == []


def test_attachments_over_max_size_are_202_with_the_limit_in_bytes(options_file, submit, smtp_server):
    options_file.write(email={"max_size": "1KB"})
    response = submit(files=[("a.txt", b"a" * 600), ("b.txt", b"b" * 600)])
    assert response.status_code == 400
    [error] = response.get_json()["errors"]
    assert (error["code"], error["advice"]) == (202, 1024)
    assert smtp_server.messages == []


def test_content_length_over_the_limit_is_refused_before_reading(options_file, client, smtp_server):
    options_file.write(email={"max_size": "1KB"})
    too_long = 1024 + 1024 * 1024 + 1
    unread = io.BytesIO(b"--x\r\n")
    response = client.post("/genesys/2/email/support", input_stream=unread,
                           content_type="multipart/form-data; boundary=x",
                           environ_overrides={"CONTENT_LENGTH": str(too_long)})
    assert unread.tell() == 0
    assert response.status_code == 400
    assert response.get_json()["errors"][0]["code"] == 202 and response.get_json()["errors"][0]["advice"] == 1024
    assert smtp_server.messages == []


@pytest.mark.parametrize(
    ("name", "content"),
    (("setup.exe", b"MZ"), ("invoice.pdf.exe", b"MZ"), ("README", b"text"), ("...", b"x"), ("a.jpeg", JPG)),
)
def test_extension_not_in_the_list_is_203_naming_the_file(submit, smtp_server, name, content):
    response = submit(files=[("ok.pdf", PDF), (name, content)])
    assert response.status_code == 400
    [error] = response.get_json()["errors"]
    assert error["code"] == 203
    assert smtp_server.messages == []


def test_configured_file_types_replace_the_default(options_file, submit, smtp_server):
    options_file.write(email={"file_types": "jpeg,csv"})
    assert codes(submit(files=[("a.pdf", PDF)])) == [203]
    assert submit(files=[("a.jpeg", JPG), ("b.csv", b"a,b\r\n")]).get_json()["statusCode"] == 0
    assert [a[:2] for a in attachments(smtp_server.messages[0])] == [("a.jpeg", "image/jpeg"), ("b.csv", "text/csv")]


@pytest.mark.parametrize(
    ("name", "content"),
    (("fake.pdf", PNG), ("fake.png", PDF), ("fake.jpg", b"hello"), ("fake.gif", b""), ("fake.zip", b"PK"),
     ("fake.doc", b"hello"), ("bin.txt", b"text\x00more"), ("bad.txt", b"\x81\x8d\x8f")),
)
def test_content_that_does_not_match_its_extension_is_203(submit, smtp_server, name, content):
    response = submit(files=[(name, content)])
    assert codes(response) == [203]
    assert name in response.get_json()["errors"][0]["message"]
    assert smtp_server.messages == []


def test_content_check_can_be_turned_off(options_file, submit, smtp_server):
    options_file.write(email={"check_file_content": "false"})
    assert submit(files=[("fake.pdf", PNG)]).get_json()["statusCode"] == 0


@pytest.mark.parametrize(
    ("sent", "shown"),
    (
        ("C:\\Users\\ana\\invoice.pdf", "invoice.pdf"),
        ("../../etc/invoice.pdf", "invoice.pdf"),
        ('in"voice".pdf', "invoice.pdf"),
        (".pdf", "attachment-1.pdf"),
        ("x" * 300 + ".pdf", "x" * 196 + ".pdf"),
        ("Счёт №5.pdf", "Счёт №5.pdf"),
        ("e\u0301te\u0301.pdf", "été.pdf"),
    ),
)
def test_file_names_are_cleaned(submit, smtp_server, sent, shown):
    assert submit(files=[(sent, PDF)]).get_json()["statusCode"] == 0
    assert attachments(smtp_server.messages[0])[0][0] == shown


def test_empty_browser_file_part_is_ignored(submit, smtp_server):
    response = submit(service="sales", files=[("a.pdf", PDF), ("b.pdf", PDF), ("c.pdf", PDF), ("", b"")])
    assert response.get_json()["statusCode"] == 0
    assert len(attachments(smtp_server.messages[0])) == 3


def test_file_name_with_a_control_character_is_refused(submit, smtp_server):
    assert codes(submit(files=[("a\x01b.pdf", PDF)])) == [607]
    assert smtp_server.messages == []


def test_missing_field_and_bad_file_are_reported_together(submit, smtp_server):
    response = submit(firstName="", files=[("tool.exe", b"MZ")])
    assert response.status_code == 400
    assert sorted(codes(response)) == [102, 203]
    assert smtp_server.messages == []


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
