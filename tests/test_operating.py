"""What an operator is shown, under the real gunicorn with the deploy configuration: metrics that tell the truth
about every process, idle ones too, and one JSON line per request."""
from __future__ import annotations

import base64
import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from aiosmtpd.controller import Controller
from support import GOOD_FORM, Gunicorn, free_port, metric, multipart

from app.metrics import exposition

pytestmark = pytest.mark.e2e


class Accepting:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"


def form() -> tuple[bytes, dict[str, str]]:
    body, content_type = multipart(list(GOOD_FORM.items()))
    return body, {"Content-Type": content_type}


def metrics_files(folder) -> str:
    """The node's metrics as /metrics would show them, read from the files without asking any worker."""
    return exposition(str(folder / "metrics"))[0].decode()


def test_relay_up_is_zero_as_soon_as_the_last_attempt_could_not_connect(tmp_path, options_file):
    relay = Controller(Accepting(), hostname="127.0.0.1", port=free_port())
    relay.start()
    options_file.write(smtp={"port": str(relay.port), "timeout": "2"})
    node = Gunicorn(options_file.path, tmp_path)
    try:
        body, headers = form()
        assert node.post(body, headers)[1]["statusCode"] == 0
        assert metric(metrics_files(tmp_path), "email_relay_up") == 1
        relay.stop()
        assert node.post(body, headers)[1]["statusCode"] == 1
        assert metric(metrics_files(tmp_path), "email_relay_up") == 0
    finally:
        node.stop()


def test_every_process_shows_its_options_version_after_a_start_without_traffic(tmp_path, options_file):
    node = Gunicorn(options_file.path, tmp_path)
    try:
        expected = {str(pid) for pid in node.workers()} | {str(node.process.pid)}
        deadline = time.monotonic() + 10  # reload_interval + 1 s is the contract's bound for an edit
        while True:
            versions = {}
            for line in metrics_files(tmp_path).splitlines():
                if line.startswith("email_options_version{"):
                    versions[line.split('pid="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
            if set(versions) == expected and set(versions.values()) == {1.0}:
                break
            assert time.monotonic() < deadline, versions
            time.sleep(0.05)
    finally:
        node.stop()


def test_the_log_stream_holds_one_json_line_per_request_and_no_access_line(tmp_path, options_file, smtp_server):
    node = Gunicorn(options_file.path, tmp_path)
    body, headers = form()
    try:
        answer = node.post(body, headers)[1]
    finally:
        log = node.stop()
    about_the_post = [line for line in log.splitlines() if "/genesys/2/email/support" in line]
    assert about_the_post and all(json.loads(line)["event"] == "request" for line in about_the_post), about_the_post
    assert [json.loads(line)["interaction_id"] for line in about_the_post] == [answer["interactionId"]]


ADMIN = {"Authorization": "Basic " + base64.b64encode(b"ops:secret").decode(), "Accept": "application/json"}


def last_hour(node) -> dict[str, int]:
    status, _, body = node.request("GET", "/genesys/1/admin/", headers=ADMIN)
    assert status == 200, body
    return json.loads(body)["last_hour"]


def last_hour_once(node, wanted) -> dict[str, int]:
    """The page's last hour once `wanted(counts)` holds: each process writes its counts within a second."""
    deadline = time.monotonic() + 30
    while not wanted(counts := last_hour(node)):
        assert time.monotonic() < deadline, counts
        time.sleep(0.1)
    return counts


def test_the_last_hour_counts_every_process_and_survives_a_hup_and_a_restart(tmp_path, options_file):
    options_file.write(admin={"username": "ops", "password": "secret"})
    node = Gunicorn(options_file.path, tmp_path)
    invalid, headers = multipart([("firstName", "Ana")])
    try:
        with ThreadPoolExecutor(6) as pool:  # six rejected forms in a second, in both workers
            assert list(pool.map(lambda _: node.post(invalid, {"Content-Type": headers})[0], range(6))) == [400] * 6
        last_hour_once(node, lambda counts: counts["rejected"] == 6)
        workers = node.workers()
        node.process.send_signal(signal.SIGHUP)
        node.wait_for_workers(replacing=workers)
        assert last_hour(node)["rejected"] == 6
    finally:
        node.stop()
    restarted = Gunicorn(options_file.path, tmp_path)
    try:
        assert last_hour(restarted)["rejected"] == 6
    finally:
        restarted.stop()


def test_without_the_deploy_config_metrics_are_the_nodes_on_every_scrape(tmp_path, options_file, smtp_server):
    """`gunicorn -w 2 wsgi:app`, no PROMETHEUS_MULTIPROC_DIR: the service keeps its own folder in its state folder."""
    node = Gunicorn(options_file.path, tmp_path, ("-w", "2", "-k", "gthread", "--threads", "4"), metrics_folder=False)
    body, headers = form()
    try:
        with ThreadPoolExecutor(4) as pool:
            assert all(status == 200 for status, _ in pool.map(lambda _: node.post(body, headers), range(12)))
        scrapes = [metric(node.request("GET", "/metrics")[2].decode(), "email_requests_total", outcome="delivered")
                   for _ in range(6)]
    finally:
        node.stop()
    assert scrapes == [12] * 6
    assert list((tmp_path / "state").glob("metrics-*"))


def test_pings_and_scrapes_are_not_logged_at_info_and_gunicorns_own_lines_are_json(tmp_path, options_file):
    node = Gunicorn(options_file.path, tmp_path)
    try:
        for path in ("/genesys/1/node", "/metrics", "/genesys/1/node"):
            assert node.request("GET", path)[0] == 200
    finally:
        log = node.stop()
    lines = [json.loads(line) for line in log.splitlines()]  # every line is JSON, gunicorn's too
    assert not [line for line in lines if line.get("path") in ("/genesys/1/node", "/metrics")]
    assert any(line["logger"].startswith("gunicorn") and "Booting worker" in line["message"] for line in lines)
    [start] = [line for line in lines if line.get("event") == "start"]
    assert {"version", "commit", "node", "options_digest", "store", "scanner"} <= set(start)
