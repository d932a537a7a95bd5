"""The example contact form in a real browser (Debian's Chromium driven by Playwright), served from
another origin than the API, so that CORS is real; and the local run's mailbox pages."""
from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from support import GOOD_FORM, PDF, PNG, ROOT, free_port, multipart
from werkzeug.serving import make_server

from app.local.maildir import MaildirHandler
from app.local.run import local_app

CHROMIUM = shutil.which("chromium")
SCREENSHOTS = ROOT / "build" / "screenshots"
pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")]
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]


def serve_in_thread(server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def api(app, options_file):
    """The app over real HTTP on one origin, allowing the page's origin."""
    page_port = free_port()
    options_file.write(cors={"allowed_origins": f"http://127.0.0.1:{page_port}"})
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    serve_in_thread(server)
    yield server.server_port, page_port
    server.shutdown()
    server.server_close()


@pytest.fixture
def page_url(api, tmp_path):
    """The contact form, served as a static file from a second origin and pointed at the API."""
    api_port, page_port = api
    site = tmp_path / "site"
    site.mkdir()
    page = (ROOT / "examples" / "contact-form.html").read_text()
    page = re.sub(r'data-api-url="[^"]*"', f'data-api-url="http://127.0.0.1:{api_port}/genesys/2/email/support"', page)
    (site / "index.html").write_text(page)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", page_port), functools.partial(Quiet, directory=site))
    serve_in_thread(server)
    yield f"http://127.0.0.1:{page_port}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from Debian, driven by Playwright (whose own browser download is not used)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, page_url):
    context = browser.new_context(viewport={"width": 900, "height": 1000})
    page = context.new_page()
    page.goto(page_url)
    yield page
    context.close()


def fill(page, **values: str) -> None:
    form = {**GOOD_FORM, "text": "Hello,\nmy invoice is wrong.", **values}  # a textarea's own line ends
    for name, value in form.items():
        page.fill(f"#{name}", value)


def files(tmp_path: Path, *named: tuple[str, bytes]) -> list[str]:
    paths = []
    for name, content in named:
        (tmp_path / name).write_bytes(content)
        paths.append(str(tmp_path / name))
    return paths


def test_a_customer_sends_the_form_with_two_attachments(page, smtp_server, tmp_path):
    fill(page)
    page.set_input_files("#files", files(tmp_path, ("invoice.pdf", PDF), ("photo.png", PNG)))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "contact-form-filled.png"), full_page=True)
    page.click("button[type=submit]")
    notice = page.locator("#notice")
    notice.filter(has_text="Thank you").wait_for()
    reference = re.search(r"reference is ([0-9A-Z]{16})", notice.inner_text())[1]
    [received] = smtp_server.messages
    email = received.email
    assert email["X-Genesys-Interaction-Id"] == reference
    assert email.get_all("X-Genesys-User-Data") == ["source=contact-form"]
    assert [(p.get_filename(), p.get_payload(decode=True)) for p in email.iter_attachments()] == [
        ("invoice.pdf", PDF), ("photo.png", PNG)]
    assert page.input_value("#firstName") == ""  # the form is reset for the next message


def test_each_error_is_shown_at_its_field(page, smtp_server, tmp_path):
    fill(page, firstName="")
    page.set_input_files("#files", files(tmp_path, ("tool.exe", b"MZ")))
    page.click("button[type=submit]")
    page.locator("#firstName-error").filter(has_text="first name").wait_for()
    assert page.inner_text("#firstName-error") == "Please enter your first name."
    assert "tool.exe" in page.inner_text("#files-error")
    assert page.get_attribute("#firstName", "aria-invalid") == "true"
    assert page.get_attribute("#files", "aria-invalid") == "true"
    assert page.inner_text("#lastName-error") == ""
    assert page.evaluate("document.activeElement.id") == "firstName"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "contact-form-errors.png"), full_page=True)
    assert smtp_server.messages == []


def test_eleven_files_get_the_limit_message(page, smtp_server, tmp_path):
    fill(page)
    page.set_input_files("#files", files(tmp_path, *[(f"page{i}.pdf", PDF) for i in range(11)]))
    page.click("button[type=submit]")
    page.locator("#files-error").filter(has_text="at most").wait_for()
    assert page.inner_text("#files-error") == "You can attach at most 10 files."
    assert smtp_server.messages == []


def test_a_relay_that_says_try_later_gets_the_try_again_message(page, smtp_server):
    smtp_server.faults["MAIL"] = "451 4.3.0 try later"
    fill(page)
    page.click("button[type=submit]")
    page.locator("#notice").filter(has_text="try again").wait_for()
    assert page.get_attribute("button[type=submit]", "disabled") is None
    assert page.input_value("#firstName") == "Ana"  # nothing typed is lost
    assert smtp_server.messages == []


def test_the_form_works_from_the_keyboard_alone(page, smtp_server):
    page.focus("#firstName")
    for value in ("Ana", "Lee", "ana@example.com", "Hi", "Hello"):
        page.keyboard.type(value)
        page.keyboard.press("Tab")
    page.keyboard.press("Tab")  # past the file picker, to the button
    assert page.evaluate("document.activeElement.type") == "submit"
    page.keyboard.press("Enter")
    page.locator("#notice").filter(has_text="Thank you").wait_for()
    assert len(smtp_server.messages) == 1


def test_the_form_fits_a_phone_screen(browser, page_url):
    context = browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True)
    page = context.new_page()
    page.goto(page_url)
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    labels = page.evaluate("[...document.querySelectorAll('input:not([type=hidden]), textarea')]"
                           ".every(e => e.labels.length === 1)")
    assert labels
    context.close()


def test_widgets_9_send_from_another_origin_with_contact_center_id_and_a_textarea(page, api, options_file, smtp_server):
    """The request Widgets 9.x SendMessageService makes: FormData, ContactCenterId and apikey headers (so the
    browser preflights), a textarea's text as userData; Chromium must let it through and read the answer."""
    api_port, page_port = api
    options_file.write(cors={"allowed_origins": f"http://127.0.0.1:{page_port}"},
                       security={"api_keys": "k-9x"})
    note = "Order A-17\nArrived broken\n\tsee the photo"
    answer = page.evaluate("""async ([url, note]) => {
        const form = new FormData();
        for (const [k, v] of [["firstName", "Zoë"], ["lastName", "Lee"], ["fromAddress", "zoe@example.com"],
                              ["subject", "Broken"], ["text", "Hello\\nsee below"], ["userData", "note=" + note],
                              ["userData", "ccid=cc-4711"]]) form.append(k, v);
        const response = await fetch(url, {method: "POST", body: form,
                                           headers: {"ContactCenterId": "cc-4711", "apikey": "k-9x"}});
        return await response.json();
    }""", [f"http://127.0.0.1:{api_port}/genesys/2/email/support", note])
    assert answer["statusCode"] == 0
    email = smtp_server.messages[0].email
    assert email["X-Genesys-Interaction-Id"] == answer["interactionId"]
    # the browser sends a textarea's line ends as CRLF in multipart: the value arrives as the browser sent it
    assert email.get_all("X-Genesys-User-Data") == ["note=" + note.replace("\n", "\r\n"), "ccid=cc-4711"]


@pytest.fixture
def local_run(options_file, tmp_path):
    """The local run its embedded SMTP server keeping a Maildir, the form at /, the mail at /mailbox/."""
    controller = Controller(MaildirHandler(tmp_path / "maildir"), hostname="127.0.0.1", port=free_port())
    controller.start()
    options_file.write(smtp={"port": str(controller.port)})
    server = make_server("127.0.0.1", free_port(), local_app(str(options_file.path), tmp_path / "maildir"),
                         threaded=True)
    serve_in_thread(server)
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    controller.stop()


def test_the_mailbox_shows_what_the_contact_center_receives(browser, local_run, tmp_path):
    """A developer posts a form with userData and a file, sends another from the example form, and reads both."""
    body, content_type = multipart([*GOOD_FORM.items(), ("userData", "order=A-17"),
                                    ("userData", "note=Arrived broken\r\nsee the photo"), ("userData[Счёт]", "№5"),
                                    ("files", ("invoice.pdf", PDF))])
    request = urllib.request.Request(f"{local_run}/genesys/2/email/support", body, {"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=10) as response:
        first = json.loads(response.read())["interactionId"]
    context = browser.new_context(viewport={"width": 1100, "height": 700}, accept_downloads=True)
    page = context.new_page()
    page.goto(f"{local_run}/")
    fill(page, firstName="Zoë", subject="Second question")
    page.click("button[type=submit]")
    page.locator("#notice").filter(has_text="Thank you").wait_for()
    second = re.search(r"reference is ([0-9A-Z]{16})", page.inner_text("#notice"))[1]

    page.goto(f"{local_run}/mailbox/")
    cells = page.locator("#emails tbody tr").evaluate_all("rows => rows.map(r => [...r.cells].map(c => c.innerText))")
    assert [row[1:] for row in cells] == [["Zoë Lee <ana@example.com>", "Second question", second, "0"],
                                          ["Ana Lee <ana@example.com>", "Invoice question", first, "1"]]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "mailbox-list.png"), full_page=True)

    page.click("text=Invoice question")
    page.wait_for_url(f"{local_run}/mailbox/{first}")
    pairs = page.locator("#user-data tr").evaluate_all(
        "rows => rows.slice(1).map(r => [...r.cells].map(c => c.innerText))")
    assert pairs == [["order", "A-17"], ["note", "Arrived broken\nsee the photo"], ["Счёт", "№5"]]
    assert page.inner_text("#text") == "Hello,\nmy invoice is wrong.\n"
    page.screenshot(path=str(SCREENSHOTS / "mailbox-email.png"), full_page=True)
    with page.expect_download() as download:
        page.click("#attachments a")
    assert download.value.suggested_filename == "invoice.pdf"
    assert Path(download.value.path()).read_bytes() == PDF
    page.click("text=Show the source")
    assert f"X-Genesys-Interaction-Id: {first}" in page.inner_text("#source")
    context.close()


@pytest.mark.parametrize("viewport", ({"width": 1000, "height": 900}, {"width": 390, "height": 844}),
                         ids=("desktop", "phone"))
def test_an_operator_reads_the_status_page_and_drains_the_node(browser, app, options_file, smtp_server, viewport):
    options_file.write(admin={"username": "ops", "password": "s3cr%t"},
                       smtp={"password": "relay-pa55"},  # a secret the page must hide
                       server={"status_file": f"/tmp/status-page-test-{os.getpid()}.status"})  # shown on the page
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    serve_in_thread(server)
    submit = f"http://127.0.0.1:{server.server_port}/genesys/2/email/support"
    for fault in (None, "450 4.2.1 mailbox busy, try later"):  # one delivered, one retry, for the page to show
        smtp_server.faults["RCPT"] = fault
        with urllib.request.urlopen(submit, urllib.parse.urlencode(GOOD_FORM).encode(), timeout=30):
            pass
    del smtp_server.faults["RCPT"]
    context = browser.new_context(viewport=viewport, http_credentials={"username": "ops", "password": "s3cr%t"})
    try:
        page = context.new_page()
        url = f"http://127.0.0.1:{server.server_port}/genesys/1/admin/"
        page.goto(url)
        assert page.inner_text("#node-status") == "ONLINE"
        assert "relay-pa55" not in page.content() and "[smtp]" in page.inner_text("body")
        # Readable at phone width: nothing wider than the screen but the tables' own scroll boxes.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        name = "status-page" if viewport["width"] > 500 else "status-page-phone"
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=viewport["width"] > 500)
        page.click("#change-status")
        page.wait_for_url(url)
        assert page.inner_text("#node-status") == "OFFLINE"
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/genesys/1/node") as ping:
            pytest.fail(f"the ping answered {ping.status} while drained")
    except urllib.error.HTTPError as error:
        assert error.code == 503
        if viewport["width"] > 500:
            page.screenshot(path=str(SCREENSHOTS / "status-page-offline.png"))
    finally:
        context.close()
        server.shutdown()
        server.server_close()
        Path(f"/tmp/status-page-test-{os.getpid()}.status").unlink(missing_ok=True)
