"""Every worker of a node serves exactly the newest valid options, through edits, HUPs and killed workers.

The real gunicorn, two workers, a real SMTP server, and a script of edits run twice: under the deploy
configuration (gthread, preload) and as plain `gunicorn -w 2 wsgi:app` with no configuration file. After
each step every live worker must show the expected options version in /metrics — the idle one too — and a
revoked API key must be refused every time; every answer on the way is JSON and none is a 5xx.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support import DEPLOY_CONFIG, GOOD_FORM, Gunicorn

pytestmark = pytest.mark.e2e
BROKEN = ("[email]\nmailbox = support@example.com\nmax_size = 10 lots\n[smtp\n", None)  # None: delete the file
RUNS = {"deploy config": DEPLOY_CONFIG, "no config": ("-w", "2")}


class Node(Gunicorn):
    """A gunicorn master with two workers, and what a test needs to edit its options and watch its workers."""

    def __init__(self, tmp_path: Path, smtp_port: int, arguments: tuple[str, ...]) -> None:
        self.options, self.smtp_port = tmp_path / "options.ini", smtp_port
        self.answers: list[tuple[int, bool]] = []
        self.write("k1, leaked")
        super().__init__(self.options, tmp_path, arguments)

    def write(self, api_keys: str | None, tenant: str = "T") -> None:
        if api_keys is None:
            self.options.unlink(missing_ok=True)
            return
        text = (f"[email]\nmailbox = support@example.com\ntenant = {tenant}\n[smtp]\nport = {self.smtp_port}\n"
                f"[security]\napi_keys = \"{api_keys}\"\n[server]\nreload_interval = 0.2\n"
                f"status_file = {self.options.with_name('node.status')}\n")
        temporary = self.options.with_suffix(".tmp")
        temporary.write_text(text)
        os.replace(temporary, self.options)

    def write_broken(self, text: str | None) -> None:
        if text is None:
            self.options.unlink()
        else:
            temporary = self.options.with_suffix(".tmp")
            temporary.write_text(text)
            os.replace(temporary, self.options)

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: str = "") -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)  # a new one: any worker
        try:
            connection.request(method, path, body, headers or {})
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        if path == "/metrics":
            return response.status, {"page": data.decode()}
        is_json = response.getheader("Content-Type", "").startswith("application/json")
        self.answers.append((response.status, is_json))
        return response.status, json.loads(data) if is_json else {}

    def versions(self) -> dict[int, float]:
        page = self.request("GET", "/metrics")[1]["page"]
        return {int(pid): float(value) for pid, value in
                re.findall(r'^email_options_version\{pid="(\d+)"\} (\S+)', page, re.M)}

    def converge(self, version: int) -> None:
        """Wait until every live worker serves `version`: the contract's bound is reload_interval + 1 s."""
        deadline = time.monotonic() + 30
        while True:
            versions = self.versions()
            workers = self.workers()
            if all(versions.get(pid) == version for pid in workers):
                return
            assert time.monotonic() < deadline, f"workers {workers} serve {versions}, not version {version}"
            time.sleep(0.05)

    def post_key(self, key: str) -> tuple[int, dict]:
        body = "&".join(f"{k}={v}" for k, v in GOOD_FORM.items())
        return self.request("POST", "/genesys/2/email/support", {
            "apikey": key, "Content-Type": "application/x-www-form-urlencoded"}, body)

    def check(self, version: int, refused: str, accepted: str) -> None:
        """Every worker serves `version`; then, 8 clients at once, the refused key is refused 20 times out of 20."""
        self.converge(version)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(self.post_key, [refused] * 20 + [accepted] * 8))
        assert [status for status, _ in answers[:20]] == [401] * 20
        assert [answer.get("statusCode") for _, answer in answers[20:]] == [0] * 8


@pytest.mark.parametrize("run", RUNS)
def test_every_worker_serves_the_newest_valid_options(tmp_path, smtp_server, run):
    node = Node(tmp_path, smtp_server.port, RUNS[run])
    try:
        node.check(1, refused="nope", accepted="leaked")
        node.write("k1")  # revoke the leaked key
        node.check(2, refused="leaked", accepted="k1")
        for broken in BROKEN:
            node.write_broken(broken)
            node.log.wait_for("reload refused")
            node.check(2, refused="leaked", accepted="k1")
            workers = node.workers()
            node.process.send_signal(signal.SIGHUP)
            node.wait_for_workers(replacing=workers)
            node.check(2, refused="leaked", accepted="k1")
            victim = min(node.workers())
            os.kill(victim, signal.SIGKILL)
            node.wait_for_workers(replacing={victim})
            node.check(2, refused="leaked", accepted="k1")
        node.write("k1, k3", tenant="T3")
        node.check(3, refused="leaked", accepted="k3")
        node.write("k3")
        node.check(4, refused="k1", accepted="k3")
    finally:
        node.stop()
    assert node.answers and all(is_json and status < 500 for status, is_json in node.answers)
