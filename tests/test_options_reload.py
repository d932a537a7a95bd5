"""Options every process of a node agrees on (contract section 7), shown with several apps in one process.

Each app stands for one worker: it has its own options in force, and shares with the others only what a
worker of the node shares — the options file and the node's snapshot of the newest good options.
"""
from __future__ import annotations

import threading

import pytest
from support import post_form

from app import create_app
from app.options.model import OptionsError

KEYED = {"apikey": "leaked"}


def post(app, headers: dict[str, str] | None = None):
    return post_form(app.test_client(), headers=headers)


@pytest.fixture
def keys(options_file):
    options_file.write(security={"api_keys": '"k1, leaked"'})
    return options_file


def test_an_idle_worker_serves_the_newest_good_options_after_a_broken_edit(keys, smtp_server):
    busy, idle = create_app(keys.path), create_app(keys.path)
    keys.write(security={"api_keys": "k1"})
    assert post(busy, KEYED).status_code == 401  # the busy worker saw the revocation
    keys.write(text="[email]\nmailbox = nobody@\n")
    assert post(idle, KEYED).status_code == 401
    assert post(idle, {"apikey": "k1"}).get_json()["statusCode"] == 0


def test_a_worker_started_while_the_file_is_broken_serves_the_newest_good_options(keys, smtp_server):
    first = create_app(keys.path)
    keys.write(security={"api_keys": "k1"})
    assert post(first, KEYED).status_code == 401
    keys.write(text="[email]\nmax_size = 10M\n[smtp\n")
    later = create_app(keys.path)  # a worker forked after a HUP or a crash, as gunicorn without preload does
    assert post(later, KEYED).status_code == 401
    assert post(later, {"apikey": "k1"}).get_json()["statusCode"] == 0


def test_a_deleted_file_keeps_the_newest_good_options_for_later_workers(keys, smtp_server):
    first = create_app(keys.path)
    keys.write(security={"api_keys": "k1"})
    post(first)
    keys.path.unlink()
    assert post(create_app(keys.path), KEYED).status_code == 401


def test_a_node_that_never_saw_good_options_refuses_to_start(tmp_path):
    path = tmp_path / "options.ini"
    path.write_text("[email]\nmailbox = nobody@\n")
    with pytest.raises(OptionsError, match=r"\[email\] mailbox"):
        create_app(path)


def test_an_idle_worker_takes_a_valid_edit_without_a_request(options_file, smtp_server):
    options_file.write(server={"reload_interval": "0.1"})
    app = create_app(options_file.path)
    store = app.extensions["options"]
    changed = threading.Event()
    store.subscribe(changed.set)
    options_file.write(email={"tenant": "Edited"})
    assert changed.wait(30), "the edit was never taken"
    assert store.current().catch_all.tenant == "Edited"


def test_every_edit_is_answered_in_json_without_a_5xx(options_file, submit, smtp_server):
    for text in ("[email]\nmax_size = 10M\n", "[email]\nmailbox = a@example.com\nmax_size = 1G\n",
                 "\xff\xfe", "[admin]\nusername = ops\n", "[server]\nstatus_file = /nonexistent/x\n"):
        options_file.path.write_bytes(text.encode("latin-1"))
        response = submit()
        assert response.status_code < 500 and response.is_json


def test_the_digest_of_the_options_in_force_is_a_metric_label_that_follows_edits(options_file, smtp_server):
    """Operators compare `email_options_info{digest}` across nodes to see that they run the same options."""
    import hashlib

    from support import metric

    from app.metrics import exposition

    app = create_app(options_file.path)
    old = hashlib.sha256(options_file.path.read_bytes()).hexdigest()[:12]
    post(app)
    assert metric(exposition()[0].decode(), "email_options_info", digest=old) == 1
    options_file.write(email={"tenant": "Other"})
    new = hashlib.sha256(options_file.path.read_bytes()).hexdigest()[:12]
    post(app)
    page = exposition()[0].decode()
    assert metric(page, "email_options_info", digest=new) == 1 and metric(page, "email_options_info", digest=old) == 0
