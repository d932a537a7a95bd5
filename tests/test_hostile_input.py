"""Hostile input: injection, hostile file names and archives, malformed bodies. Refused, and nothing is sent."""
import io
import struct

import pytest
from support import GOOD_FORM, PDF, codes, multipart, zipped

HEADER_FIELDS = ("firstName", "lastName", "subject")
INJECTIONS = ("\r\nBcc: victim@example.org", "\nX-Injected: 1", "\r", "\x00", "\x1b[31m", "\x7f", "\x85", "\u2028")


@pytest.mark.parametrize("field", HEADER_FIELDS)
@pytest.mark.parametrize("injection", INJECTIONS)
def test_control_characters_in_header_fields_are_refused(submit, smtp_server, field, injection):
    response = submit(**{field: "Ana" + injection + "Lee"})
    assert response.status_code == 400
    assert [(e["code"], e["field"]) for e in response.get_json()["errors"]] == [(601, field)]
    assert smtp_server.messages == []


@pytest.mark.parametrize(("field", "code"), (("fromAddress", 381), ("mailbox", 383)))
@pytest.mark.parametrize("injection", INJECTIONS)
def test_control_characters_in_addresses_are_invalid_addresses(submit, smtp_server, field, code, injection):
    response = submit(**{field: "sales@example.com" + injection})
    assert response.status_code == 400 and codes(response) == [code]
    assert smtp_server.messages == []


@pytest.mark.parametrize("injection", INJECTIONS)
def test_control_characters_in_user_data_and_file_names_are_refused(submit, smtp_server, injection):
    assert codes(submit(extra=[("userData", f"key{injection}=value")])) == [601]
    # A value may hold line breaks (Widgets 9.x send textareas as userData): they are carried encoded.
    if any(not (c.isprintable() or c in "\r\n\u2028") for c in injection):
        assert codes(submit(extra=[("userData", f"key=value{injection}")])) == [601]
    if "\r" not in injection and "\n" not in injection:  # a raw line break would end the part's header
        assert codes(submit(files=[(f"in{injection}voice.pdf", PDF)])) == [607]
    assert smtp_server.messages == []


def test_urlencoded_line_breaks_in_names_and_keys_are_refused(client, smtp_server):
    body = "&".join(f"{k}={v}" for k, v in GOOD_FORM.items() if k != "text") + "&text=hi"
    for extra in ("&userData%5Bk%0D%0ABcc%3A%20x%40y.z%5D=v", "&userData=k%0A=v"):
        response = client.post("/genesys/2/email/support", data=body + extra,
                                content_type="application/x-www-form-urlencoded")
        assert codes(response) == [601]
    assert smtp_server.messages == []


@pytest.mark.parametrize(
    ("name", "delivered_as"),
    (("../../../../etc/passwd.txt", "passwd.txt"), ("..\\..\\windows\\win.ini.txt", "win.ini.txt"),
     ("a" * 500 + ".pdf", "a" * 196 + ".pdf"), ("....pdf", "attachment-1.pdf"), (" .pdf ", "attachment-1.pdf")),
)
def test_hostile_file_names_are_cleaned(submit, smtp_server, name, delivered_as):
    content = PDF if name.strip().endswith(".pdf") else b"text"
    assert submit(files=[(name, content)]).get_json()["statusCode"] == 0
    assert next(smtp_server.messages[0].email.iter_attachments()).get_filename() == delivered_as


@pytest.mark.parametrize("name", ("evil\u202efdp.exe", "evil\u202efdp.pdf"))
def test_text_direction_overrides_in_file_names_are_refused(submit, smtp_server, name):
    assert codes(submit(files=[(name, PDF)])) == [607]


@pytest.mark.parametrize("name", ("invoice.pdf.exe", "..", "...", "invoice."))
def test_file_names_without_an_allowed_extension_are_203(submit, smtp_server, name):
    assert codes(submit(files=[(name, PDF)])) == [203]
    assert smtp_server.messages == []


def _zip(entries: int, claimed_size: int | None = None) -> bytes:
    data = bytearray(zipped(*((f"f{i}.txt", "x") for i in range(entries))))
    if claimed_size is not None:  # rewrite the central directory's uncompressed size of the first entry
        offset = data.find(b"PK\x01\x02")
        struct.pack_into("<I", data, offset + 24, claimed_size)
    return bytes(data)


@pytest.mark.parametrize("archive", (_zip(1, claimed_size=0xFFFFFFF0), _zip(1001)))
def test_zip_bombs_are_refused_without_extracting(submit, smtp_server, archive):
    assert codes(submit(files=[("bomb.zip", archive)])) == [203]
    assert smtp_server.messages == []


def test_an_ordinary_zip_passes(submit, smtp_server):
    assert submit(files=[("ok.zip", _zip(3))]).get_json()["statusCode"] == 0


def _post_raw(client, body: bytes, content_type: str = "multipart/form-data; boundary=b", **kwargs):
    return client.post("/genesys/2/email/support", data=body, content_type=content_type, **kwargs)


def test_wrong_boundary_is_malformed(client, smtp_server):
    body, _ = multipart(list(GOOD_FORM.items()))
    assert codes(_post_raw(client, body, "multipart/form-data; boundary=not-the-one")) == [604]


def test_truncated_body_is_malformed(client, smtp_server):
    body, content_type = multipart(list(GOOD_FORM.items()) + [("files", ("a.pdf", PDF))])
    assert codes(_post_raw(client, body[:-30], content_type)) == [604]
    assert smtp_server.messages == []


def test_content_length_longer_than_the_body_is_malformed(client, smtp_server):
    body, content_type = multipart(list(GOOD_FORM.items()))
    response = client.post("/genesys/2/email/support", input_stream=io.BytesIO(body), content_type=content_type,
                           environ_overrides={"CONTENT_LENGTH": str(len(body) + 100)})
    assert response.status_code == 400 and codes(response) == [604]
    assert smtp_server.messages == []


def test_content_length_shorter_than_the_body_is_malformed(client, smtp_server):
    body, content_type = multipart(list(GOOD_FORM.items()))
    response = client.post("/genesys/2/email/support", input_stream=io.BytesIO(body), content_type=content_type,
                           environ_overrides={"CONTENT_LENGTH": str(len(body) - 10)})
    assert codes(response) == [604]
    assert smtp_server.messages == []


def test_non_utf8_field_is_malformed(client, smtp_server):
    body, content_type = multipart(list(GOOD_FORM.items()))
    body = body.replace(b"Ana", b"An\xe9")
    assert codes(_post_raw(client, body, content_type)) == [604]
    body = "&".join(f"{k}={v}" for k, v in GOOD_FORM.items()).replace("Ana", "An%E9").encode()
    assert codes(_post_raw(client, body, "application/x-www-form-urlencoded")) == [604]


def test_a_part_may_declare_its_charset(client, smtp_server):
    body, content_type = multipart(list(GOOD_FORM.items()))
    declared = b'name="firstName"\r\nContent-Type: text/plain; charset=iso-8859-1\r\n'
    body = body.replace(b'name="firstName"\r\n', declared)
    body = body.replace(b"Ana", b"An\xe9")
    assert _post_raw(client, body, content_type).get_json()["statusCode"] == 0
    assert smtp_server.messages[0].email["X-Genesys-First-Name"] == "Ané"


def test_too_many_parts_is_603(submit, smtp_server):
    assert codes(submit(extra=[("ignored", "x")] * 1000)) == [603]


def test_too_many_user_data_pairs_is_616(submit, smtp_server):
    response = submit(extra=[("userData", f"k{i}=v") for i in range(101)])
    assert response.get_json()["errors"] == [
        {"code": 616, "message": "At most 100 userData pairs may be sent.", "advice": 100, "field": "userData"}]
    assert submit(extra=[("userData", f"k{i}=v") for i in range(100)]).get_json()["statusCode"] == 0


@pytest.mark.parametrize("pair", ("k" * 257 + "=v", "k=" + "v" * 4097))
def test_too_long_user_data_is_602(submit, smtp_server, pair):
    assert codes(submit(extra=[("userData", pair)])) == [602]


def test_too_long_text_is_602(submit, smtp_server):
    assert codes(submit(text="x" * (256 * 1024 + 1))) == [602]
    assert submit(text="x" * (256 * 1024)).get_json()["statusCode"] == 0


def test_no_extra_recipient_or_header_can_be_smuggled(submit, smtp_server):
    response = submit(subject="Hi Bcc: victim@example.org", firstName="Ana <evil@example.org>, x",
                      extra=[("userData", "Bcc=victim@example.org"), ("mailbox", "")])
    assert response.get_json()["statusCode"] == 0
    [received] = smtp_server.messages
    assert received.rcpt_tos == ["support@example.com"]
    email = received.email
    assert email["Bcc"] is None and email["Cc"] is None
    assert [a.addr_spec for a in email["From"].addresses] == ["ana@example.com"]
    assert [a.addr_spec for a in email["To"].addresses] == ["support@example.com"]
