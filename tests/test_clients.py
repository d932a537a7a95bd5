"""Real clients beyond Widgets 8.5: Genesys Widgets 9.x as its SendMessageService builds requests, and a
server-side caller. Each request is replayed as the client sends it; the email is read back exactly."""
from __future__ import annotations

from urllib.parse import quote, urlencode

import pytest
from support import GOOD_FORM, PDF, codes, multipart

ORIGIN = "https://shop.example.com"
WIDGET_HEADERS = {"Origin": ORIGIN, "ContactCenterId": "cc-4711", "apikey": "k-9x"}


@pytest.fixture
def widgets_9(options_file):
    """A site configured as Widgets 9.x deployments are: subdomain origins, an API key, a ccid."""
    options_file.write(cors={"allowed_origins": "https://*.example.com"}, security={"api_keys": "k-9x"})


def test_widgets_9_multipart_send_with_contact_center_id_and_a_textarea(widgets_9, client, smtp_server):
    preflight = client.options("/genesys/2/email/support", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "apikey,contactcenterid"})
    assert preflight.status_code == 204 and preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "contactcenterid" in preflight.headers["Access-Control-Allow-Headers"]
    textarea = "Order A-17\r\nDelivered broken\r\n\tsee photo"  # a browser sends a textarea's line ends as CRLF
    body, content_type = multipart([
        *GOOD_FORM.items(), ("userData", f"details={textarea}"), ("userData", "ccid=cc-4711"),
        ("files", ("photo.pdf", PDF))])
    response = client.post("/genesys/2/email/support", data=body, content_type=content_type, headers=WIDGET_HEADERS)
    assert response.get_json()["statusCode"] == 0
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    email = smtp_server.messages[0].email
    assert email.get_all("X-Genesys-User-Data") == [f"details={textarea}", "ccid=cc-4711"]


def test_widgets_9_urlencoded_send_reads_success_from_the_json_interaction_id(widgets_9, client, smtp_server):
    note = "first line\nsecond line"  # urlencoded mode sends the textarea's line ends as LF
    body = urlencode(list(GOOD_FORM.items())) + "&userData=" + quote(f"note={note}", safe="")
    response = client.post("/genesys/2/email/support", data=body, headers=WIDGET_HEADERS,
                           content_type="application/x-www-form-urlencoded; charset=UTF-8")
    assert response.mimetype == "application/json"  # 9.x parses the answer only when it is JSON
    assert len(response.get_json()["interactionId"]) == 16
    assert smtp_server.messages[0].email["X-Genesys-User-Data"] == f"note={note}"


@pytest.mark.parametrize("value", (
    "a\r\nb", "a\nb", "a\rb", "tab\there", "\r\n\r\nblank lines\r\n", "ünïcödé\nzeile", "=?utf-8?q?x?=\nlooks encoded",
    "x" * 4000 + "\n" + "y" * 90, "line\u2028separator", "para\u2029separator", "right\u200fto\u202eleft",
))
def test_multi_line_user_data_reads_back_exactly_within_998_octets(submit, smtp_server, value):
    assert submit(extra=[("userData", f"key={value}")]).get_json()["statusCode"] == 0
    received = smtp_server.messages[0]
    assert received.email["X-Genesys-User-Data"] == f"key={value}".rstrip(" \t")
    assert max(len(line) for line in received.raw.split(b"\r\n")) <= 998


def test_a_line_break_in_a_user_data_value_smuggles_no_header(submit, smtp_server):
    assert submit(extra=[("userData", "k=v\r\nBcc: victim@example.org\r\n\r\nbody")]).get_json()["statusCode"] == 0
    received = smtp_server.messages[0]
    assert received.email["Bcc"] is None and received.rcpt_tos == ["support@example.com"]
    assert received.email["X-Genesys-User-Data"] == "k=v\r\nBcc: victim@example.org\r\n\r\nbody"


@pytest.mark.parametrize("bad", ("\x00", "\x0b", "\x0c", "\x1b", "\x7f", "\x85"))
def test_other_controls_in_user_data_values_are_still_refused(submit, smtp_server, bad):
    assert codes(submit(extra=[("userData", f"key=a{bad}b")])) == [601]
    assert codes(submit(extra=[("userData", "ke\ny=ab")])) == [601]  # a key stays one line
    assert smtp_server.messages == []


def test_the_text_keeps_every_character_but_line_ends(submit, smtp_server):
    text = "page one\fpage two\u2028same line\vvertical\x1cfs\x1dgs\x1ers\x85nel\u2029para\r\nend\rcr\nlf"
    assert submit(text=text).get_json()["statusCode"] == 0
    body = smtp_server.messages[0].email.get_content()
    expected = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n") + "\r\n"
    assert body == expected


def test_an_rfc_2231_boundary_is_a_malformed_body(client, smtp_server):
    body, _ = multipart(list(GOOD_FORM.items()))
    response = client.post("/genesys/2/email/support", data=body,
                           content_type="multipart/form-data; boundary*=UTF-8''%E2%82%AC")
    assert response.status_code == 400 and codes(response) == [604]


def test_a_server_side_caller_posting_urlencoded_with_legacy_fields(client, smtp_server):
    """A bank's back end: urlencoded, the legacy field tenantName, userData twice, reads only interactionId."""
    body = urlencode([*GOOD_FORM.items(), ("tenantName", "Environment"), ("userData", "account=DE-1"),
                      ("userData", "account=DE-2"), ("mailbox", "")])
    response = client.post("/genesys/2/email", data=body, content_type="application/x-www-form-urlencoded")
    assert len(response.get_json()["interactionId"]) == 16
    assert smtp_server.messages[0].email.get_all("X-Genesys-User-Data") == ["account=DE-1", "account=DE-2"]
