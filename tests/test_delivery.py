"""SMTP outcomes (contract section 4): statusCode 0 only after a 250 to the end of DATA, and what each failure means."""
import logging
import os
import resource

import pytest
from aiosmtpd.controller import Controller
from support import TrickleHandler, codes, free_port

# One fault of each kind deliver() tells apart (test_fault_matrix.py holds every stage) and its answer:
# (HTTP status, statusCode, error codes).
ANSWERS = {
    "unreachable": (("connect", None), (200, 1, [])),
    "retry": (("MAIL", "451 4.3.0 try later"), (200, 1, [])),
    "ambiguous": (("END", "stall"), (200, 1, [])),
    "mailbox refused": (("RCPT", "550 5.1.1 no such user"), (400, 2, [383])),
    "too large": (("END", "552 5.3.4 message too big"), (400, 2, [202])),
    "refused": (("END", "554 5.7.1 spam"), (200, 2, [613])),
}


@pytest.mark.parametrize("kind", ANSWERS)
def test_each_kind_of_delivery_failure_gets_the_contracts_answer(options_file, submit, smtp_server, kind):
    (stage, reply), expected = ANSWERS[kind]
    if stage == "connect":
        options_file.write(smtp={"port": str(free_port())})
    else:
        smtp_server.faults[stage] = reply
    if reply == "stall":  # until the service gives up: a short timeout
        options_file.write(smtp={"timeout": "0.3"})
    response = submit()
    body = response.get_json()
    assert (response.status_code, body["statusCode"], [e["code"] for e in body.get("errors", [])]) == expected
    if body["statusCode"] == 1:  # "try again": a message, no errors
        assert set(body) == {"statusCode", "message"} and body["message"]
    if kind == "too large":  # the service's own limit, which the client can act on
        assert body["errors"][0]["advice"] == 10 * 1024 * 1024
    assert smtp_server.messages == []


def test_lines_starting_with_a_dot_arrive_intact(submit, smtp_server):
    text = ".\r\n..two\r\n.three\r\nend"
    assert submit(text=text).get_json()["statusCode"] == 0
    assert smtp_server.messages[0].email.get_content() == text + "\r\n"


def test_a_relay_connection_numbered_past_1023_is_delivered(submit, smtp_server):
    """A busy worker's descriptors pass select()'s limit of 1024; waiting for the relay's reply must not need it."""
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    if limits[1] != resource.RLIM_INFINITY and limits[1] < 1100:
        pytest.skip("this machine allows fewer than 1100 open files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(limits[0], 1100), limits[1]))
    taken = [os.open(os.devnull, os.O_RDONLY) for _ in range(1030)]  # the relay's socket comes after these
    try:
        assert submit().get_json()["statusCode"] == 0
    finally:
        for descriptor in taken:
            os.close(descriptor)
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)
    assert len(smtp_server.messages) == 1


@pytest.mark.parametrize("security", ("starttls", "ssl"))
def test_tls_and_auth_deliver(secure_relay, submit, smtp_server, security):
    secure_relay(security)
    response = submit()
    assert response.get_json() == {"statusCode": 0, "interactionId": response.get_json()["interactionId"]}
    assert len(smtp_server.messages) == 1


def test_wrong_password_is_a_permanent_error(secure_relay, options_file, submit, smtp_server):
    secure_relay("starttls")
    options_file.write(smtp={"password": "wrong"})
    response = submit()
    assert response.get_json()["statusCode"] == 2 and codes(response) == [613]
    assert smtp_server.messages == []


def test_untrusted_certificate_is_a_permanent_error(secure_relay, options_file, submit, smtp_server):
    secure_relay("ssl")
    options_file.write(smtp={"ca_file": ""})
    response = submit()
    assert response.get_json()["statusCode"] == 2 and codes(response) == [613]
    assert "certificate" in response.get_json()["errors"][0]["message"]


def test_one_session_serves_message_after_message(submit, smtp_server):
    assert [submit().get_json()["statusCode"] for _ in range(3)] == [0, 0, 0]
    assert (smtp_server.sessions, len(smtp_server.messages)) == (1, 3)


@pytest.mark.parametrize("fault", ("drop", "421 4.4.2 idle too long"))
def test_a_kept_session_that_broke_is_replaced_before_mail(submit, smtp_server, fault):
    assert submit().get_json()["statusCode"] == 0
    smtp_server.faults["RSET"] = fault
    assert submit().get_json()["statusCode"] == 0
    assert (smtp_server.sessions, len(smtp_server.messages)) == (2, 2)


def test_a_session_idle_too_long_is_not_reused(submit, smtp_server, monkeypatch):
    monkeypatch.setattr("app.mail.session.IDLE_LIMIT", 0)
    submit()
    submit()
    assert (smtp_server.sessions, len(smtp_server.messages)) == (2, 2)


def test_a_failed_message_closes_its_session(submit, smtp_server):
    smtp_server.faults["RCPT"] = "450 4.2.1 busy"
    assert submit().get_json()["statusCode"] == 1
    del smtp_server.faults["RCPT"]
    assert submit().get_json()["statusCode"] == 0
    assert (smtp_server.sessions, len(smtp_server.messages)) == (2, 1)


def test_a_kept_session_that_breaks_after_rset_is_not_tried_again(submit, smtp_server):
    assert submit().get_json()["statusCode"] == 0
    smtp_server.faults["MAIL"] = "drop"
    assert submit().get_json()["statusCode"] == 1
    assert (smtp_server.sessions, len(smtp_server.messages)) == (1, 1)


def test_backscatter_mail_from_is_the_mailbox_not_the_stranger(submit, smtp_server):
    submit(fromAddress="stranger@victim.example")
    received = smtp_server.messages[0]
    assert received.mail_from == "support@example.com"
    assert received.email["From"].addresses[0].addr_spec == "stranger@victim.example"
    assert received.email["Sender"] is None


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


@pytest.mark.parametrize("stage", ("MAIL", "END"))
def test_a_relay_that_trickles_its_reply_is_cut_off_at_the_timeout(options_file, submit, stage, caplog):
    timeout = 0.5
    handler = TrickleHandler(stage, every=timeout / 4)  # each byte well within the timeout, the reply far beyond it
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        options_file.write(smtp={"port": str(controller.port), "timeout": str(timeout)})
        with caplog.at_level(logging.WARNING, logger="app"):
            response = submit()
        assert handler.cut_off.wait(timeout=30)  # the service gave up while the relay was still replying
    finally:
        controller.stop()
    assert response.get_json()["statusCode"] == 1
    assert any("ambiguous" in r.getMessage() for r in caplog.records) == (stage == "END")
