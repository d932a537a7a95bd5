"""Several nodes behind a balancer (docs/deployment.md, "Several nodes"): the real HAProxy (Debian's package) with
deploy/haproxy.cfg, its ports changed, in front of two nodes under gunicorn. A drained node stops getting forms
once the balancer's health check sees it, and an upgrade by the documented steps cuts no form."""
from __future__ import annotations

import base64
import http.client
import json
import socket
import subprocess
import threading
import time

import pytest
from conftest import OptionsFile
from support import GOOD_FORM, ROOT, Gunicorn, free_port, multipart, system_program, wait_for_port

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(system_program("haproxy") is None,
                                                 reason="needs Debian's haproxy (.ci/run installs it)")]
ADMIN = {"Authorization": "Basic " + base64.b64encode(b"ops:secret").decode()}


class Haproxy:
    """HAProxy with deploy/haproxy.cfg, bound to a free port, checking `nodes`; stopped by PID."""

    def __init__(self, folder, nodes: dict[str, int]) -> None:
        self.port, self.socket = free_port(), str(folder / "haproxy.sock")
        config = (ROOT / "deploy" / "haproxy.cfg").read_text()
        config = config.replace("/run/haproxy/admin.sock", self.socket)
        config = config.replace("bind :80", f"bind 127.0.0.1:{self.port}")
        servers = "".join(f"    server {name} 127.0.0.1:{port} check\n" for name, port in nodes.items())
        config = "\n".join(line for line in config.splitlines() if not line.strip().startswith("server ")) + "\n"
        (folder / "haproxy.cfg").write_text(config + servers)
        self.process = subprocess.Popen([system_program("haproxy"), "-db", "-f", str(folder / "haproxy.cfg")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.process)

    def state(self, node: str) -> str:
        """UP, DOWN or another state of `node`, as HAProxy's stats socket shows it."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(self.socket)
            sock.sendall(b"show stat\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        for row in answer.decode().splitlines():
            fields = row.split(",")
            if len(fields) > 17 and fields[1] == node:
                return fields[17].split()[0]
        raise AssertionError(answer.decode())

    def wait_for(self, node: str, state: str) -> None:
        """Until the balancer sees `node` in `state` (its checks run every second)."""
        deadline = time.monotonic() + 30
        while self.state(node) != state:
            assert time.monotonic() < deadline, self.state(node)
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def node(tmp_path, name: str, smtp_port: int, port: int | None = None) -> Gunicorn:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    options = OptionsFile(folder / "options.ini", smtp_port)
    options.write(admin={"username": "ops", "password": "secret"}, server={"node_name": name})
    return Gunicorn(options.path, folder, port=port)


def delivered_by(node: Gunicorn) -> int:
    status, _, body = node.request("GET", "/genesys/1/admin/", headers={**ADMIN, "Accept": "application/json"})
    return json.loads(body)["last_hour"]["delivered"]


def drain(node: Gunicorn, status: str) -> None:
    """The documented drain and undrain: aimed at the node itself, never through the balancer."""
    answer = node.request("POST", f"/genesys/1/admin/node/changestatus/{status}", headers=ADMIN)
    assert answer[0] == 200 and answer[1]["X-Node-Name"] in ("a", "b")


def post_through(balancer: Haproxy) -> tuple[int, dict]:
    body, content_type = multipart(list(GOOD_FORM.items()))
    connection = http.client.HTTPConnection("127.0.0.1", balancer.port, timeout=60)
    try:
        connection.request("POST", "/genesys/2/email/support", body, {"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.fixture
def two_nodes(tmp_path, smtp_server):
    nodes = {"a": node(tmp_path, "a", smtp_server.port), "b": node(tmp_path, "b", smtp_server.port)}
    balancer = Haproxy(tmp_path, {name: each.port for name, each in nodes.items()})
    yield balancer, nodes
    balancer.stop()
    for each in nodes.values():
        each.stop()


def test_a_drained_node_gets_no_more_forms_once_the_balancer_sees_it(two_nodes, smtp_server):
    balancer, nodes = two_nodes
    balancer.wait_for("a", "UP"), balancer.wait_for("b", "UP")
    assert [post_through(balancer)[1]["statusCode"] for _ in range(2)] == [0, 0]
    drain(nodes["a"], "OFFLINE")
    balancer.wait_for("a", "DOWN")
    before = delivered_by(nodes["a"])
    answers = [post_through(balancer) for _ in range(8)]
    assert all(status == 200 and answer["statusCode"] == 0 for status, answer in answers)
    assert delivered_by(nodes["a"]) == before  # all eight went to b


def test_an_upgrade_by_the_documented_steps_cuts_no_form(two_nodes, smtp_server, tmp_path):
    """Four posts a second through the balancer while node a is drained, restarted and undrained."""
    balancer, nodes = two_nodes
    balancer.wait_for("a", "UP"), balancer.wait_for("b", "UP")
    answers: list[tuple[int, dict] | Exception] = []
    done = threading.Event()

    def post_four_a_second() -> None:
        while not done.is_set():
            try:
                answers.append(post_through(balancer))
            except Exception as exc:  # noqa: BLE001 - a cut is what this test counts
                answers.append(exc)
            done.wait(0.25)

    poster = threading.Thread(target=post_four_a_second)
    poster.start()
    try:
        drain(nodes["a"], "OFFLINE")          # 1. drain the node, at the node itself
        balancer.wait_for("a", "DOWN")        # 2. wait until the balancer sees it
        port = nodes["a"].port
        nodes["a"].stop()                     # 3. restart it (systemctl restart email-api)
        nodes["a"] = node(tmp_path, "a", smtp_server.port, port)
        drain(nodes["a"], "ONLINE")           # 4. undrain, and wait until the balancer sends to it again
        balancer.wait_for("a", "UP")
        posted = len(answers)
        while len(answers) < posted + 4:  # a few more posts with both nodes up
            time.sleep(0.05)
    finally:
        done.set()
        poster.join()
    cut = [answer for answer in answers if not (isinstance(answer, tuple) and answer[0] == 200
                                                 and answer[1]["statusCode"] == 0)]
    assert len(answers) >= 8 and cut == []
    assert len(smtp_server.messages) == len(answers)
