"""The form's field rules (contract section 2): each problem has its code, all are reported at once."""
import pytest
from support import GOOD_FORM, codes, multipart


def test_good_form_is_delivered_with_an_interaction_id(submit, smtp_server):
    response = submit()
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json;charset=utf-8"
    body = response.get_json()
    assert body["statusCode"] == 0
    assert len(body["interactionId"]) == 16 and body["interactionId"].isalnum() and body["interactionId"].isupper()
    assert [m.email["X-Genesys-Interaction-Id"] for m in smtp_server.messages] == [body["interactionId"]]


def test_interaction_ids_are_unique(submit):
    ids = {submit().get_json()["interactionId"] for _ in range(20)}
    assert len(ids) == 20


@pytest.mark.parametrize(
    ("field", "value", "code"),
    (
        ("firstName", None, 102),
        ("firstName", "", 102),
        ("firstName", " \t ", 102),
        ("lastName", "", 103),
        ("subject", "", 104),
        ("fromAddress", "", 181),
        ("fromAddress", None, 181),
        ("text", "", 182),
        ("text", " \r\n ", 182),
        ("fromAddress", "ana@", 381),
        ("fromAddress", "Ana <ana@example.com>", 381),
        ("fromAddress", "ana@example.com\r\nBcc: victim@example.org", 381),
        # valid atext, but mail clients decode it: Python's email reads "ceo@bank.example"@example.com
        ("fromAddress", "=?utf-8?q?ceo=40bank.example?=@example.com", 381),
        ("fromAddress", "ana=?x@example.com", 381),
        ("mailbox", "not-an-address", 383),
        ("mailbox", "someone@elsewhere.example", 383),
        ("mailbox", "sales@example.com\r\nBcc: x@example.org", 383),
        ("firstName", "Ana\r\nBcc: victim@example.org", 601),
        ("lastName", "Lee\n", 601),
        ("subject", "Hi\x00there", 601),
        ("subject", "Hi\u2028there", 601),
        ("lastName", "Lee\x85", 601),
        ("text", "nul\x00byte", 601),
        ("firstName", "A" * 257, 602),
        ("subject", "s" * 999, 602),
    ),
)
def test_field_rule(submit, smtp_server, field, value, code):
    response = submit(**{field: value})
    assert response.status_code == 400
    body = response.get_json()
    assert body["statusCode"] == 2
    assert [(e["code"], e["field"]) for e in body["errors"]] == [(code, field)]
    assert smtp_server.messages == []


def test_an_encoded_word_in_a_requested_mailbox_is_383_even_under_a_domain_wildcard(options_file, submit,
                                                                                 smtp_server):
    options_file.write(email={"allowed_mailboxes": "*@example.com"})
    assert submit(mailbox="team@example.com").get_json()["statusCode"] == 0
    response = submit(mailbox="=?utf-8?q?ceo=40bank.example?=@example.com")
    assert response.status_code == 400 and codes(response) == [383]
    assert len(smtp_server.messages) == 1


def test_all_problems_are_reported_together(submit, smtp_server):
    response = submit(firstName="", lastName=None, subject=" ", text="", fromAddress="bad")
    assert response.status_code == 400
    assert sorted(codes(response)) == [102, 103, 104, 182, 381]
    assert smtp_server.messages == []


def test_values_are_trimmed_and_longest_values_pass(submit, smtp_server):
    response = submit(firstName="  " + "A" * 256 + "\t", subject="s" * 998, fromAddress=" ana@example.com ")
    assert response.get_json()["statusCode"] == 0
    email = smtp_server.messages[0].email
    assert email["X-Genesys-First-Name"] == "A" * 256
    assert email["Subject"] == "s" * 998
    assert email["From"].addresses[0].addr_spec == "ana@example.com"


def test_urlencoded_form_is_accepted_and_files_field_ignored(client, smtp_server):
    response = client.post("/genesys/2/email/support", data={
        **GOOD_FORM, "files": "invoice.pdf", "userData": "order=A-17"})
    assert response.get_json()["statusCode"] == 0
    email = smtp_server.messages[0].email
    assert email["X-Genesys-User-Data"] == "order=A-17"
    assert not list(email.iter_attachments())


def test_urlencoded_with_charset_parameter(client, smtp_server):
    body = "firstName=Ana+Mar%C3%ADa&lastName=Lee&fromAddress=ana%40example.com&subject=Hi&text=Hello"
    response = client.post("/genesys/2/email/support", data=body,
                           content_type="application/x-www-form-urlencoded; charset=UTF-8")
    assert response.get_json()["statusCode"] == 0
    assert smtp_server.messages[0].email["X-Genesys-First-Name"] == "Ana María"


@pytest.mark.parametrize("content_type", ("application/json", "text/plain", None))
def test_other_content_types_are_415(client, content_type):
    response = client.post("/genesys/2/email/support", data=b"{}", content_type=content_type)
    assert response.status_code == 415
    assert response.headers["Content-Type"] == "application/json;charset=utf-8"
    assert codes(response) == [605]


def test_fields_over_the_allowance_are_refused(submit, smtp_server):
    response = submit(text="x" * (1024 * 1024 + 1))
    assert response.status_code == 400
    assert codes(response) == [603]
    assert smtp_server.messages == []


@pytest.mark.parametrize(
    "body",
    (
        b"--b\r\nContent-Disposition: form-data; name=\"firstName\"\r\n\r\nAna\r\n",  # no closing boundary
        b"--b\r\nContent-Type: text/plain\r\n\r\nAna\r\n--b--\r\n",  # no Content-Disposition
        b"--b\r\nContent-Disposition: form-data\r\n\r\nAna\r\n--b--\r\n",  # a part without a name
    ),
)
def test_malformed_multipart_is_604(client, smtp_server, body):
    response = client.post("/genesys/2/email/support", data=body, content_type="multipart/form-data; boundary=b")
    assert response.status_code == 400
    assert codes(response) == [604]


def test_multipart_without_boundary_is_604(client):
    response = client.post("/genesys/2/email/support", data=b"x", content_type="multipart/form-data")
    assert codes(response) == [604]


def test_unknown_path_and_method_answer_json(client):
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and codes(missing) == [611]
    assert missing.headers["Content-Type"] == "application/json;charset=utf-8"
    wrong = client.get("/genesys/2/email/support")
    assert wrong.status_code == 405 and codes(wrong) == [612]


def test_service_name_with_encoded_line_break_is_refused(client, smtp_server):
    response = client.post("/genesys/2/email/sup%0D%0Aport", data={"firstName": "Ana"})
    assert response.status_code == 400 and codes(response) == [608]


def test_an_unexpected_error_is_json_and_logged(app, client, caplog):
    def broken():
        raise RuntimeError("boom")

    app.add_url_rule("/broken", view_func=broken)
    response = client.get("/broken")
    assert response.status_code == 500
    assert response.headers["Content-Type"] == "application/json;charset=utf-8"
    assert response.get_json() == {"statusCode": 2,
                                   "errors": [{"code": 614, "message": "An unexpected error occurred."}]}
    assert any(record.exc_info for record in caplog.records)


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
