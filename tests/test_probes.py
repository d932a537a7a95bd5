"""Dependencies probed without traffic (contract section 12): the relay, clamd, the store and rspamd, by one process
of the node every [server] probe_interval, into email_dependency_up and the status page, with the last error."""
from __future__ import annotations

import base64
import logging
import time

import pytest
from support import log_lines, metric

ADMIN = {"Authorization": "Basic " + base64.b64encode(b"ops:secret").decode(), "Accept": "application/json"}


@pytest.fixture
def probing(options_file, own_state_folder):
    """Probes every second, and the admin page to read them."""
    options_file.write(server={"probe_interval": "1"}, admin={"username": "ops", "password": "secret"})
    return options_file


def dependencies_once(client, wanted) -> dict:
    """The page's dependencies once `wanted(dependencies)` holds (the probes run every second)."""
    deadline = time.monotonic() + 30
    while True:
        found = client.get("/genesys/1/admin/", headers=ADMIN).get_json()["dependencies"]
        if wanted(found):
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.1)


def test_the_relay_is_probed_without_an_email_and_its_outage_shows_at_once(probing, client, smtp_server, caplog):
    with caplog.at_level(logging.INFO, logger="app"):
        found = dependencies_once(client, lambda d: d.get("relay", {}).get("up") is True)
        assert found["store"]["up"] is True and set(found) == {"relay", "store"}  # clamd and rspamd are not in use
        assert smtp_server.sessions >= 1 and smtp_server.messages == []  # EHLO and QUIT, never an email
        page = client.get("/metrics").get_data(as_text=True)
        assert metric(page, "email_dependency_up", dependency="relay") == 1
        probing.write(smtp={"port": "1"})  # nothing listens there
        down = dependencies_once(client, lambda d: d.get("relay", {}).get("up") is False)
        page = client.get("/metrics").get_data(as_text=True)
        assert metric(page, "email_dependency_up", dependency="relay") == 0
        probing.write(smtp={"port": str(smtp_server.port)})
        dependencies_once(client, lambda d: d.get("relay", {}).get("up") is True)
    assert down["relay"]["target"] == "127.0.0.1:1" and "refused" in down["relay"]["error"].lower()
    assert [line["dependency"] for line in log_lines(caplog, "dependency_down")] == ["relay"]
    assert [line["dependency"] for line in log_lines(caplog, "dependency_up")] == ["relay"]


def test_clamd_rspamd_and_redis_are_probed_when_in_use(probing, client, redis_server, tmp_path):
    probing.write(scan={"clamd": str(tmp_path / "no-clamd.sock")}, spam={"rspamd": "127.0.0.1:1"},
                  server={"dedup_store": f'"{redis_server.url}"'})
    found = dependencies_once(client, lambda d: set(d) == {"relay", "clamd", "store", "rspamd"})
    assert (found["clamd"]["up"], found["rspamd"]["up"], found["store"]["up"]) == (False, False, True)
    assert found["store"]["target"].startswith("Redis redis://127.0.0.1")
    assert "s3cret" not in str(found)
    redis_server.stop()
    found = dependencies_once(client, lambda d: d.get("store", {}).get("up") is False)
    assert found["store"]["error"]


def test_probes_are_off_with_an_interval_of_0(options_file, own_state_folder, client, smtp_server):
    options_file.write(admin={"username": "ops", "password": "secret"})  # the tests' options: probe_interval 0
    assert client.get("/genesys/1/admin/", headers=ADMIN).get_json()["dependencies"] == {}
    assert smtp_server.sessions == 0
    assert "email_dependency_up{" not in client.get("/metrics").get_data(as_text=True)
