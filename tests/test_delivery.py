"""SMTP outcomes (contract section 4): statusCode 0 only after a 250 to the end of DATA, and what each failure means."""
import logging
import time

import pytest
from support import TrickleHandler, codes, free_port


def test_unreachable_relay_is_retryable(options_file, submit):
    options_file.write(smtp={"port": str(free_port())})
    response = submit()
    assert response.status_code == 200
    body = response.get_json()
    assert body["statusCode"] == 1 and body["message"] and set(body) == {"statusCode", "message"}


@pytest.mark.parametrize(
    ("stage", "reply"),
    (("MAIL", "421 closing"), ("MAIL", "451 try later"), ("RCPT", "450 mailbox busy"), ("END", "451 local error"),
     ("MAIL", "stall"), ("RCPT", "drop"), ("RCPT", "stall")),
)
def test_temporary_failure_is_retryable(submit, smtp_server, stage, reply):
    smtp_server.faults[stage] = reply
    response = submit()
    assert response.status_code == 200
    assert response.get_json()["statusCode"] == 1 and "errors" not in response.get_json()
    assert smtp_server.messages == []


@pytest.mark.parametrize("fault", ("stall", "drop"))
def test_no_reply_to_the_end_of_data_is_retryable_and_logged_as_ambiguous(submit, smtp_server, caplog, fault):
    smtp_server.faults["END"] = fault
    with caplog.at_level(logging.WARNING, logger="app.delivery"):
        response = submit()
    assert response.get_json()["statusCode"] == 1
    assert any("ambiguous" in record.getMessage() for record in caplog.records)
    assert smtp_server.messages == []


def test_refused_mailbox_is_383(submit, smtp_server):
    smtp_server.faults["RCPT"] = "550 no such user"
    response = submit()
    assert response.status_code == 400 and codes(response) == [383]


def test_refused_envelope_from_is_a_permanent_error(options_file, submit, smtp_server):
    options_file.write(smtp={"envelope_from": "gms@example.com"})
    smtp_server.faults["MAIL"] = "553 sender rejected"
    response = submit()
    assert response.status_code == 200
    assert response.get_json()["statusCode"] == 2 and codes(response) == [613]


def test_message_too_large_for_the_relay_is_202_with_the_service_limit(submit, smtp_server):
    smtp_server.faults["END"] = "552 message too big"
    response = submit()
    assert response.status_code == 400
    assert response.get_json()["errors"][0]["code"] == 202
    assert response.get_json()["errors"][0]["advice"] == 10 * 1024 * 1024


def test_other_permanent_refusal_is_status_2(submit, smtp_server):
    smtp_server.faults["END"] = "554 spam detected"
    response = submit()
    assert response.status_code == 200
    assert response.get_json()["statusCode"] == 2 and codes(response) == [613]
    assert smtp_server.messages == []


def test_lines_starting_with_a_dot_arrive_intact(submit, smtp_server):
    text = ".\r\n..two\r\n.three\r\nend"
    assert submit(text=text).get_json()["statusCode"] == 0
    assert smtp_server.messages[0].email.get_content() == text + "\r\n"


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
    monkeypatch.setattr("app.smtp_session.IDLE_LIMIT", 0)
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
