"""Files from strangers (contract section 10): every attachment scanned by a real clamd (Debian's clamav-daemon,
started here in the foreground with a database of one signature, the EICAR test file) before anything is sent."""
from __future__ import annotations

import io
import logging
import shutil
import socket
import tempfile
import threading
import zipfile
from pathlib import Path

import pytest
import pyzipper
from support import PDF, codes, metric, zipped

from app.local.run import local_app
from app.metrics import exposition
from bench.clamd import EICAR, SIGNATURE, Clamd, clamd_executable, deployed_settings


def start_clamd(**settings: str) -> Clamd:
    if clamd_executable() is None:
        pytest.skip("Debian's clamav-daemon is not installed (.ci/run installs it)")
    return Clamd(**settings)


@pytest.fixture(scope="module")
def clamd():
    """A real clamd shared by this module's tests."""
    server = start_clamd()
    yield server
    server.stop()


@pytest.fixture
def scanning(clamd, options_file):
    """The service scanning with that clamd."""
    options_file.write(scan={"clamd": clamd.socket, "timeout": "10"})
    return clamd


@pytest.mark.parametrize(("name", "content"), (("eicar.txt", EICAR), ("photos.zip", zipped(("eicar.com", EICAR)))),
                         ids=("txt", "inside-a-zip"))
def test_an_infected_file_is_refused_with_203_and_nothing_is_sent(scanning, submit, smtp_server, caplog, name,
                                                                  content):
    before = metric(exposition()[0].decode(), "email_scans_total", result="infected")
    with caplog.at_level(logging.INFO, logger="app"):
        response = submit(files=[("invoice.pdf", PDF), (name, content)])
    assert response.status_code == 400
    [problem] = response.get_json()["errors"]
    assert (problem["code"], problem["field"]) == (203, "files")
    assert name in problem["message"] and "virus scanner" in problem["message"]
    assert SIGNATURE not in response.get_data(as_text=True)
    assert smtp_server.messages == []
    [warning] = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "infected"]
    assert warning.levelname == "WARNING" and SIGNATURE in warning.getMessage() and warning.fields["files"] == [2]
    [line] = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "request"]
    assert line.fields["outcome"] == "infected"
    assert metric(exposition()[0].decode(), "email_scans_total", result="infected") == before + 1


def test_a_clean_pdf_is_delivered_byte_identical_and_the_scan_time_is_logged(scanning, submit, smtp_server,
                                                                              caplog):
    before = metric(exposition()[0].decode(), "email_scans_total", result="clean")
    with caplog.at_level(logging.INFO, logger="app"):
        assert submit(files=[("invoice.pdf", PDF)]).get_json()["statusCode"] == 0
    [part] = smtp_server.messages[0].email.iter_attachments()
    assert part.get_payload(decode=True) == PDF
    [line] = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "request"]
    assert line.fields["scan_ms"] >= 0
    assert metric(exposition()[0].decode(), "email_scans_total", result="clean") == before + 1


def test_clamd_stopped_mid_run_is_a_retry_and_nothing_is_sent(options_file, submit, smtp_server, caplog):
    own = start_clamd()
    options_file.write(scan={"clamd": own.socket})
    assert submit(files=[("invoice.pdf", PDF)]).get_json()["statusCode"] == 0
    own.stop()
    before = metric(exposition()[0].decode(), "email_scans_total", result="error")
    with caplog.at_level(logging.INFO, logger="app"):
        answer = submit(files=[("invoice.pdf", PDF)])
    assert answer.status_code == 200 and answer.get_json()["statusCode"] == 1
    assert len(smtp_server.messages) == 1
    [warning] = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "scan_failed"]
    assert warning.levelname == "WARNING" and "cannot be reached" in warning.fields["reason"]
    assert metric(exposition()[0].decode(), "email_scans_total", result="error") == before + 1
    # A form without attachments never touches clamd, so it is delivered while clamd is down.
    assert submit().get_json()["statusCode"] == 0 and len(smtp_server.messages) == 2


def test_clamd_refusing_a_stream_over_its_limit_is_a_retry_with_the_reason_logged(options_file, submit,
                                                                                  smtp_server, caplog):
    small = start_clamd(stream_max_length="1K")
    try:
        options_file.write(scan={"clamd": small.socket})
        with caplog.at_level(logging.INFO, logger="app"):
            answer = submit(files=[("big.pdf", PDF + b"\0" * 300_000)])
    finally:
        small.stop()
    assert answer.get_json()["statusCode"] == 1 and smtp_server.messages == []
    [warning] = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "scan_failed"]
    assert "size limit" in warning.fields["reason"]


def test_a_stalled_clamd_is_a_retry_within_the_scan_timeout(options_file, submit, smtp_server, tmp_path, caplog):
    """A socket that accepts and never answers: the request ends at [scan] timeout, as statusCode 1."""
    folder = Path(tempfile.mkdtemp(prefix="stall-"))
    path = str(folder / "s")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
    options_file.write(scan={"clamd": path, "timeout": "0.5"})
    try:
        with caplog.at_level(logging.INFO, logger="app"):
            answer = submit(files=[("invoice.pdf", PDF)])
    finally:
        listener.close()
        for sock in held:
            sock.close()
        shutil.rmtree(folder)
    assert answer.get_json()["statusCode"] == 1 and smtp_server.messages == []
    [warning] = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "scan_failed"]
    assert "did not answer within" in warning.fields["reason"]


def test_without_clamd_configured_nothing_is_scanned(submit, smtp_server):
    assert submit(files=[("eicar.txt", EICAR)]).get_json()["statusCode"] == 0


def test_the_local_run_scans_with_clamd(scanning, options_file, tmp_path, smtp_server):
    """python -m app --clamd SOCKET: a developer tries the scanner with the example form."""
    options_file.write(scan={"clamd": None})
    client = local_app(str(options_file.path), tmp_path / "maildir", ("127.0.0.1", smtp_server.port),
                       clamd=scanning.socket).test_client()
    from support import GOOD_FORM, multipart

    body, content_type = multipart([*GOOD_FORM.items(), ("files", ("eicar.txt", EICAR))])
    answer = client.post("/genesys/2/email/support", data=body, content_type=content_type)
    assert answer.status_code == 400 and codes(answer) == [203]


@pytest.mark.parametrize(("value", "valid"), (("/run/clamav/clamd.ctl", True), ("127.0.0.1:3310", True),
                                              ("clamd.internal:3310", True), ("clamd", False), ("host:99999", False),
                                              ("relative/socket", False)))
def test_check_validates_the_scan_section(tmp_path, value, valid):
    from app.options.check import main

    path = tmp_path / "options.ini"
    path.write_text(f"[email]\nmailbox = a@example.com\n[scan]\nclamd = {value}\ntimeout = 5\n")
    assert main([str(path)]) == (0 if valid else 1)


def test_check_refuses_a_scan_timeout_out_of_range(tmp_path, capsys):
    from app.options.check import main

    path = tmp_path / "options.ini"
    path.write_text("[email]\nmailbox = a@example.com\n[scan]\nclamd = /run/clamav/clamd.ctl\ntimeout = 600\n")
    assert main([str(path)]) == 1 and "[scan] timeout" in capsys.readouterr().out


# Archives the scanner cannot see into (contract section 10), against clamd as deployed: Debian's limits with the
# lines of deploy/clamd.conf.

@pytest.fixture(scope="module")
def deployed_clamd():
    """A real clamd with Debian's limits and deploy/clamd.conf, shared by this module's archive tests."""
    server = start_clamd(settings=deployed_settings())
    yield server
    server.stop()


def encrypted_zip(*entries: tuple[str, bytes]) -> bytes:
    """A password-protected zip (AES, as 7-Zip and WinZip write them)."""
    buffer = io.BytesIO()
    with pyzipper.AESZipFile(buffer, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as archive:
        archive.setpassword(b"infected")
        for name, content in entries:
            archive.writestr(name, content)
    return buffer.getvalue()


def nested(depth: int, content: bytes = EICAR) -> bytes:
    """`content` in a zip in a zip ... `depth` zips deep."""
    for level in range(depth):
        content = zipped((f"level-{depth - level}.zip" if level else "eicar.com", content))
    return content


def zip_bomb(entries: int, size: int = 25_000_000) -> bytes:
    """Zero-filled entries that unpack far past their upload (a few hundred KB), then the EICAR file."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for number in range(entries):
            archive.writestr(f"zeros-{number}.bin", bytes(size))
        archive.writestr("eicar.com", EICAR)
    return buffer.getvalue()


@pytest.mark.parametrize(("name", "archive", "why"), (
    ("protected.zip", lambda: encrypted_zip(("eicar.com", EICAR)), "encrypted"),
    ("nested.zip", lambda: nested(20), "nested"),
    ("four-deep.zip", lambda: nested(4, b"just text"), "nested"),
), ids=("password-protected", "twenty-deep", "four-deep"))
def test_an_archive_the_scanner_cannot_see_into_is_refused_before_clamd_is_asked(
        deployed_clamd, options_file, submit, smtp_server, caplog, name, archive, why):
    options_file.write(scan={"clamd": deployed_clamd.socket, "timeout": "10"})
    with caplog.at_level(logging.INFO, logger="app"):
        response = submit(files=[("invoice.pdf", PDF), (name, archive())])
    assert response.status_code == 400
    [problem] = response.get_json()["errors"]
    assert (problem["code"], problem["field"]) == (203, "files") and name in problem["message"]
    assert smtp_server.messages == []
    [warning] = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "unscannable"]
    assert warning.levelname == "WARNING" and why in warning.getMessage() and warning.fields["files"] == [2]


def test_three_zips_deep_is_scanned_by_clamd_and_delivered_when_clean(deployed_clamd, options_file, submit,
                                                                      smtp_server):
    options_file.write(scan={"clamd": deployed_clamd.socket, "timeout": "10"})
    assert submit(files=[("three-deep.zip", nested(3, b"just text"))]).get_json()["statusCode"] == 0
    options_file.write(scan={"clamd": None})
    assert submit(files=[("protected.zip", encrypted_zip(("a.txt", b"x")))]).get_json()["statusCode"] == 0


def test_a_zip_bomb_past_clamds_scan_size_is_refused_as_found(deployed_clamd, options_file, submit, smtp_server,
                                                              caplog):
    """Nine 25 MB entries of zeros (a 230 KB upload) unpack past MaxScanSize: clamd never reaches the EICAR file
    after them, and reports the limit as found (AlertExceedsMax) instead of OK."""
    options_file.write(scan={"clamd": deployed_clamd.socket, "timeout": "20"})
    with caplog.at_level(logging.INFO, logger="app"):
        response = submit(files=[("photos.zip", zip_bomb(9))])
    assert response.status_code == 400 and codes(response) == [203]
    assert smtp_server.messages == []
    [warning] = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "infected"]
    assert "Heuristics.Limits.Exceeded" in warning.getMessage()
