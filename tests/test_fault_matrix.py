"""The relay fault matrix (contract section 4) at the delivery stage: `deliver()` against a real aiosmtpd relay
that speaks STARTTLS and AUTH, so that every stage of the dialogue is on the path, faulted at each stage with a
4xx, a 5xx, a stall or a dropped connection, taking MAIL, RCPT and DATA pipelined or one by one.

Each case asserts the error deliver() raises and what it says of the relay (stage, reply, ambiguity), the one
WARNING line and the failure metric an operator sees, and that an email exists at the relay if and only if
deliver() returned. What each error answers over HTTP is test_delivery.py's mapping test."""
from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY
from support import composed, free_port, log_lines

from app.errors import PermanentDeliveryError, TransientDeliveryError
from app.mail.delivery import deliver

STAGES = ("greeting", "EHLO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "END")
TEMPORARY = {"greeting": "421 4.3.2 busy", "EHLO": "421 4.3.2 busy", "STARTTLS": "454 4.7.0 TLS not available",
             "AUTH": "454 4.7.0 temporary authentication failure", "MAIL": "451 4.3.0 try later",
             "RCPT": "450 4.2.1 mailbox busy", "DATA": "451 4.3.0 try later", "END": "451 4.3.0 try later"}
PERMANENT = {"greeting": "554 5.3.2 no service", "EHLO": "550 5.5.1 no", "STARTTLS": "554 5.7.0 no TLS",
             "AUTH": "535 5.7.8 bad credentials", "MAIL": "553 5.1.8 bad sender", "RCPT": "550 5.1.1 no such user",
             "DATA": "554 5.3.0 no data", "END": "554 5.7.1 spam"}
# The problem a 5xx at each stage is: 383 (the mailbox) at RCPT, 202 for 552 anywhere, else 613.
PERMANENT_PROBLEM = {"RCPT": 383}
# A refused EHLO is tried again as HELO (RFC 5321 4.1.4), which this relay refuses before STARTTLS: its reply counts.
HELO_REFUSED = "530 Must issue a STARTTLS command first"


def failures(stage: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("email_delivery_failures_total", {"stage": stage, "outcome": outcome}) or 0


def warning_lines(caplog) -> list[dict]:
    """The service's WARNING lines, as the JSON log writes them."""
    return [line for line in log_lines(caplog) if line["level"] == "WARNING"]


def failed_delivery(email, smtp, caplog) -> TransientDeliveryError | PermanentDeliveryError:
    with caplog.at_level(logging.INFO, logger="app"), pytest.raises(
            (TransientDeliveryError, PermanentDeliveryError)) as raised:
        deliver(email, smtp)
    return raised.value


# Pipelining changes only how MAIL, RCPT and DATA are sent: the session's set-up stages are tried once.
CASES = [(stage, pipelining) for stage in STAGES for pipelining in (True, False)
         if pipelining or stage in ("MAIL", "RCPT", "DATA", "END")]


@pytest.mark.parametrize(("stage", "pipelining"), CASES,
                         ids=[f"{'pipelining' if p else 'one-by-one'}-{stage}" for stage, p in CASES])
@pytest.mark.parametrize("fault", ("4xx", "5xx", "stall", "drop"))
def test_fault(secure_relay, options_file, smtp_server, caplog, stage, fault, pipelining):
    smtp_server.pipelining = pipelining
    secure_relay("starttls")
    if fault == "stall":  # until the service gives up: a short timeout
        options_file.write(smtp={"timeout": "0.3"})
    reply = {"4xx": TEMPORARY[stage], "5xx": PERMANENT[stage]}.get(fault, fault)
    smtp_server.faults[stage] = reply
    email, smtp = composed(options_file.path)
    ambiguous = stage == "END" and fault in ("stall", "drop")
    outcome = "refused" if fault == "5xx" else "ambiguous" if ambiguous else "retry"
    before = failures(stage, outcome)

    error = failed_delivery(email, smtp, caplog)

    if fault == "5xx":
        assert isinstance(error, PermanentDeliveryError)
        assert [problem.code for problem in error.problems] == [PERMANENT_PROBLEM.get(stage, 613)]
    else:
        assert isinstance(error, TransientDeliveryError) and error.ambiguous == ambiguous
    replied = fault in ("4xx", "5xx")
    if (stage, fault) == ("EHLO", "5xx"):
        reply = HELO_REFUSED
    assert (error.stage, error.reply_code) == (stage, int(reply[:3]) if replied else None)
    [line] = warning_lines(caplog)
    assert line["event"] == ("ambiguous" if ambiguous else "delivery_failed")
    assert (line["relay"], line["stage"], line["outcome"], line["interaction_id"]) == (
        f"127.0.0.1:{smtp.port}", stage, outcome, email.interaction_id)
    if replied:
        assert (line["smtp_reply"], line["reason"]) == (int(reply[:3]), reply)
    else:  # a timeout or a dropped connection: the socket error, and no reply code
        assert line["smtp_reply"] is None and line["reason"]
    assert failures(stage, outcome) == before + 1
    assert REGISTRY.get_sample_value("email_relay_up") == 1  # the relay answered: it is up, if unhappy
    assert smtp_server.messages == []


@pytest.mark.parametrize("pipelining", (True, False), ids=("pipelining", "one-by-one"))
def test_without_a_fault_the_email_is_at_the_relay_once_deliver_returns(secure_relay, options_file, smtp_server,
                                                                        pipelining):
    smtp_server.pipelining = pipelining
    secure_relay("starttls")
    email, smtp = composed(options_file.path)
    deliver(email, smtp)
    [received] = smtp_server.messages
    assert received.email["X-Genesys-Interaction-Id"] == email.interaction_id


def test_a_552_at_any_stage_is_the_202_of_the_service_limit(options_file, smtp_server, caplog):
    smtp_server.faults["END"] = "552 5.3.4 message too big"
    email, smtp = composed(options_file.path)
    error = failed_delivery(email, smtp, caplog)
    assert isinstance(error, PermanentDeliveryError) and (error.stage, error.reply_code) == ("END", 552)
    assert [(p.code, p.advice) for p in error.problems] == [(202, 10 * 1024 * 1024)]


def test_a_refused_connection_is_a_retry_at_connect_and_shows_the_relay_down(options_file, caplog):
    port = free_port()
    options_file.write(smtp={"port": str(port)})
    email, smtp = composed(options_file.path)
    before = failures("connect", "retry")
    error = failed_delivery(email, smtp, caplog)
    assert isinstance(error, TransientDeliveryError) and (error.stage, error.reply_code) == ("connect", None)
    [line] = warning_lines(caplog)
    assert (line["relay"], line["stage"], line["outcome"], line["smtp_reply"]) == (
        f"127.0.0.1:{port}", "connect", "retry", None)
    assert "refused" in line["reason"].lower()
    assert failures("connect", "retry") == before + 1
    assert REGISTRY.get_sample_value("email_relay_up") == 0


def test_a_delivery_brings_the_relay_up_again(options_file, smtp_server, caplog):
    options_file.write(smtp={"port": str(free_port())})
    failed_delivery(*composed(options_file.path), caplog)
    assert REGISTRY.get_sample_value("email_relay_up") == 0
    options_file.write(smtp={"port": str(smtp_server.port)})
    deliver(*composed(options_file.path))
    assert REGISTRY.get_sample_value("email_relay_up") == 1


def test_a_server_without_ehlo_is_served_over_helo(options_file, smtp_server):
    smtp_server.faults["EHLO"] = "502 5.5.2 command not recognized"
    deliver(*composed(options_file.path))
    assert len(smtp_server.messages) == 1
