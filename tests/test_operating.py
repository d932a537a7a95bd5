"""What an operator is shown, under the real gunicorn with the deploy configuration: metrics that tell the truth
about every process, idle ones too, and one JSON line per request."""
from __future__ import annotations

import json
import time

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
