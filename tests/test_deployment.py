"""End to end: nginx (deploy/nginx.conf) → gunicorn (deploy/gunicorn.conf.py) → Postfix → a Maildir.

The same files and steps as docs/deployment.md, on loopback ports, with a Postfix
instance of the test's own that delivers to a Maildir instead of relaying onward.
"""
from __future__ import annotations

import base64
import http.client
import json
import mailbox
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from email import message_from_bytes, policy
from pathlib import Path

import pytest
import trustme
from support import (
    GOOD_FORM,
    PDF,
    PNG,
    ROOT,
    Gunicorn,
    free_port,
    hostile_corpus,
    metric,
    multipart,
    system_program,
    wait_for_port,
)

NGINX, POSTFIX = system_program("nginx"), system_program("postfix")
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not (NGINX and POSTFIX),
                                reason="needs nginx and postfix (Debian packages; .ci/run installs them)")]
ADMIN = ("ops", "drain-me")

POSTFIX_MAIN = """\
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = relay.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
message_size_limit = 52428800
virtual_mailbox_limit = 0
virtual_mailbox_domains = example.com
virtual_mailbox_base = {root}/mail
virtual_mailbox_maps = static:maildir/
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 1
maillog_file_prefixes = {root}
maillog_file = {root}/maillog
"""
POSTFIX_SERVICES = ("pickup unix n - n 60 1 pickup", "cleanup unix n - n - 0 cleanup", "qmgr unix n - n 300 1 qmgr",
                    "rewrite unix - - n - - trivial-rewrite", "bounce unix - - n - 0 bounce",
                    "defer unix - - n - 0 bounce", "trace unix - - n - 0 bounce", "verify unix - - n - 1 verify",
                    "flush unix n - n 1000? 0 flush", "proxymap unix - - n - - proxymap",
                    "showq unix n - n - - showq", "error unix - - n - - error", "retry unix - - n - - error",
                    "discard unix - - n - - discard", "virtual unix - n n - - virtual",
                    "anvil unix - - n - 1 anvil", "scache unix - - n - 1 scache",
                    "postlog unix-dgram n - n - 1 postlogd", "smtp unix - - n - - smtp")
NGINX_MAIN = """\
daemon off;
user root;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log;
events {{ worker_connections 512; }}
http {{
    access_log {root}/nginx-access.log;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    include {root}/site.conf;
}}
"""


class Chain:
    """The running chain and what a test needs to talk to it and read what arrived."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.maildir = root / "postfix" / "mail" / "maildir"
        self.options = root / "options.ini"
        self.smtp_port, self.nginx_port = free_port(), free_port()
        self.tls_port = free_port()
        self.tls_context: ssl.SSLContext | None = None

    def write_options(self, sales_max_files: int = 3, smtp_port: int | None = None, timeout: float = 10) -> None:
        temporary = self.options.with_suffix(".tmp")
        temporary.write_text(
            f"[email]\nmailbox = support@example.com\nallowed_mailboxes = *@partner.example\n"
            f"[email.sales]\nmailbox = sales@example.com\nmax_files = {sales_max_files}\n"
            f"[smtp]\nhost = 127.0.0.1\nport = {smtp_port or self.smtp_port}\nhelo_name = node1.test\n"
            f"timeout = {timeout}\n"
            f"[admin]\nusername = {ADMIN[0]}\npassword = {ADMIN[1]}\n"
            f"[server]\nreload_interval = 0.2\nproxy_hops = 1\nstatus_file = {self.root}/node.status\n"
        )
        os.replace(temporary, self.options)

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                source: str = "127.0.0.1", tls: bool = False) -> tuple[int, bytes]:
        if tls:
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", self.tls_port, timeout=60, context=self.tls_context)
        else:
            connection = http.client.HTTPConnection("127.0.0.1", self.nginx_port, timeout=60,
                                                    source_address=(source, 0))
        try:
            connection.request(method, path, body, headers or {})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def post_form(self, files: list[tuple[str, bytes]] = (), service: str = "support", source: str = "127.0.0.1",
                  **fields: str) -> tuple[int, dict]:
        form = {**GOOD_FORM, **fields}
        body, content_type = multipart(list(form.items()) + [("files", f) for f in files])
        status, answer = self.request("POST", f"/genesys/2/email/{service}", body, {"Content-Type": content_type},
                                      source)
        return status, json.loads(answer)

    def options_versions(self) -> dict[str, float]:
        """The options version each worker serves, from /metrics (the master left out)."""
        page = self.request("GET", "/metrics")[1].decode()
        return {pid: float(version) for pid, version in re.findall(r'^email_options_version\{pid="(\d+)"\} (\S+)',
                                                                   page, re.M) if pid != str(self.gunicorn.process.pid)}

    def edit_options(self, **changes) -> None:
        """Write the options and wait until every worker serves them."""
        before = max(self.options_versions().values())
        self.write_options(**changes)
        deadline = time.monotonic() + 30
        while not all(version > before for version in self.options_versions().values()):
            assert time.monotonic() < deadline, "the workers never took the edit"
            time.sleep(0.05)

    def delivered(self, interaction_ids: set[str], timeout: float = 20) -> dict[str, object]:
        """Wait until Postfix has put an email for each id in the Maildir; the emails by id."""
        deadline = time.monotonic() + timeout
        while True:
            found = {}
            if all((self.maildir / part).is_dir() for part in ("tmp", "new", "cur")):  # Postfix makes them one by one
                for message in mailbox.Maildir(self.maildir, create=False):
                    email = message_from_bytes(message.as_bytes(), policy=policy.default)
                    found.setdefault(email["X-Genesys-Interaction-Id"], []).append(email)
            if interaction_ids <= found.keys():
                return found
            if time.monotonic() > deadline:
                log = (self.root / "postfix" / "maillog").read_text()[-3000:]
                raise AssertionError(f"{interaction_ids - found.keys()} not delivered; Postfix's log ends:\n{log}")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def chain():
    """Postfix, gunicorn with the deploy configuration and nginx with the deploy site, on free loopback ports."""
    # Postfix's own user must reach its data directory: pytest's temporary folders are private to root.
    root = Path(tempfile.mkdtemp(prefix="email-api-deployment-"))
    root.chmod(0o755)
    chain = Chain(root)
    postfix_root = chain.root / "postfix"
    (postfix_root / "etc").mkdir(parents=True)
    (postfix_root / "spool").mkdir()
    for owned_by_postfix in ("data", "mail"):
        (postfix_root / owned_by_postfix).mkdir()
        shutil.chown(postfix_root / owned_by_postfix, "postfix", "postfix")
    postfix_user = pwd.getpwnam("postfix")
    (postfix_root / "etc" / "main.cf").write_text(
        POSTFIX_MAIN.format(root=postfix_root, uid=postfix_user.pw_uid, gid=postfix_user.pw_gid))
    (postfix_root / "etc" / "master.cf").write_text(
        f"127.0.0.1:{chain.smtp_port} inet n - n - - smtpd\n" + "\n".join(POSTFIX_SERVICES) + "\n")
    postfix = [POSTFIX, "-c", str(postfix_root / "etc")]
    subprocess.run(postfix + ["check"], check=True)
    postfix_process = subprocess.Popen(postfix + ["start-fg"])
    wait_for_port(chain.smtp_port, postfix_process)

    chain.write_options()
    chain.gunicorn = Gunicorn(chain.options, chain.root, environment={"GUNICORN_THREADS": "4"})
    chain.log = chain.gunicorn.log

    site = (ROOT / "deploy" / "nginx.conf").read_text()
    site = site.replace("listen 80;", f"listen 127.0.0.1:{chain.nginx_port};")
    site = site.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{chain.gunicorn.port};")
    authority = trustme.CA()  # in place of Debian's snakeoil pair, which a test machine may not have
    authority.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(chain.root / "tls.pem"))
    chain.tls_context = ssl.create_default_context()
    authority.configure_trust(chain.tls_context)
    site = site.replace("listen 443 ssl;", f"listen 127.0.0.1:{chain.tls_port} ssl;")
    site = site.replace("/etc/ssl/certs/ssl-cert-snakeoil.pem", str(chain.root / "tls.pem"))
    site = site.replace("/etc/ssl/private/ssl-cert-snakeoil.key", str(chain.root / "tls.pem"))
    (chain.root / "site.conf").write_text(site)
    (chain.root / "nginx.conf").write_text(NGINX_MAIN.format(root=chain.root))
    subprocess.run([NGINX, "-t", "-q", "-c", str(chain.root / "nginx.conf")], check=True)
    nginx = subprocess.Popen([NGINX, "-c", str(chain.root / "nginx.conf")])
    wait_for_port(chain.nginx_port, nginx)
    yield chain
    nginx.terminate()
    chain.gunicorn.stop()
    subprocess.run(postfix + ["stop"], check=False)
    for process in (nginx, postfix_process):
        process.wait(timeout=60)
    shutil.rmtree(root)


def test_three_attachments_land_in_the_maildir_byte_identical(chain):
    files = [("invoice.pdf", PDF), ("pixel.png", PNG), ("notes.txt", "Grüße\r\n".encode())]
    status, answer = chain.post_form(files, userData="order=A-17")
    assert (status, answer["statusCode"]) == (200, 0)
    [email] = chain.delivered({answer["interactionId"]})[answer["interactionId"]]
    assert [(p.get_filename(), p.get_payload(decode=True)) for p in email.iter_attachments()] == files
    assert email["X-Genesys-User-Data"] == "order=A-17"
    assert email["Message-ID"] == f"<{answer['interactionId']}@node1.test>"


def test_a_browser_posting_over_https_is_served_as_https(chain):
    """TLS ends at nginx; the service learns the scheme from X-Forwarded-Proto, so a form served from its own
    https origin is same-origin there, and the same Origin over plain http is foreign."""
    body, content_type = multipart(list(GOOD_FORM.items()))
    own = {"Content-Type": content_type, "Origin": f"https://127.0.0.1:{chain.tls_port}"}
    status, answer = chain.request("POST", "/genesys/2/email/support", body, own, tls=True)
    assert (status, json.loads(answer)["statusCode"]) == (200, 0)
    chain.delivered({json.loads(answer)["interactionId"]})
    claimed = {"Content-Type": content_type, "Origin": f"https://127.0.0.1:{chain.nginx_port}",
               "X-Forwarded-Proto": "https"}  # plain http, a client claiming https: nginx appends the truth
    status, answer = chain.request("POST", "/genesys/2/email/support", body, claimed)
    assert (status, json.loads(answer)["errors"][0]["code"]) == (403, 617)


def test_an_upload_just_under_the_limit_lands_and_one_over_is_202(chain):
    big = PDF + b"\0" * (int(9.5 * 1024 * 1024) - len(PDF))
    status, answer = chain.post_form([("big.pdf", big)], source="127.0.0.11")
    assert (status, answer["statusCode"]) == (200, 0)
    [email] = chain.delivered({answer["interactionId"]})[answer["interactionId"]]
    assert next(email.iter_attachments()).get_payload(decode=True) == big
    status, answer = chain.post_form([("huge.pdf", PDF + b"\0" * (11 * 1000 * 1000))], source="127.0.0.11")
    assert status == 400
    assert answer["errors"][0]["code"] == 202 and answer["errors"][0]["advice"] == 10 * 1024 * 1024


def test_the_logged_client_address_is_the_one_nginx_saw(chain):
    status, answer = chain.post_form(source="127.0.0.42")
    line = chain.log.wait_for(answer["interactionId"], '"event": "request"')
    assert json.loads(line)["client"] == "127.0.0.42"


def test_drain_and_undrain_through_nginx(chain):
    auth = {"Authorization": "Basic " + base64.b64encode(":".join(ADMIN).encode()).decode()}
    assert chain.request("POST", "/genesys/1/admin/node/changestatus/OFFLINE", headers=auth)[0] == 200
    assert [chain.request("GET", "/genesys/1/node")[0] for _ in range(6)] == [503] * 6
    assert chain.request("GET", "/genesys/1/admin/node/status", headers=auth) == (200, b"OFFLINE")
    chain.request("POST", "/genesys/1/admin/node/changestatus/ONLINE", headers=auth)
    assert [chain.request("GET", "/genesys/1/node")[0] for _ in range(6)] == [200] * 6


def test_a_hup_while_requests_flow_loses_none(chain):
    def post(i: int) -> dict:
        if i == 12:
            chain.gunicorn.process.send_signal(signal.SIGHUP)
        return chain.post_form(source=f"127.0.1.{i % 50 + 1}")[1]

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(post, range(60)))
    assert [a["statusCode"] for a in answers] == [0] * 60
    ids = {a["interactionId"] for a in answers}
    delivered = chain.delivered(ids)
    assert all(len(delivered.get(i, [])) == 1 for i in ids)
    chain.log.wait_for("Handling signal: hup")


def test_workers_started_while_the_file_is_broken_keep_serving(chain):
    broken = chain.options.with_suffix(".broken")
    broken.write_text("[email]\nmailbox = nobody@\n")
    os.replace(broken, chain.options)
    workers = chain.gunicorn.workers()
    chain.gunicorn.process.send_signal(signal.SIGHUP)  # new workers, forked from the master that loaded good options
    chain.gunicorn.wait_for_workers(replacing=workers)
    answers = [chain.post_form(source=f"127.0.5.{i + 1}")[1] for i in range(6)]
    assert [a["statusCode"] for a in answers] == [0] * 6
    chain.log.wait_for("reload refused")
    chain.write_options()


def test_an_options_edit_reaches_every_worker(chain):
    files = [(f"{i}.pdf", PDF) for i in range(3)]
    assert chain.post_form(files, service="sales", source="127.0.2.1")[1]["statusCode"] == 0
    chain.edit_options(sales_max_files=2)  # waits until every worker serves the edit
    answers = [chain.post_form(files, service="sales", source=f"127.0.2.{i + 2}")[1] for i in range(12)]
    assert [a["errors"][0]["advice"] for a in answers] == [2] * 12
    chain.write_options()


def test_metrics_count_what_was_sent_across_workers(chain):
    page = chain.request("GET", "/metrics")[1].decode()
    before = metric(page, "email_requests_total", outcome="delivered")
    answers = [chain.post_form(source=f"127.0.3.{i + 1}")[1] for i in range(8)]
    assert all(a["statusCode"] == 0 for a in answers)
    page = chain.request("GET", "/metrics")[1].decode()
    assert metric(page, "email_requests_total", outcome="delivered") == before + 8
    assert metric(page, "email_smtp_round_trip_seconds_count") >= 8
    versions = re.findall(r'^email_options_version\{pid="(\d+)"\} \S+', page, re.M)
    assert len(set(versions) - {str(chain.gunicorn.process.pid)}) >= 2  # one line per worker


def test_floods_get_json_429(chain):
    statuses = []
    for _ in range(40):
        status, body = chain.request("POST", "/genesys/2/email/support", b"", source="127.0.4.1")
        statuses.append(status)
        if status == 429:
            assert json.loads(body)["errors"][0]["code"] == 610
    assert 429 in statuses and statuses[0] != 429


def test_unknown_paths_and_metrics_from_outside_are_json(chain):
    status, body = chain.request("GET", "/index.html")
    assert status == 404 and json.loads(body)["errors"][0]["code"] == 611
    status, body = chain.request("GET", "/metrics", source="127.0.0.9")
    assert status == 403 and json.loads(body)["statusCode"] == 2


def raw_exchange(port: int, raw: bytes, half_close: bool = True) -> tuple[int, bytes, bytes]:
    """Send raw bytes to nginx (then end the sending side, unless a whole request waits for its answer); the
    status, the headers and the body of its answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw)
        if half_close:  # nginx takes a closed side for a client that gave up, once it proxies
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), head, body


@pytest.mark.parametrize("raw", (
    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # 414
    b"POST /genesys/2/email HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",  # 501
    b"GET / HTTP/2.7\r\nHost: x\r\n\r\n",  # 505
    b"GET /genesys/%00 HTTP/1.1\r\nHost: x\r\n\r\n",  # a NUL in the path
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"GET /genesys/1/node?" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # within nginx's, over gunicorn's line
    b"GET /genesys/2/email/" + b"a" * 8000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
), ids=("414", "501", "505", "nul-path", "bad-length", "uri-5000", "uri-8000"))
def test_every_answer_nginx_gives_is_json(chain, raw):
    status, head, body = raw_exchange(chain.nginx_port, raw)
    assert status >= 400 and b"application/json" in head.lower(), head
    assert json.loads(body)["statusCode"] in (1, 2)


@pytest.mark.parametrize("extra", (
    [(f"X-Filler-{n}", "v") for n in range(120)],  # more fields than gunicorn's 100
    [("X-Forwarded-Ssl", "on")], [("X-Forwarded-Protocol", "ssl")],  # gunicorn's own scheme headers
), ids=("120-fields", "x-forwarded-ssl", "x-forwarded-protocol"))
def test_headers_a_client_adds_never_reach_gunicorn(chain, extra):
    body, content_type = multipart(list(GOOD_FORM.items()))
    head = "".join(f"{name}: {value}\r\n" for name, value in [("Content-Type", content_type), *extra])
    raw = (f"POST /genesys/2/email/support HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Content-Length: {len(body)}\r\n"
           "Connection: close\r\n\r\n").encode() + body
    status, response_head, answer = raw_exchange(chain.nginx_port, raw, half_close=False)
    assert (status, json.loads(answer)["statusCode"]) == (200, 0), response_head


def test_the_admin_api_is_for_this_host_only(chain):
    auth = {"Authorization": "Basic " + base64.b64encode(":".join(ADMIN).encode()).decode()}
    status, body = chain.request("POST", "/genesys/1/admin/node/changestatus/OFFLINE", headers=auth,
                                 source="127.0.0.77")
    assert status == 403 and json.loads(body)["statusCode"] == 2
    assert chain.request("GET", "/genesys/1/node")[0] == 200


def test_wrong_admin_passwords_are_rate_limited(chain):
    auth = {"Authorization": "Basic " + base64.b64encode(b"ops:guess").decode()}
    statuses = [chain.request("GET", "/genesys/1/admin/node/status", headers=auth)[0] for _ in range(30)]
    assert 429 in statuses and set(statuses) <= {401, 429}


def test_a_cross_site_drain_with_cached_credentials_is_refused(chain):
    auth = {"Authorization": "Basic " + base64.b64encode(":".join(ADMIN).encode()).decode(),
            "Origin": "https://evil.example"}
    status, body = chain.request("POST", "/genesys/1/admin/node/changestatus/OFFLINE", headers=auth)
    assert status in (403, 429) and json.loads(body)["statusCode"] == 2
    assert chain.request("GET", "/genesys/1/node")[0] == 200


def test_a_relay_that_trickles_gets_a_json_retry_through_nginx_not_a_proxy_error(chain):
    from aiosmtpd.controller import Controller
    from support import TrickleHandler

    relay = Controller(TrickleHandler("MAIL", every=0.25), hostname="127.0.0.1", port=free_port())
    relay.start()
    try:
        chain.edit_options(smtp_port=relay.port, timeout=1)
        status, answer = chain.post_form(source="127.0.6.1")
    finally:
        chain.edit_options()
        relay.stop()
    assert (status, answer["statusCode"]) == (200, 1) and set(answer) == {"statusCode", "message"}


def test_the_hostile_corpus_through_nginx_gets_json_answers_and_delivers_nothing(chain):
    page = chain.request("GET", "/metrics")[1].decode()
    delivered = metric(page, "email_requests_total", outcome="delivered")
    answers = []
    for i, attack in enumerate(hostile_corpus()):
        headers = {**attack["headers"], "Host": f"127.0.0.1:{chain.nginx_port}"}
        status, body = chain.request("POST", attack["path"], attack["body"], headers, source=f"127.0.7.{i + 1}")
        answer = json.loads(body)  # every answer is JSON
        answers.append((attack["attack"], status, sorted(e["code"] for e in answer.get("errors", []))))
    assert [a for a in answers if a[1] >= 500] == []
    expected = [(a["attack"], a["http"], sorted(a["codes"])) for a in hostile_corpus()]
    assert answers == expected
    page = chain.request("GET", "/metrics")[1].decode()
    assert metric(page, "email_requests_total", outcome="delivered") == delivered
