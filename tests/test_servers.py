"""The service as operators and newcomers run it: under the real gunicorn, and as the local run."""
from __future__ import annotations

import http.client
import io
import json
import mailbox
import os
import re
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from support import DATA, PDF, ROOT, Gunicorn, encoded_form, free_port, multipart


def start(command: list[str], ready: str, env: dict[str, str]) -> subprocess.Popen:
    """Start a server and return once it printed `ready` on stderr."""
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if ready in line:
            return process
    process.wait()
    raise AssertionError("server did not start:\n" + "".join(seen))


def stop(process: subprocess.Popen) -> str:
    process.terminate()
    return process.communicate(timeout=30)[1]


def replay(port: int, raw: bytes) -> tuple[int, http.client.HTTPMessage, bytes]:
    """Send raw request bytes over a socket; the answer's status, headers and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.headers, response.read()


@pytest.fixture
def gunicorn(options_file, tmp_path):
    """The real gunicorn serving wsgi:app with two gthread workers (no configuration file); its port."""
    node = Gunicorn(options_file.path, tmp_path, ("--workers", "2", "--worker-class", "gthread", "--threads", "4"))
    yield node.port
    node.stop()


@pytest.mark.e2e
def test_chromium_sendmessage_request_is_delivered_through_gunicorn(gunicorn, options_file, smtp_server):
    options_file.write(cors={"allowed_origins": "http://127.0.0.1:8766"}, security={"api_keys": "k-123"})
    status, headers, body = replay(gunicorn, (DATA / "chromium-sendmessage-request.http").read_bytes())
    assert status == 200
    assert headers["Content-Type"] == "application/json;charset=utf-8"
    assert headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:8766"
    answer = json.loads(body)
    assert answer["statusCode"] == 0
    [received] = smtp_server.messages
    email = received.email
    assert email["X-Genesys-Interaction-Id"] == answer["interactionId"]
    assert email["From"] == "Ana María Lee <ana@example.com>"
    assert email["Subject"] == "Facture n°17 — question"
    assert email.get_all("X-Genesys-User-Data") == ["orderId=A-17", "note=x=y"]
    assert email.get_body(("plain",)).get_content() == "Bonjour,\r\nline two\r\n"
    files = [(part.get_filename(), part.get_content_type(), part.get_payload(decode=True)[:4])
             for part in email.iter_attachments()]
    assert files == [("pixel.png", "image/png", b"\x89PNG"), ("Счёт №5.pdf", "application/pdf", b"%PDF")]


@pytest.mark.e2e
def test_oversized_content_length_is_answered_without_the_body(gunicorn, options_file, smtp_server):
    options_file.write(email={"max_size": "1KB"})
    head = (f"POST /genesys/2/email/support HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {50 * 1024 * 1024}\r\n\r\n").encode()
    status, headers, body = replay(gunicorn, head)
    assert status == 400
    assert json.loads(body)["errors"][0]["code"] == 202


@pytest.mark.e2e
@pytest.mark.parametrize("config", ([], ["-c", "deploy/gunicorn.conf.py"]), ids=("plain", "deploy-config"))
def test_gunicorn_refuses_to_start_with_a_broken_options_file(options_file, tmp_path, config):
    options_file.write("[email]\nmailbox = nobody@\nmax_files = lots\n")
    environment = {**os.environ, "OPTIONS_FILE": str(options_file.path)}
    if config:
        environment["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    process = subprocess.run(Gunicorn.command((*config, "--workers", "1"), free_port()), cwd=ROOT, env=environment,
                             capture_output=True, text=True, timeout=60)
    assert process.returncode != 0
    assert "[email] mailbox" in process.stderr and "[email] max_files" in process.stderr


def test_local_run_stores_the_email_in_a_maildir(tmp_path):
    smtp_port, http_port = free_port(), free_port()
    options = tmp_path / "options.ini"
    options.write_text(f"[email]\nmailbox = support@example.com\n[smtp]\nport = {smtp_port}\n")
    command = [sys.executable, "-m", "app", "--port", str(http_port), "--maildir", str(tmp_path / "maildir"),
               "--options", str(options)]
    process = start(command, "Running on", {})
    try:
        body, content_type = multipart([("firstName", "Ana"), ("lastName", "Lee"), ("fromAddress", "ana@example.com"),
                                        ("subject", "Hi"), ("text", "Hello"), ("userData", "order=A-17"),
                                        ("files", ("invoice.pdf", PDF))])
        connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)
        connection.request("POST", "/genesys/2/email/support", body, {"Content-Type": content_type})
        assert b'"statusCode": 0' in connection.getresponse().read()
    finally:
        log = stop(process)
    [stored] = list(mailbox.Maildir(tmp_path / "maildir"))
    email = message_from_bytes(stored.as_bytes(), policy=policy.default)
    assert email["X-Genesys-User-Data"] == "order=A-17"
    assert next(email.iter_attachments()).get_payload(decode=True) == PDF
    assert "stored an email" in log


@pytest.mark.e2e
def test_the_deploy_config_starts_cleanly_for_a_user_without_a_home(options_file, tmp_path):
    """As under the shipped systemd unit: a system user whose home cannot be written. gunicorn 25.1+ would
    open its control socket there and log a permission error at every start. (Stopped once every worker has
    booted: a TERM that reaches a worker while it boots is lost, and gunicorn then waits graceful_timeout.)"""
    home = tmp_path / "home"
    home.mkdir(mode=0o500)
    node = Gunicorn(options_file.path, tmp_path, environment={"HOME": str(home), "XDG_RUNTIME_DIR": ""})
    log = node.stop()
    assert not re.search(r"control socket|permission denied", log, re.I), log
    assert not (home / ".gunicorn").exists()


def test_the_readme_curl_example_is_delivered_with_its_sample_attachment(client, smtp_server):
    """The README's curl command, with the sample attachment it names, as the Flask test client sends it."""
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"```sh\n(curl .*?)\n```", readme, re.S)[1]
    fields = re.findall(r"-F (\w+)=([^\s@][^\s]*)", command)
    files = re.findall(r"-F files=@(\S+)", command)
    data = dict(fields) | {"files": [(io.BytesIO((ROOT / name).read_bytes()), Path(name).name) for name in files]}
    response = client.post("/genesys/2/email/support", data=data, content_type="multipart/form-data")
    assert response.get_json()["statusCode"] == 0
    [attachment] = smtp_server.messages[0].email.iter_attachments()
    assert attachment.get_filename() == "invoice.pdf"
    assert attachment.get_payload(decode=True) == (ROOT / "examples" / "invoice.pdf").read_bytes()


def test_the_local_run_says_its_version():
    result = subprocess.run([sys.executable, "-m", "app", "--version"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert re.fullmatch(r"python -m app \d+\.\d+\.\d+ \(commit [0-9a-f]{40}\)\n", result.stdout)
    assert commit in result.stdout


@pytest.mark.e2e
def test_a_request_waiting_on_a_stalled_relay_leaves_its_worker_to_the_next_request(options_file, tmp_path,
                                                                                      smtp_server):
    """Under the deploy config a worker's requests take turns (app/turns.py); one that waits on the relay (here
    until its 10 s timeout) does not keep the turn from the next one, which the same worker delivers meanwhile."""
    options_file.write(smtp={"timeout": "10"})
    node = Gunicorn(options_file.path, tmp_path, workers=1)
    try:
        smtp_server.faults["END"] = "stall"
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(node.post, *encoded_form(subject="the first question"))
            assert smtp_server.reached["END"].wait(30)
            del smtp_server.faults["END"]
            status, answer = node.post(*encoded_form(subject="the second question"))
            answered_meanwhile = not first.done()
            assert (status, answer["statusCode"], answered_meanwhile) == (200, 0, True)
            assert first.result()[1]["statusCode"] == 1
    finally:
        node.stop()
    assert [message.raw.count(b"the second question") for message in smtp_server.messages] == [1]

