"""One form, one email across processes and nodes: gunicorn's workers sharing the node's SQLite store, and
several nodes sharing a real Redis server (Debian's redis-server, started here on a free port)."""
from __future__ import annotations

import http.client
import json
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import OptionsFile
from support import REDIS_PASSWORD, Gunicorn, encoded_form, log_lines, metric

from app import create_app
from app.metrics import exposition


def http_get(port: int, path: str) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def node(tmp_path, name: str, smtp_port: int, store: str):
    """One more "node": an app of its own, with its own options file and state folder."""
    folder = tmp_path / name
    folder.mkdir()
    options = OptionsFile(folder / "options.ini", smtp_port)
    options.write(email={"duplicate_window": "10m"}, server={"dedup_store": f'"{store}"'})
    return options


@pytest.mark.e2e
def test_two_nodes_sharing_redis_deliver_a_resend_once(redis_server, tmp_path, smtp_server, monkeypatch):
    first_node = create_app(node(tmp_path, "a", smtp_server.port, redis_server.url).path).test_client()
    second = node(tmp_path, "b", smtp_server.port, redis_server.url)
    body, headers = encoded_form()
    first = first_node.post("/genesys/2/email/support", data=body, headers=headers).get_json()
    other_node = Gunicorn(second.path, tmp_path / "b", ("-w", "1"), workers=1)
    try:
        status, again = other_node.post(body, headers)
    finally:
        log = other_node.stop()
    assert (status, again) == (200, first) and first["statusCode"] == 0
    assert len(smtp_server.messages) == 1
    assert REDIS_PASSWORD not in log


def test_a_double_click_through_redis_is_one_email(redis_server, options_file, client, smtp_server):
    options_file.write(email={"duplicate_window": "10m"}, smtp={"timeout": "5"},
                       server={"dedup_store": f'"{redis_server.url}"'})
    smtp_server.delays["END"] = 0.5
    body, headers = encoded_form()
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: client.post("/genesys/2/email/support", data=body, headers=headers)
                                .get_json(), range(2)))
    assert answers[0] == answers[1] and answers[0]["statusCode"] == 0
    assert len(smtp_server.messages) == 1


def test_redis_stopped_mid_run_never_stops_a_delivery(redis_server, options_file, client, smtp_server, caplog):
    options_file.write(email={"duplicate_window": "10m"}, server={"dedup_store": f'"{redis_server.url}"'})
    body, headers = encoded_form()
    before = metric(exposition()[0].decode(), "email_dedup_store_errors_total")
    with caplog.at_level(logging.INFO, logger="app"):
        first = client.post("/genesys/2/email/support", data=body, headers=headers).get_json()
        redis_server.stop()
        again = client.post("/genesys/2/email/support", data=body, headers=headers).get_json()
    assert first["statusCode"] == 0 and again["statusCode"] == 0  # a duplicate is possible, never a loss
    assert len(smtp_server.messages) == 2
    [warning] = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "dedup_store_error"]
    assert warning.levelname == "WARNING" and "Redis redis://127.0.0.1" in warning.getMessage()
    assert metric(exposition()[0].decode(), "email_dedup_store_errors_total") == before + 1
    assert REDIS_PASSWORD not in caplog.text and REDIS_PASSWORD not in json.dumps(again)


def test_a_wrong_redis_password_is_a_store_error_that_names_no_password(redis_server, options_file, client,
                                                                       smtp_server, caplog):
    wrong = redis_server.url.replace(REDIS_PASSWORD, "not-the-password")
    options_file.write(email={"duplicate_window": "10m"}, server={"dedup_store": f'"{wrong}"'})
    body, headers = encoded_form()
    with caplog.at_level(logging.INFO, logger="app"):
        assert client.post("/genesys/2/email/support", data=body, headers=headers).get_json()["statusCode"] == 0
    assert "dedup_store_error" in caplog.text or any(
        getattr(r, "fields", {}).get("event") == "dedup_store_error" for r in caplog.records)
    assert "not-the-password" not in caplog.text and REDIS_PASSWORD not in caplog.text


def test_a_claim_that_lands_after_its_store_timed_out_names_the_email_delivered_without_it(
        redis_server, options_file, client, smtp_server, caplog):
    """Redis answers the claim (SET NX) after the service gave up on it (1 s), and the claim lands later anyway:
    the email carries the id that claim names, and the claim is settled, so that the resend is a duplicate."""
    options_file.write(email={"duplicate_window": "10m"}, smtp={"timeout": "1"},
                       server={"dedup_store": f'"{redis_server.url}"'})
    # the service is connected to Redis, as it is in use
    earlier_body, earlier_headers = encoded_form(userData="earlier")
    assert client.post("/genesys/2/email/support", data=earlier_body, headers=earlier_headers).status_code == 200
    body, headers = encoded_form()
    with caplog.at_level(logging.INFO, logger="app"), redis_server.asleep(1.5):
        first = client.post("/genesys/2/email/support", data=body, headers=headers).get_json()
    again = client.post("/genesys/2/email/support", data=body, headers=headers).get_json()
    assert first["statusCode"] == 0 and again == first
    earlier, message = smtp_server.messages
    assert message.email["X-Genesys-Interaction-Id"] == first["interactionId"]
    assert [line["operation"] for line in log_lines(caplog, "dedup_store_error")][:1] == ["claim a form"]


# Through gunicorn: the workers of one node share the SQLite file in the state folder.

@pytest.mark.e2e
@pytest.mark.parametrize("arguments", (("-w", "2"), ("-c", "deploy/gunicorn.conf.py")), ids=("plain", "deploy"))
def test_a_client_that_gives_up_and_resends_gets_one_email_and_the_first_id(tmp_path, options_file, smtp_server,
                                                                           arguments):
    """The relay answers the end of DATA after 1.5 s; the client gives up at 0.5 s and sends again."""
    options_file.write(email={"duplicate_window": "10m"}, smtp={"timeout": "5"})
    smtp_server.delays["END"] = 1.5
    node = Gunicorn(options_file.path, tmp_path, arguments)
    body, headers = encoded_form()
    try:
        with pytest.raises(TimeoutError):
            node.post(body, headers, timeout=0.5)
        status, answer = node.post(body, headers)
    finally:
        node.stop()
    assert (status, answer["statusCode"]) == (200, 0)
    [message] = smtp_server.messages
    assert message.email["X-Genesys-Interaction-Id"] == answer["interactionId"]


@pytest.mark.e2e
def test_a_delivery_cut_off_by_its_workers_death_is_resent_with_the_same_id_and_message_id(
        tmp_path, options_file, smtp_server):
    options_file.write(email={"duplicate_window": "10m"}, smtp={"timeout": "1"})
    node = Gunicorn(options_file.path, tmp_path)
    workers = node.workers()
    body, headers = encoded_form()

    def kill_the_workers() -> None:  # the relay has the message; its 250 reaches no one
        smtp_server.on_message = None
        for pid in workers:
            os.kill(pid, signal.SIGKILL)

    smtp_server.on_message = kill_the_workers
    try:
        with pytest.raises(ConnectionError):
            node.post(body, headers)
        node.wait_for_workers(replacing=workers)
        status, answer = node.post(body, headers)
    finally:
        log = node.stop()
    assert (status, answer["statusCode"]) == (200, 0)
    first, again = smtp_server.messages
    assert first.email["Message-ID"] == again.email["Message-ID"] == f"<{answer['interactionId']}@gms.test>"
    sending = [json.loads(line) for line in log.splitlines() if '"event": "sending"' in line]
    assert [(line["interaction_id"], line["resend"]) for line in sending] == [
        (answer["interactionId"], False), (answer["interactionId"], True)]


def in_both_workers(node, smtp_server, first: tuple[bytes, dict], second: tuple[bytes, dict]) -> list[dict]:
    """Post `first`, and `second` once the first is at the relay's end of DATA (its sync worker busy), so that the
    other worker takes it; both answers."""
    smtp_server.reached["END"].clear()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(node.post, *first)
        assert smtp_server.reached["END"].wait(30)
        return [node.post(*second)[1], pending.result()[1]]


@pytest.mark.e2e
def test_a_deleted_sqlite_store_is_noticed_by_every_worker_and_replaced_by_one_new_file(tmp_path, options_file,
                                                                                      smtp_server):
    """The operator deletes the state folder's SQLite files while the node runs, and a worker is replaced (a crash,
    max_requests): every process notices at its next claim and uses the new file. A double click then reaches
    both workers (each sync worker takes one request while the relay is slow) and is still one email."""
    options_file.write(email={"duplicate_window": "10m"})
    smtp_server.delays["END"] = 0.5
    node = Gunicorn(options_file.path, tmp_path, ("-w", "2"))
    try:
        # both workers open the store
        in_both_workers(node, smtp_server, encoded_form(userData="warm-1"), encoded_form(userData="warm-2"))
        sent_before = len(smtp_server.messages)
        for path in (tmp_path / "state").glob("duplicates.sqlite3*"):
            path.unlink()
        crashed = min(node.workers())
        os.kill(crashed, signal.SIGKILL)
        node.wait_for_workers(replacing={crashed})
        answers = [{answer["interactionId"] for answer in in_both_workers(node, smtp_server, copy, copy)}
                   for copy in (encoded_form(userData=f"pair={n}") for n in range(3))]
        page = http_get(node.port, "/metrics")
    finally:
        log = node.stop()
    assert [len(ids) for ids in answers] == [1, 1, 1]  # each double click answered with one id
    assert len(smtp_server.messages) - sent_before == 3
    assert '"event": "dedup_store_replaced"' in log
    assert 1 <= metric(page, "email_dedup_store_errors_total") <= 2  # once in each process that noticed
