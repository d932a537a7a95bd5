"""The README's Quick start, as a newcomer on Debian runs it: Debian's own python3, no `python` command, a
system pip that refuses to install (PEP 668). The first command from a fresh clone must serve a form and
show the email it sent at /mailbox/."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from support import GOOD_FORM, ROOT, free_port, wait_for_port

DEBIAN_PYTHON = Path("/usr/bin/python3")


def quick_start_commands() -> list[str]:
    """The two commands of the README's Quick start, as written there."""
    section = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", section, re.S)


def test_the_quick_start_is_two_commands():
    run, test = quick_start_commands()
    assert run.count("\n") == 0 and test.count("\n") == 0
    assert test in (ROOT / ".ci" / "run").read_text()  # CI runs the README's test command


@pytest.mark.e2e
@pytest.mark.skipif(not (DEBIAN_PYTHON.exists() and shutil.which("git")),
                    reason="needs Debian's /usr/bin/python3 (with python3-venv) and git")
def test_the_first_command_serves_a_form_with_debians_python3(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    bin_folder = tmp_path / "bin"  # python3 is Debian's, and there is no `python`
    bin_folder.mkdir()
    (bin_folder / "python3").symlink_to(DEBIAN_PYTHON)
    port = free_port()
    run = quick_start_commands()[0] + f" --port {port} --smtp-port {free_port()}"  # beside a run on the defaults
    # Its own temporary folder, so its state folder (and so its duplicate check) is not another run's.
    environment = {"PATH": f"{bin_folder}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
                   "TMPDIR": str(tmp_path)}
    server = subprocess.Popen(["/bin/sh", "-c", run], cwd=clone, env=environment, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        try:
            wait_for_port(port, server, timeout=600)  # the first run installs the service from PyPI
        except RuntimeError:
            os.killpg(server.pid, 15)
            log = server.communicate(timeout=60)[1]
            raise AssertionError("the first command did not start:\n" + log[-3000:]) from None
        request = urllib.request.Request(f"http://127.0.0.1:{port}/genesys/2/email/support",
                                         urllib.parse.urlencode(GOOD_FORM).encode())
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        mailbox = f"http://127.0.0.1:{port}/mailbox/"
        with urllib.request.urlopen(mailbox, timeout=30) as response:
            listed = response.read().decode()
        with urllib.request.urlopen(mailbox + answer["interactionId"], timeout=30) as response:
            shown = response.read().decode()
    finally:
        os.killpg(server.pid, 15)
        log = server.communicate(timeout=60)[1]
    assert answer["statusCode"] == 0, log[-3000:]
    stored = [path.read_bytes() for path in (clone / "maildir" / "new").iterdir()]
    assert len(stored) == 1 and answer["interactionId"].encode() in stored[0]
    assert answer["interactionId"] in listed and GOOD_FORM["subject"] in listed  # the newcomer sees it at /mailbox/
    assert GOOD_FORM["subject"] in shown and "X-Genesys-Interaction-Id" in shown
    assert (clone / ".venv" / "bin" / "python").exists()
