"""The node's state folder (contract section 7): what a forged record, a swapped symlink, a full or read-only
folder, a folder of another user or a hostile options file can do to the options in force — nothing."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT, free_port, metric, post_form

from app import create_app
from app.metrics import exposition
from app.options import watcher
from app.options.check import main as check
from app.store.folder import StateFolderError

REVOKED = {"apikey": "leaked"}


@pytest.fixture
def state(own_state_folder) -> Path:
    """A state folder of this test's own."""
    return own_state_folder


@pytest.fixture
def keys(options_file):
    options_file.write(security={"api_keys": '"k1, leaked"'})
    return options_file


def post(app, headers: dict[str, str] | None = None) -> int:
    return post_form(app.test_client(), headers=headers).status_code


def records(folder: Path) -> list[Path]:
    return sorted(folder.glob("options-*.json"))


def revoke(options_file) -> None:
    options_file.write(security={"api_keys": "k1"})


def test_a_forged_record_with_the_files_digest_is_refused_and_does_not_survive_the_fix(keys, state, smtp_server,
                                                                                       caplog):
    app = create_app(keys.path)
    revoke(keys)
    assert post(app, REVOKED) == 401
    real = keys.path.read_bytes()
    [record] = records(state)
    forged = (real.decode().replace("api_keys = k1", 'api_keys = "k1, leaked"')
              + "[email.evil]\nmailbox = a@evil.example\n")
    record.write_text(json.dumps({"version": 99, "digest": hashlib.sha256(real).hexdigest(), "text": forged}))
    keys.write("[email]\nmailbox = support@example.com\nmax_files = lots\n")  # the operator's typo
    with caplog.at_level(logging.INFO, logger="app"):
        assert post(app, REVOKED) == 401
        keys.write(real.decode())  # the typo mended
        assert post(app, REVOKED) == 401
    assert [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "snapshot_refused"]
    status = app.test_client().get("/metrics")
    assert status.status_code == 200
    assert app.extensions["options"].in_force.digest == hashlib.sha256(real).hexdigest()
    assert app.extensions["options"].in_force.options.service("evil").mailbox == "support@example.com"


def test_a_later_worker_never_starts_from_a_record_that_does_not_verify(keys, state, smtp_server):
    create_app(keys.path)
    [record] = records(state)
    text = keys.path.read_text()
    record.write_text(json.dumps({"version": 7, "digest": hashlib.sha256(b"other").hexdigest(), "text": text}))
    keys.write("[email]\nmailbox = support@example.com\nmax_files = lots\n")
    with pytest.raises(Exception, match="max_files"):  # nothing good to start from: a refused start
        create_app(keys.path)


def test_the_state_folder_is_held_open_so_a_symlink_swapped_in_later_changes_nothing(keys, state, tmp_path,
                                                                                     smtp_server):
    app = create_app(keys.path)
    moved, attacker = tmp_path / "moved", tmp_path / "attacker"
    attacker.mkdir()
    state.rename(moved)
    state.symlink_to(attacker)
    revoke(keys)
    assert post(app, REVOKED) == 401
    assert list(attacker.iterdir()) == []
    [record] = records(moved)
    assert json.loads(record.read_text())["text"] == keys.path.read_text()


def test_a_state_folder_that_is_a_symlink_is_refused_at_start(keys, tmp_path, monkeypatch, smtp_server):
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.setenv("EMAIL_API_STATE_DIR", str(tmp_path / "link"))
    with pytest.raises(StateFolderError, match="symbolic link"):
        create_app(keys.path)


# A full or read-only folder: a tmpfs of its own, which only root may mount.

@pytest.fixture
def small_folder(tmp_path, monkeypatch):
    """A 256 KiB tmpfs as the state folder; `fill()` takes its last byte, `read_only()` remounts it so."""
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs",
                                            str(folder)], capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    monkeypatch.setenv("EMAIL_API_STATE_DIR", str(folder))

    class Folder:
        path = folder

        @staticmethod
        def damage(how: str) -> None:
            if how == "full":
                filler = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
                try:
                    while os.write(filler, b"\0" * 512):
                        pass
                except OSError:  # ENOSPC: the folder is full
                    pass
                finally:
                    os.close(filler)
            else:
                subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)

        @staticmethod
        def mend() -> None:
            subprocess.run(["mount", "-o", "remount,rw", str(folder)], check=True)
            (folder / "filler").unlink(missing_ok=True)

    yield Folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.parametrize("damage", ("full", "read-only"))
def test_a_revocation_saved_while_the_folder_is_unwritable_is_applied_and_published_later(
        keys, small_folder, smtp_server, caplog, damage):
    app = create_app(keys.path)
    small_folder.damage(damage)
    refused_before = metric(exposition()[0].decode(), "email_options_reloads_total", result="refused")
    with caplog.at_level(logging.INFO, logger="app"):
        revoke(keys)
        assert post(app, REVOKED) == 401  # this process serves what it read itself
        assert post(app, REVOKED) == 401
        later_worker = create_app(keys.path)  # started while the folder cannot be written
        assert post(later_worker, REVOKED) == 401
    refusals = [r for r in caplog.records if getattr(r, "fields", {}).get("result") == "refused"
                and str(small_folder.path) in r.getMessage()]  # other tests' apps may still be checking theirs
    assert refusals and all("cannot be written" in r.getMessage() for r in refusals)
    assert metric(exposition()[0].decode(), "email_options_reloads_total", result="refused") > refused_before
    with watcher._watch_lock:  # the watcher tries again at every check: looked at between two of its passes
        assert [p.name for p in small_folder.path.iterdir() if p.name.endswith(".tmp")] == []
    small_folder.mend()
    post(app)  # the next check publishes the pending edit
    [record] = records(small_folder.path)
    assert json.loads(record.read_text())["text"] == keys.path.read_text()


@pytest.mark.parametrize("damage", ("full", "read-only"))
def test_a_start_with_an_unwritable_state_folder_is_one_clear_line_and_exit_3(options_file, small_folder, damage):
    small_folder.damage(damage)
    started = subprocess.run([sys.executable, "-c", "import wsgi"], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "OPTIONS_FILE": str(options_file.path)}, timeout=60)
    assert started.returncode == 3
    [line] = started.stderr.strip().splitlines()
    assert "Traceback" not in line and str(small_folder.path) in json.loads(line)["message"]


def test_a_state_folder_of_another_user_names_the_folder_and_the_fix(options_file, tmp_path):
    """The default folder under /tmp, pre-created by someone else: the local run says what to do."""
    if os.geteuid() != 0:
        pytest.skip("giving a folder to another user needs root")
    temporary = tmp_path / "tmp"
    taken = temporary / f"email-api-{os.geteuid()}"
    taken.mkdir(parents=True)
    os.chown(taken, 65534, 65534)
    environment = {k: v for k, v in os.environ.items() if k != "EMAIL_API_STATE_DIR"}
    started = subprocess.run([sys.executable, "-m", "app", "--port", str(free_port()), "--options",
                              str(options_file.path)], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                             env={**environment, "TMPDIR": str(temporary)})
    assert started.returncode == 1
    assert str(taken) in started.stderr and "another user" in started.stderr
    assert "EMAIL_API_STATE_DIR" in started.stderr and "options.ini has problems" not in started.stderr


# Hostile options files: regular files only, at most 1 MiB, never a read that blocks a request.

@pytest.mark.parametrize("kind", ("dev-zero", "fifo", "huge"))
def test_check_refuses_an_options_file_that_is_not_a_small_regular_file(tmp_path, kind, capsys):
    path = tmp_path / "options.ini"
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_text("[email]\nmailbox = a@example.com\n# " + "x" * (1024 * 1024) + "\n")
    assert check([str(path)]) == 1  # no exception, no read that blocks
    assert ("not a regular file" if kind != "huge" else "larger than 1024 KiB") in capsys.readouterr().out


def test_an_options_file_replaced_by_a_fifo_never_stalls_a_request(keys, state, smtp_server):
    app = create_app(keys.path)
    keys.path.unlink()
    os.mkfifo(keys.path)  # a read would block forever; nobody ever writes to it
    assert post(app, {"apikey": "k1"}) == 200
    assert post(app, {"apikey": "k1"}) == 200
