"""What operators see of a failed delivery (issue: failures are invisible): one WARNING line naming the relay,
the SMTP stage and the reply or socket error, and metrics by stage — for every way a delivery can fail."""
from __future__ import annotations

import json
import logging

import pytest
from support import free_port, metric

from app.logs import JsonFormatter


def failure_lines(caplog) -> list[dict]:
    return [json.loads(JsonFormatter().format(r)) for r in caplog.records
            if r.levelname == "WARNING" and getattr(r, "fields", {}).get("event") in ("delivery_failed", "ambiguous")]


def sample(client, name: str, **labels: str) -> float:
    return metric(client.get("/metrics").get_data(as_text=True), name, **labels)


def test_a_relay_that_refuses_connections_is_logged_at_connect_and_shown_down(options_file, submit, client, caplog):
    port = free_port()
    options_file.write(smtp={"port": str(port)})
    before = sample(client, "email_delivery_failures_total", stage="connect", outcome="retry")
    with caplog.at_level(logging.INFO, logger="app"):
        assert submit().get_json()["statusCode"] == 1
    [line] = failure_lines(caplog)
    assert (line["relay"], line["stage"], line["outcome"], line["smtp_reply"]) == (f"127.0.0.1:{port}", "connect",
                                                                                   "retry", None)
    assert "refused" in line["reason"].lower() and line["level"] == "WARNING"
    assert sample(client, "email_delivery_failures_total", stage="connect", outcome="retry") == before + 1
    assert sample(client, "email_relay_up") == 0


@pytest.mark.parametrize(("stage", "reply", "outcome"), (
    ("greeting", "421 4.3.2 busy", "retry"), ("EHLO", "421 4.3.2 busy", "retry"),
    ("MAIL", "451 4.3.0 try later", "retry"), ("RCPT", "450 4.2.1 mailbox busy", "retry"),
    ("DATA", "451 4.3.0 no data now", "retry"), ("END", "451 4.3.0 try later", "retry"),
    ("END", "554 5.7.1 spam", "refused"), ("RCPT", "550 5.1.1 no such user", "refused"),
    ("MAIL", "stall", "retry"), ("END", "stall", "ambiguous"), ("RCPT", "drop", "retry"),
))
def test_each_failure_names_its_stage_and_reply(submit, smtp_server, client, caplog, stage, reply, outcome):
    smtp_server.faults[stage] = reply
    before = sample(client, "email_delivery_failures_total", stage=stage, outcome=outcome)
    with caplog.at_level(logging.INFO, logger="app"):
        answer = submit().get_json()
    assert answer["statusCode"] == (2 if outcome == "refused" else 1)
    [line] = failure_lines(caplog)
    assert (line["relay"], line["stage"], line["outcome"]) == (f"127.0.0.1:{smtp_server.port}", stage, outcome)
    if reply[0].isdigit():
        assert line["smtp_reply"] == int(reply[:3]) and line["reason"] == reply
    else:  # a timeout or a dropped connection: the socket error, and no reply code
        assert line["smtp_reply"] is None and line["reason"]
    assert sample(client, "email_delivery_failures_total", stage=stage, outcome=outcome) == before + 1
    assert sample(client, "email_relay_up") == 1  # the relay answered: it is up, if unhappy


def test_a_delivery_brings_the_relay_up_again(options_file, submit, client, smtp_server):
    options_file.write(smtp={"port": str(free_port())})
    submit()
    assert sample(client, "email_relay_up") == 0
    options_file.write(smtp={"port": str(smtp_server.port)})
    assert submit().get_json()["statusCode"] == 0
    assert sample(client, "email_relay_up") == 1
