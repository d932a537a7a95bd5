"""The SMTP fault matrix: every stage of the dialogue × (4xx, 5xx, stall, drop).

Each case asserts the contract's answer, and that an email exists at the server if and only if
the answer was statusCode 0. The relay speaks STARTTLS and AUTH, so every stage is on the path,
and takes MAIL, RCPT and DATA pipelined or one by one.
"""
import logging

import pytest

STAGES = ("greeting", "EHLO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "END")
TEMPORARY = {"greeting": "421 4.3.2 busy", "EHLO": "421 4.3.2 busy", "STARTTLS": "454 4.7.0 TLS not available",
             "AUTH": "454 4.7.0 temporary authentication failure", "MAIL": "451 4.3.0 try later",
             "RCPT": "450 4.2.1 mailbox busy", "DATA": "451 4.3.0 try later", "END": "451 4.3.0 try later"}
PERMANENT = {"greeting": "554 5.3.2 no service", "EHLO": "550 5.5.1 no", "STARTTLS": "554 5.7.0 no TLS",
             "AUTH": "535 5.7.8 bad credentials", "MAIL": "553 5.1.8 bad sender", "RCPT": "550 5.1.1 no such user",
             "DATA": "554 5.3.0 no data", "END": "554 5.7.1 spam"}
# The contract's answer to a 5xx at each stage: (HTTP status, error code).
PERMANENT_ANSWER = {"RCPT": (400, 383)}


def answer(response) -> tuple[int, int, list[int]]:
    body = response.get_json()
    return response.status_code, body["statusCode"], [e["code"] for e in body.get("errors", [])]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("fault", ("4xx", "5xx", "stall", "drop"))
@pytest.mark.parametrize("pipelining", (True, False), ids=("pipelining", "one-by-one"))
def test_fault(secure_relay, submit, smtp_server, caplog, stage, fault, pipelining):
    smtp_server.pipelining = pipelining
    secure_relay("starttls")
    smtp_server.faults[stage] = {"4xx": TEMPORARY[stage], "5xx": PERMANENT[stage]}.get(fault, fault)
    with caplog.at_level(logging.WARNING, logger="app"):
        response = submit()
    http_status, status_code, codes = answer(response)
    if fault == "5xx":
        expected_http, expected_code = PERMANENT_ANSWER.get(stage, (200, 613))
        assert (http_status, status_code, codes) == (expected_http, 2, [expected_code])
    else:
        assert (http_status, status_code, codes) == (200, 1, [])
        assert set(response.get_json()) == {"statusCode", "message"}
    ambiguous = any("ambiguous" in r.getMessage() for r in caplog.records)
    assert ambiguous == (stage == "END" and fault in ("stall", "drop"))
    assert (len(smtp_server.messages) == 1) == (status_code == 0)


def test_a_server_without_ehlo_is_served_over_helo(smtp_server, submit):
    smtp_server.faults["EHLO"] = "502 5.5.2 command not recognized"
    assert submit().get_json()["statusCode"] == 0
    assert len(smtp_server.messages) == 1
