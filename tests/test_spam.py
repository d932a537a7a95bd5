"""Spam from strangers (contract section 11): a real rspamd (Debian's package, started here in the foreground with
a configuration that makes no network lookups) gives its verdict on every email; rejects go to the quarantine
mailbox, nothing is refused for its score, and no verdict means the email goes out unmarked."""
from __future__ import annotations

import http.server
import json
import logging
import socket
import threading

import pytest
from support import codes, log_lines, metric

from app.metrics import exposition
from bench.rspamd import Rspamd, rspamd_executable

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@pytest.fixture(scope="module")
def rspamd():
    """A real rspamd shared by this module's tests."""
    if rspamd_executable() is None:
        pytest.skip("Debian's rspamd is not installed (.ci/run installs it)")
    server = Rspamd()
    yield server
    server.stop()


@pytest.fixture
def checking(rspamd, options_file):
    """The service asking that rspamd, with a quarantine mailbox."""
    options_file.write(spam={"rspamd": rspamd.address, "quarantine_mailbox": "quarantine@example.com"})
    return rspamd


def spam_checks(action: str) -> float:
    return metric(exposition()[0].decode(), "email_spam_checks_total", action=action)


def test_an_ordinary_form_goes_to_the_mailbox_with_rspamds_verdict(checking, submit, smtp_server, caplog):
    before = spam_checks("no action")
    with caplog.at_level(logging.INFO, logger="app"):
        answer = submit().get_json()
    assert answer["statusCode"] == 0
    [message] = smtp_server.messages
    assert message.rcpt_tos == ["support@example.com"]
    email = message.email
    assert email["X-Spam"] is None and email["X-Spam-Action"] == "no action"
    score, required = email["X-Spam-Score"].split(" / ")
    assert float(score) < float(required) == 15
    [line] = log_lines(caplog, "request")
    assert (line["outcome"], line["spam_action"]) == ("delivered", "no action")
    assert spam_checks("no action") == before + 1


def test_gtube_is_quarantined_unchanged_and_answered_as_any_delivery(checking, submit, smtp_server, caplog):
    before = spam_checks("reject")
    with caplog.at_level(logging.INFO, logger="app"):
        answer = submit(text=f"Buy now! {GTUBE}")
    assert answer.status_code == 200 and set(answer.get_json()) == {"statusCode", "interactionId"}
    [message] = smtp_server.messages
    assert message.rcpt_tos == ["quarantine@example.com"]  # the envelope only
    email = message.email
    assert email["To"] == "support@example.com" and email["Subject"] == "Invoice question"
    assert email.get_content() == f"Buy now! {GTUBE}\r\n"
    assert (email["X-Spam"], email["X-Spam-Action"]) == ("Yes", "reject")
    assert email["X-Spam-Score"] == "15.00 / 15.00"
    [line] = log_lines(caplog, "request")
    assert (line["outcome"], line["spam_action"], line["spam_score"]) == ("quarantined", "reject", 15.0)
    assert spam_checks("reject") == before + 1


def test_without_a_quarantine_mailbox_a_reject_goes_to_the_mailbox_marked(checking, options_file, submit,
                                                                         smtp_server):
    options_file.write(spam={"quarantine_mailbox": None})
    assert submit(text=GTUBE).get_json()["statusCode"] == 0
    [message] = smtp_server.messages
    assert message.rcpt_tos == ["support@example.com"] and message.email["X-Spam"] == "Yes"


def test_a_quarantined_form_counts_as_delivered_for_duplicates(checking, options_file, submit, smtp_server,
                                                               own_state_folder):
    options_file.write(email={"duplicate_window": "10m"})
    first = submit(text=GTUBE).get_json()
    assert submit(text=GTUBE).get_json() == first
    assert len(smtp_server.messages) == 1


def test_the_quarantine_mailbox_is_a_configured_mailbox(checking, submit, smtp_server):
    assert submit(mailbox="quarantine@example.com").get_json()["statusCode"] == 0


def check_fails_open(submit, smtp_server, caplog) -> dict:
    before = spam_checks("error")
    with caplog.at_level(logging.INFO, logger="app"):
        answer = submit(text=GTUBE).get_json()
    assert answer["statusCode"] == 0
    [message] = smtp_server.messages
    assert message.rcpt_tos == ["support@example.com"]
    assert message.email["X-Spam"] is None and message.email["X-Spam-Action"] is None
    assert spam_checks("error") == before + 1
    [warning] = log_lines(caplog, "spam_check_failed")
    assert warning["level"] == "WARNING"
    return warning


def test_rspamd_stopped_fails_open(options_file, submit, smtp_server, caplog):
    if rspamd_executable() is None:
        pytest.skip("Debian's rspamd is not installed (.ci/run installs it)")
    own = Rspamd()
    own.stop()
    options_file.write(spam={"rspamd": own.address, "quarantine_mailbox": "quarantine@example.com"})
    assert "cannot be used" in check_fails_open(submit, smtp_server, caplog)["reason"]


def test_an_rspamd_that_never_answers_fails_open_within_the_timeout(options_file, submit, smtp_server, caplog):
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
    options_file.write(spam={"rspamd": f"127.0.0.1:{listener.getsockname()[1]}", "timeout": "0.3"})
    try:
        assert "did not answer within" in check_fails_open(submit, smtp_server, caplog)["reason"]
    finally:
        listener.close()
        for sock in held:
            sock.close()


class FakeRspamd(http.server.BaseHTTPRequestHandler):
    """An HTTP server standing in for rspamd where the test needs what rspamd was sent: it keeps the request."""

    answer = b""
    seen: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        FakeRspamd.seen.append((dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_rspamd(options_file):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeRspamd)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeRspamd.seen = []
    options_file.write(spam={"rspamd": f"127.0.0.1:{server.server_address[1]}"})
    yield FakeRspamd
    server.shutdown()
    server.server_close()


def test_rspamd_gets_the_exact_bytes_the_relay_gets_and_the_envelope(fake_rspamd, options_file, submit,
                                                                     smtp_server):
    fake_rspamd.answer = json.dumps({"action": "add header", "score": 6.5, "required_score": 15}).encode()
    options_file.write(server={"proxy_hops": "1"})
    interaction_id = submit(files=[("a.txt", b"attached text\r\n.dot at a line start")],
                            headers={"X-Forwarded-For": "203.0.113.7"}).get_json()["interactionId"]
    [(headers, body)] = fake_rspamd.seen
    assert (headers["IP"], headers["From"], headers["Rcpt"], headers["Queue-Id"]) == (
        "203.0.113.7", "support@example.com", "support@example.com", interaction_id)
    [message] = smtp_server.messages
    marks = b"X-Spam: Yes\r\nX-Spam-Action: add header\r\nX-Spam-Score: 6.50 / 15.00\r\n"
    assert message.raw.replace(b"\r\n", b"\n") == (marks + body).replace(b"\r\n", b"\n")


@pytest.mark.parametrize("answer", (b"pong", b'{"action": "delete everything", "score": 1, "required_score": 15}',
                                    b'{"action": "reject\\r\\nBcc: x@example.com", "score": 1, "required_score": 15}',
                                    b'{"score": 1}'))
def test_an_answer_that_is_not_a_result_fails_open(fake_rspamd, submit, smtp_server, caplog, answer):
    fake_rspamd.answer = answer
    assert "without a result" in check_fails_open(submit, smtp_server, caplog)["reason"]


@pytest.mark.parametrize(("values", "valid"), (
    ({"rspamd": "127.0.0.1:11333"}, True), ({"rspamd": "rspamd.internal:11333", "timeout": "10"}, True),
    ({"rspamd": "/run/rspamd/normal.sock"}, False), ({"rspamd": "localhost"}, False), ({"timeout": "0.05"}, False),
    ({"timeout": "11"}, False), ({"quarantine_mailbox": "not an address"}, False)))
def test_check_validates_the_spam_section(options_file, values, valid):
    from app.options.check import main

    options_file.write(spam=values)
    assert main([str(options_file.path)]) == (0 if valid else 1)


def test_over_a_quota_nothing_reaches_rspamd(fake_rspamd, options_file, submit, smtp_server, own_state_folder):
    options_file.write(limits={"per_client": "1/h"})
    fake_rspamd.answer = json.dumps({"action": "no action", "score": 0, "required_score": 15}).encode()
    submit()
    assert codes(submit(subject="again")) == [610]
    assert len(fake_rspamd.seen) == 1
