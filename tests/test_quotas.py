"""Quotas for strangers (contract section 11): forms per client address and per sender in a moving window, counted
in the node's store with the form's claim; over one, 429 with code 610 and Retry-After, and nothing delivered."""
from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import OptionsFile
from support import DEPLOY_CONFIG, ROOT, Gunicorn, codes, encoded_form, log_lines, metric, post_form

from app import create_app
from app.metrics import exposition
from app.quotas import client_key


@pytest.fixture(autouse=True)
def own_counts(own_state_folder):
    """Each test counts in a store of its own."""


@pytest.fixture
def shipped(tmp_path, smtp_server):
    """The options.ini shipped in the repository, pointed at the test relay."""
    text = (ROOT / "options.ini").read_text()
    text = re.sub(r"(?m)^port = 2525$", f"port = {smtp_server.port}", text)
    text = re.sub(r"(?m)^status_file = .*$", f"status_file = {tmp_path / 'node.status'}", text)
    path = tmp_path / "shipped.ini"
    path.write_text(text)
    return create_app(path).test_client()


def test_the_31st_form_from_one_address_in_an_hour_is_429_under_the_shipped_options(shipped, smtp_server, caplog):
    before = metric(exposition()[0].decode(), "email_limited_total", quota="client")
    for number in range(30):  # thirty customers behind one address, each writing once
        assert post_form(shipped, fromAddress=f"customer-{number}@example.com").get_json()["statusCode"] == 0
    with caplog.at_level(logging.INFO, logger="app"):
        answer = post_form(shipped, fromAddress="customer-30@example.com")
    assert answer.status_code == 429 and answer.get_json()["statusCode"] == 2 and codes(answer) == [610]
    assert 3500 < int(answer.headers["Retry-After"]) <= 3600
    assert len(smtp_server.messages) == 30
    [line] = log_lines(caplog, "request")
    assert (line["outcome"], line["quota"], line["http_status"]) == ("limited", "client", 429)
    assert metric(exposition()[0].decode(), "email_limited_total", quota="client") == before + 1


def test_the_11th_form_from_one_sender_in_an_hour_is_429_under_the_shipped_options(shipped, smtp_server, caplog):
    for number in range(10):
        assert post_form(shipped, subject=f"Question {number}").get_json()["statusCode"] == 0
    with caplog.at_level(logging.INFO, logger="app"):
        answer = post_form(shipped, fromAddress="ANA@example.com", subject="Question 10")  # the address's case aside
    assert answer.status_code == 429 and codes(answer) == [610]
    assert len(smtp_server.messages) == 10
    assert log_lines(caplog, "request")[0]["quota"] == "sender"


def test_a_duplicate_and_a_refused_form_count_nothing(options_file, submit, smtp_server):
    options_file.write(email={"duplicate_window": "10m"}, limits={"per_client": "2/h"})
    first = submit().get_json()
    assert submit().get_json() == first  # a resend: answered with the first id, not counted
    assert submit(firstName="").status_code == 400  # refused: not counted
    assert submit(subject="Another question").get_json()["statusCode"] == 0
    assert submit(subject="A third question").status_code == 429
    assert len(smtp_server.messages) == 2


def test_without_a_duplicate_window_the_quota_is_still_counted(options_file, submit, smtp_server):
    options_file.write(limits={"per_client": "1/90s"})
    assert submit().get_json()["statusCode"] == 0
    answer = submit()
    assert answer.status_code == 429 and 0 < int(answer.headers["Retry-After"]) <= 90
    assert len(smtp_server.messages) == 1


def test_exempt_addresses_and_networks_have_no_quota(options_file, submit, smtp_server):
    options_file.write(limits={"per_client": "1/h", "per_sender": "1/h", "exempt": '"10.0.0.0/8, 127.0.0.1"'})
    assert [submit(subject=f"{n}").get_json()["statusCode"] for n in range(3)] == [0, 0, 0]


def test_each_client_behind_the_proxy_has_its_own_quota(options_file, client, smtp_server):
    options_file.write(server={"proxy_hops": "1"}, limits={"per_client": "1/h"})

    def post(address: str, subject: str) -> int:
        return post_form(client, subject=subject, headers={"X-Forwarded-For": address}).status_code

    assert [post("203.0.113.7", "a"), post("198.51.100.9", "b"), post("203.0.113.7", "c")] == [200, 200, 429]


def test_ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4():
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::7") == "2001:db8:1:2::/64"
    assert client_key("::ffff:203.0.113.7") == client_key("203.0.113.7") == "203.0.113.7"


def test_a_store_that_fails_skips_the_quota_and_loses_no_form(options_file, submit, smtp_server, caplog):
    options_file.write(limits={"per_client": "1/h"}, server={"dedup_store": '"redis://127.0.0.1:1/0"'})
    with caplog.at_level(logging.INFO, logger="app"):
        answers = [submit(subject=f"{n}").get_json()["statusCode"] for n in range(2)]
    assert answers == [0, 0] and len(smtp_server.messages) == 2
    assert [line["operation"] for line in log_lines(caplog, "dedup_store_error")] == ["count the quotas"] * 2


@pytest.mark.parametrize(("value", "valid"), (("30/h", True), ("100/10m", True), ("5/90s", True), ("0", True),
                                              ("2/d", True), ("30", False), ("0/h", False), ("30/w", False),
                                              ("1/8d", False), ("-1/h", False), ("lots/h", False)))
def test_a_rate_is_n_per_period(options_file, client, value, valid):
    from app.options.check import main

    options_file.write(limits={"per_client": value})
    assert main([str(options_file.path)]) == (0 if valid else 1)


@pytest.mark.e2e
@pytest.mark.parametrize("arguments", (("-w", "2", "--threads", "4", "-k", "gthread"), DEPLOY_CONFIG),
                         ids=("gthread", "deploy"))
def test_concurrent_posts_from_one_address_through_gunicorn_never_get_past_the_quota(tmp_path, options_file,
                                                                                  smtp_server, arguments):
    """Two workers count together in the node's SQLite file: of 24 different forms posted at once from one
    address, exactly 5 are delivered."""
    options_file.write(limits={"per_client": "5/h"})
    node = Gunicorn(options_file.path, tmp_path, arguments)
    try:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda n: node.post(*encoded_form(subject=f"question {n}"))[0], range(24)))
    finally:
        node.stop()
    assert sorted(statuses) == [200] * 5 + [429] * 19
    assert len(smtp_server.messages) == 5


@pytest.mark.e2e
def test_two_nodes_sharing_redis_count_together(redis_server, tmp_path, smtp_server):
    def node(name: str):
        (tmp_path / name).mkdir()
        options = OptionsFile(tmp_path / name / "options.ini", smtp_server.port)
        options.write(limits={"per_client": "3/h"}, server={"dedup_store": f'"{redis_server.url}"'})
        return create_app(options.path).test_client()

    nodes = [node("a"), node("b")]
    statuses = [post_form(nodes[n % 2], subject=f"question {n}").status_code for n in range(6)]
    assert statuses == [200, 200, 200, 429, 429, 429]
    assert len(smtp_server.messages) == 3


def test_a_client_without_an_address_is_counted_as_it_is_and_never_an_error(options_file, client, smtp_server):
    """A server that hands over no client address (gunicorn on a Unix socket): the exempt list cannot match it."""
    options_file.write(limits={"per_client": "1/h", "exempt": "10.0.0.0/8"})
    body, headers = encoded_form()
    answers = [client.post("/genesys/2/email/support", data=body, headers=headers,
                           environ_base={"REMOTE_ADDR": ""}) for _ in range(2)]
    assert [answer.status_code for answer in answers] == [200, 429]
