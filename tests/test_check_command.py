"""`python -m app check`: validate an options file before a reload, touching nothing else."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support import ROOT

from app.options.check import main as check


@pytest.fixture
def live_folders(tmp_path):
    """A metrics folder and a status file as a running node has them, to prove a check leaves them alone."""
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "counter_1234.db").write_bytes(b"live")
    return {"PROMETHEUS_MULTIPROC_DIR": str(metrics)}


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120)


def test_a_valid_file_gets_a_one_line_summary_and_exit_0(tmp_path, live_folders):
    """As operators run it: `python -m app check` loads nothing of the service, so a node's files stay as they are."""
    options = tmp_path / "options.ini"
    options.write_text("[email]\nmailbox = support@example.com\n[email.sales]\nmailbox = sales@example.com\n"
                       f"[smtp]\nhost = relay.example.com\nusername = gms\npassword = Smtp-S3cret\n"
                       f"[server]\nstatus_file = {tmp_path / 'node.status'}\n")
    result = run("-m", "app", "check", str(options), env=live_folders)
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert "valid" in line and "sales → sales@example.com" in line and "relay.example.com:25" in line
    assert "S3cret" not in result.stdout + result.stderr
    assert sorted(os.listdir(live_folders["PROMETHEUS_MULTIPROC_DIR"])) == ["counter_1234.db"]
    assert not (tmp_path / "node.status").exists()


def test_an_invalid_file_lists_every_problem_and_exits_1(tmp_path, capsys):
    options = tmp_path / "options.ini"
    options.write_text("[email]\nmailbox = support@\nmax_size = 10XB\n[smtp]\npassword = Smtp,S3cret\nusername = x\n")
    assert check([str(options)]) == 1
    shown = capsys.readouterr().out
    assert "[email] mailbox" in shown and "[email] max_size" in shown
    assert "[smtp] password" in shown and "S3cret" not in shown


def test_the_file_defaults_to_options_file(tmp_path, capsys, monkeypatch):
    options = tmp_path / "other.ini"
    options.write_text("[email]\nmailbox = support@example.com\n")
    monkeypatch.setenv("OPTIONS_FILE", str(options))
    assert check([]) == 0 and str(options) in capsys.readouterr().out


def test_gunicorns_own_check_leaves_a_live_metrics_folder_alone(tmp_path, live_folders):
    options = tmp_path / "options.ini"
    options.write_text("[email]\nmailbox = support@example.com\n"
                       f"[server]\nstatus_file = {tmp_path / 'node.status'}\n")
    result = run("-m", "gunicorn", "--check-config", "-c", "deploy/gunicorn.conf.py", "wsgi:app",
                 env={**live_folders, "OPTIONS_FILE": str(options)})
    assert result.returncode == 0, result.stderr
    assert "counter_1234.db" in os.listdir(live_folders["PROMETHEUS_MULTIPROC_DIR"])


def test_check_warns_when_the_message_id_would_name_a_bare_host(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("app.rules.HOST_NAMES", ("vm",))
    options = tmp_path / "options.ini"
    options.write_text("[email]\nmailbox = support@example.com\n")
    assert check([str(options)]) == 0
    output = capsys.readouterr()
    assert "valid" in output.out
    assert "helo_name" in output.err and "vm" in output.err
    options.write_text("[email]\nmailbox = support@example.com\n[smtp]\nhelo_name = mail.example.com\n")
    assert check([str(options)]) == 0
    assert capsys.readouterr().err == ""
