"""The local run (`python -m app`): its embedded SMTP server, the mailbox pages at /mailbox/, and --relay."""
from __future__ import annotations

import argparse
import base64
import html
import json
import mailbox
import os
import re
import smtplib
import socket
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest
from aiosmtpd.controller import Controller
from support import GOOD_FORM, PDF, ROOT, free_port, post_form, wait_for_port

from app import create_app
from app.local.maildir import MaildirHandler
from app.local.run import local_app, main, relay_address


@pytest.fixture
def maildir(tmp_path, options_file):
    """The embedded SMTP server of the local run, keeping mail in a Maildir, where [smtp] points."""
    folder = tmp_path / "maildir"
    controller = Controller(MaildirHandler(folder), hostname="127.0.0.1", port=free_port())
    controller.start()
    options_file.write(smtp={"port": str(controller.port)})
    yield folder
    controller.stop()


@pytest.fixture
def local(maildir, options_file):
    """A test client of the local run's app."""
    return local_app(str(options_file.path), maildir).test_client()


def send(client, files=(), extra=(), **changes):
    """Post the known-good form, changed; the interaction id of the answer."""
    answer = post_form(client, files=files, extra=extra, **changes).get_json()
    assert answer["statusCode"] == 0, answer
    return answer["interactionId"]


def rows(page: str) -> list[list[str]]:
    """The cells of the list's table body, as text."""
    body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]
    return [[html.unescape(re.sub(r"<[^>]+>", "", cell)).strip() for cell in row] for row in cells]


def test_the_mailbox_lists_the_captured_emails_newest_first(local):
    assert "No email yet" in local.get("/mailbox/").text
    first = send(local, subject="First question")
    second = send(local, subject="Second question", firstName="Zoë", files=[("invoice.pdf", PDF)])
    [newest, oldest] = rows(local.get("/mailbox/").text)
    assert newest[1:] == ["Zoë Lee <ana@example.com>", "Second question", second, "1"]
    assert oldest[1:] == ["Ana Lee <ana@example.com>", "First question", first, "0"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", newest[0])


def test_one_email_shows_its_headers_user_data_text_attachments_and_source(local, maildir):
    interaction_id = send(local, files=[("invoice.pdf", PDF)],
                          extra=[("userData", "order=A-17"), ("userData", "note=line one\r\nline two"),
                                 ("userData[Счёт]", "№5 <b>")])
    page = local.get(f"/mailbox/{interaction_id}")
    assert page.status_code == 200 and page.mimetype == "text/html"
    text = html.unescape(page.text)
    for shown in ("Ana Lee <ana@example.com>", "support@example.com", "Invoice question", interaction_id,
                  "Return-Path", "Hello,\r\nmy invoice is wrong.", "invoice.pdf", "application/pdf"):
        assert shown in text
    pairs = re.findall(r'<td class="key">(.*?)</td><td class="value">(.*?)</td>',
                       page.text.split('id="user-data"', 1)[1].split("</table>", 1)[0], re.S)
    assert [(html.unescape(k), html.unescape(v)) for k, v in pairs] == [
        ("order", "A-17"), ("note", "line one\r\nline two"), ("Счёт", "№5 <b>")]
    download = local.get(f"/mailbox/{interaction_id}/attachments/1")
    assert download.data == PDF and download.mimetype == "application/pdf"
    assert download.headers["Content-Disposition"] == "attachment; filename=invoice.pdf"
    [stored] = (maildir / "new").iterdir()
    assert local.get(f"/mailbox/{interaction_id}/raw").data == stored.read_bytes()
    assert local.get(f"/mailbox/{stored.name}").status_code == 200  # by Maildir key, too


def test_a_strangers_markup_is_shown_as_text_and_runs_nothing(local):
    interaction_id = send(local, subject="<script>alert(1)</script>", text="<img src=x onerror=alert(2)>",
                          extra=[("userData", "k=<iframe src=//evil>")])
    for path in ("/mailbox/", f"/mailbox/{interaction_id}"):
        page = local.get(path)
        assert "<script>" not in page.text and "<img" not in page.text and "<iframe" not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]  # default-src does not cover it
        assert page.headers["X-Content-Type-Options"] == "nosniff"


def test_an_unknown_email_or_attachment_is_404(local):
    interaction_id = send(local)
    for path in ("/mailbox/NOSUCHEMAIL00000", f"/mailbox/{interaction_id}/attachments/1", "/mailbox/../x"):
        assert local.get(path).status_code == 404


def test_the_mailbox_is_never_served_by_the_production_app(options_file, maildir):
    assert create_app(options_file.path).test_client().get("/mailbox/").status_code == 404
    assert "mailbox" not in (ROOT / "wsgi.py").read_text()


def test_relay_sends_to_another_server_than_smtp_names(options_file, maildir, smtp_server):
    client = local_app(str(options_file.path), maildir, relay=("127.0.0.1", smtp_server.port)).test_client()
    interaction_id = send(client)
    assert smtp_server.messages[0].email["X-Genesys-Interaction-Id"] == interaction_id
    assert not (maildir / "new").exists() or not any((maildir / "new").iterdir())
    assert "delivers to the relay 127.0.0.1:" in client.get("/mailbox/").text


@pytest.mark.parametrize(("text", "address"), (("localhost:1025", ("localhost", 1025)), ("[::1]:25", ("::1", 25)),
                                               ("mail.example.com:587", ("mail.example.com", 587))))
def test_relay_takes_host_and_port(text, address):
    assert relay_address(text) == address


@pytest.mark.parametrize("text", ("localhost", ":25", "host:0", "host:70000", "host:smtp", "::1:25",
                                  "host:\uff12\uff15", "ho\r\nst:25", "h\u00f6st:25", "[not-ipv6]:25"))
def test_a_bad_relay_is_refused_before_anything_starts(text, capsys):
    with pytest.raises(SystemExit) as exited:  # argparse's exit, before the options are read
        main(["--relay", text])
    assert exited.value.code == 2 and "expected HOST:PORT" in capsys.readouterr().err
    with pytest.raises(argparse.ArgumentTypeError):
        relay_address(text)


def test_python_m_app_relay_delivers_to_that_relay(options_file, smtp_server, tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port), "--options", str(options_file.path),
                               "--maildir", str(tmp_path / "unused"), "--relay", f"127.0.0.1:{smtp_server.port}"],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, server)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/genesys/2/email/support",
                                         urllib.parse.urlencode(GOOD_FORM).encode())
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["statusCode"] == 0
    finally:
        server.terminate()
        log = server.communicate(timeout=10)[1]
    assert len(smtp_server.messages) == 1
    assert f"delivering to the relay 127.0.0.1:{smtp_server.port}" in log


def test_a_taken_smtp_port_is_one_clear_line_not_a_traceback(options_file, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        options_file.write(smtp={"port": str(taken.getsockname()[1])})
        result = subprocess.run([sys.executable, "-m", "app", "--port", str(free_port()), "--options",
                                 str(options_file.path), "--maildir", str(tmp_path / "maildir")],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "The embedded SMTP server cannot listen on 127.0.0.1:" in result.stderr
    assert "another local run" in result.stderr and "--smtp-port" in result.stderr  # what holds it, and the way out
    assert "Traceback" not in result.stderr


def test_the_smtp_port_of_the_local_run_is_a_command_line_option(options_file, tmp_path):
    """A second local run beside one on the defaults: its own --port and --smtp-port, whatever options.ini says."""
    http_port, smtp_port = free_port(), free_port()
    process = subprocess.Popen([sys.executable, "-m", "app", "--port", str(http_port), "--smtp-port", str(smtp_port),
                                "--options", str(options_file.path), "--maildir", str(tmp_path / "maildir")],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(http_port, process)
        body = urllib.parse.urlencode(GOOD_FORM).encode()
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/genesys/2/email/support", body, timeout=30) as r:
            answer = json.loads(r.read())
    finally:
        process.terminate()
        log = process.communicate(timeout=30)[1]
    assert answer["statusCode"] == 0, log
    assert f"embedded SMTP server on 127.0.0.1:{smtp_port}" in log
    assert len(list((tmp_path / "maildir" / "new").iterdir())) == 1


def test_help_lists_the_check_command_and_every_default(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps the help at the terminal's width
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert "python -m app check [FILE]" in shown
    options = shown.split("\noptions:", 1)[1]
    for option in ("--host", "--port", "--maildir", "--smtp-port"):
        line = options.split(f"  {option} ", 1)[1].split("\n  --", 1)[0]
        assert "default" in line, (option, line)


def test_an_email_from_another_sender_is_listed_and_opened_by_its_maildir_key(local, options_file):
    """What a developer sends with swaks or smtplib has no interaction id: its Maildir key stands in."""
    with smtplib.SMTP("127.0.0.1", int(options_file.sections["smtp"]["port"])) as smtp:
        smtp.sendmail("dev@example.org", ["support@example.com"],
                      b"From: dev@example.org\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\nhand-made\r\n")
    [row] = rows(local.get("/mailbox/").text)
    assert row[1:3] == ["dev@example.org", "Grüße"] and row[4] == "0"
    page = local.get(f"/mailbox/{row[3]}")
    assert page.status_code == 200 and "hand-made" in page.text and "Return-Path" in page.text


def hand_sent(maildir, body: bytes, content_type: str = "text/plain; charset=utf-8", head: str = "") -> str:
    """Put an email into the Maildir as any local process could, by talking to the embedded server; its key."""
    raw = (f"From: someone@example.com\r\nTo: support@example.com\r\nSubject: by hand\r\n{head}"
           f"Content-Type: {content_type}\r\n\r\n").encode() + body
    return mailbox.Maildir(maildir).add(raw)


def test_an_attachment_name_holding_a_line_break_is_shown_and_downloaded_safely(local, maildir):
    key = hand_sent(maildir, b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/pdf\r\n"
                    b"Content-Disposition: attachment; filename*=utf-8''a%0D%0AX-Evil%3A%201.pdf\r\n"
                    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b--\r\n", 'multipart/mixed; boundary="b"')
    assert local.get(f"/mailbox/{key}").status_code == 200
    download = local.get(f"/mailbox/{key}/attachments/1")
    assert download.status_code == 200 and download.data == b"%PDF-"
    assert "\r" not in download.headers["Content-Disposition"] and "\n" not in download.headers["Content-Disposition"]


def test_an_email_in_an_unknown_charset_is_shown_not_a_500(local, maildir):
    key = hand_sent(maildir, b"caf\xe9 ol\xe9\r\n", "text/plain; charset=x-no-such-charset")
    page = local.get(f"/mailbox/{key}")
    assert page.status_code == 200 and "caf" in page.text
    assert local.get("/mailbox/").status_code == 200


def test_the_list_reads_only_the_headers_of_large_emails(local, maildir):
    import tracemalloc

    for number in range(3):  # as the service writes them: a text part, then the attachment in base64
        attachment = base64.encodebytes(PDF + os.urandom(3 * 1024 * 1024)).replace(b"\n", b"\r\n")
        hand_sent(maildir, b"--b\r\nContent-Type: text/plain\r\n\r\nsee the attachment\r\n--b\r\n"
                  b"Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=big%d.pdf\r\n"
                  b"Content-Transfer-Encoding: base64\r\n\r\n%s--b--\r\n" % (number, attachment),
                  'multipart/mixed; boundary="b"')
    tracemalloc.start()
    try:
        page = local.get("/mailbox/")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [row[-1] for row in rows(page.text)] == ["1", "1", "1"]
    assert peak < 2 * 1024 * 1024  # one email's attachment alone is 3 MiB, its base64 4 MiB


def test_the_pages_say_they_show_what_reached_the_embedded_server(local):
    interaction_id = send(local)
    for path in ("/mailbox/", f"/mailbox/{interaction_id}"):
        assert "not necessarily what the service sent" in html.unescape(local.get(path).text)


def test_the_local_run_suppresses_a_resend_so_the_mailbox_shows_one_email(local, options_file):
    """The shipped options.ini sets duplicate_window = 10m; the local run keeps its claims in SQLite too."""
    shipped = (ROOT / "options.ini").read_text()
    assert "\nduplicate_window = 10m\n" in shipped
    options_file.write(email={"duplicate_window": "10m"})
    first, again = send(local), send(local)
    assert first == again
    assert [row[3] for row in rows(local.get("/mailbox/").text)] == [first]
