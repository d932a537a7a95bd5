"""The node's status page, GET /genesys/1/admin/: what an operator reads there, and its drain button."""
import base64
import html
import re

import pytest

ADMIN = {"Authorization": "Basic " + base64.b64encode(b"ops:s3cr%t").decode()}


@pytest.fixture
def admin(options_file):
    options_file.write(admin={"username": "ops", "password": "s3cr%t"},
                       smtp={"username": "relay-user", "password": "relay-pa55"},
                       security={"api_keys": '"key-one, key-two"'},
                       server={"dedup_store": '"redis://:redis-pa55@127.0.0.1:6379/0"'})


def page(client, **headers):
    return client.get("/genesys/1/admin/", headers={**ADMIN, **headers})


def token(text: str) -> str:
    return re.search(r'name="token" value="([^"]+)"', text)[1]


def test_the_page_shows_the_node_the_options_with_secrets_hidden_and_the_last_hour(admin, client, smtp_server):
    client.post("/genesys/2/email/support", data={"firstName": "Ana"}, headers={"apikey": "key-one"})
    answer = page(client)
    assert answer.status_code == 200 and answer.mimetype == "text/html"
    text = html.unescape(answer.get_data(as_text=True))
    assert 'id="node-status">ONLINE' in text and "Drain (go OFFLINE)" in text
    for shown in ("[email]", "support@example.com", "[email.sales]", "[smtp]", "relay-user", "[scan]",
                  "•••• (2 keys)", "redis://:••••@127.0.0.1:6379/0", "every process serves them"):
        assert shown in text, shown
    for secret in ("relay-pa55", "redis-pa55", "key-one", "key-two", "s3cr%t"):
        assert secret not in text
    counts = re.search(r'<table id="counts">.*?</table>', text, re.S)[0]
    headings, cells = re.findall(r"<th>(\w+)</th>", counts), re.findall(r"<td>(\d+)</td>", counts)
    assert dict(zip(headings, map(int, cells), strict=True))["rejected"] >= 1
    policy = answer.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy and "form-action 'self'" in policy


def test_the_page_shows_the_relays_last_answer_and_the_newest_failures(admin, client, smtp_server, options_file):
    options_file.write(smtp={"username": None, "password": None})
    from support import GOOD_FORM

    smtp_server.faults["RCPT"] = "450 4.2.1 mailbox busy"
    assert client.post("/genesys/2/email/support", data=GOOD_FORM, headers={"apikey": "key-one"}).get_json()[
        "statusCode"] == 1
    text = html.unescape(page(client).get_data(as_text=True))
    assert "retry" in re.search(r'<p id="relay">.*?</p>', text, re.S)[0]
    assert "450 4.2.1 mailbox busy" in re.search(r'<table id="failures">.*?</table>', text, re.S)[0]


def test_the_page_needs_the_admin_credentials_and_refuses_a_foreign_origin(admin, client):
    assert client.get("/genesys/1/admin/").status_code == 401
    assert page(client, Origin="https://evil.example").status_code == 403


def test_the_drain_button_drains_and_undrains(admin, client):
    answer = client.post("/genesys/1/admin/", headers=ADMIN, data={"status": "OFFLINE",
                                                                   "token": token(page(client).text)})
    assert answer.status_code == 303 and client.get("/genesys/1/node").status_code == 503
    text = page(client).text
    assert 'id="node-status">OFFLINE' in text and "Undrain (go ONLINE)" in text
    client.post("/genesys/1/admin/", headers=ADMIN, data={"status": "ONLINE", "token": token(text)})
    assert client.get("/genesys/1/node").status_code == 200


@pytest.mark.parametrize("form", ({"status": "OFFLINE"}, {"status": "OFFLINE", "token": "1.abc"},
                                  {"status": "DOWN", "token": None}))
def test_a_drain_without_the_pages_token_is_refused(admin, client, form):
    if form.get("token", "") is None:
        form = {**form, "token": token(page(client).text)}
    answer = client.post("/genesys/1/admin/", headers=ADMIN, data=form)
    assert answer.status_code == 403 and answer.get_json()["errors"][0]["code"] == 617
    assert client.get("/genesys/1/node").status_code == 200


def test_a_cross_site_drain_with_cached_credentials_is_refused(admin, client):
    form = {"status": "OFFLINE", "token": token(page(client).text)}
    answer = client.post("/genesys/1/admin/", headers={**ADMIN, "Origin": "https://evil.example"}, data=form)
    assert answer.status_code == 403 and client.get("/genesys/1/node").status_code == 200


# The same facts as JSON, and the truth from the first minute (contract section 12).

def test_the_page_answers_json_with_the_node_and_the_last_hour(admin, client, smtp_server, options_file,
                                                               own_state_folder):
    options_file.write(server={"node_name": "web-02"})
    client.post("/genesys/2/email/support", data={"firstName": "Ana"}, headers={"apikey": "key-one"})
    answer = page(client, Accept="application/json")
    assert answer.mimetype == "application/json"
    facts = answer.get_json()
    assert {"node", "status", "options_file_valid", "options", "dependencies", "last_hour", "failures"} <= set(facts)
    assert (facts["node"], facts["status"], facts["options_file_valid"]) == ("web-02", "ONLINE", True)
    assert set(facts["options"]) == {"version", "digest"} and len(facts["options"]["digest"]) == 12
    assert set(facts["last_hour"]) == {"delivered", "duplicate", "retry", "ambiguous", "refused", "rejected",
                                       "limited", "quarantined", "infected", "scan_failed", "error"}
    assert facts["last_hour"]["rejected"] >= 1
    assert "s3cr%t" not in answer.get_data(as_text=True)


def test_a_refused_edit_shows_in_a_banner_the_json_and_a_gauge_until_the_file_is_fixed(admin, client, options_file,
                                                                                      caplog):
    import logging

    from support import log_lines, metric

    assert metric(client.get("/metrics").get_data(as_text=True), "email_options_file_valid") == 1
    options_file.write(email={"max_files": "lots"})
    facts = page(client, Accept="application/json").get_json()
    assert facts["options_file_valid"] is False and any("max_files" in p for p in facts["options_problems"])
    text = html.unescape(page(client).get_data(as_text=True))
    assert 'id="options-refused"' in text and "a restart would fail" in text
    assert metric(client.get("/metrics").get_data(as_text=True), "email_options_file_valid") == 0
    with caplog.at_level(logging.INFO, logger="app"):
        options_file.write(email={"max_files": "10"})
        assert page(client, Accept="application/json").get_json()["options_file_valid"] is True
    assert log_lines(caplog, "options_file_valid")
    assert metric(client.get("/metrics").get_data(as_text=True), "email_options_file_valid") == 1


def test_the_admin_answers_and_the_metrics_name_the_node_and_its_build(admin, client, options_file):
    import subprocess

    from support import ROOT

    options_file.write(server={"node_name": "web-02"})
    assert client.get("/genesys/1/admin/node/status", headers=ADMIN).headers["X-Node-Name"] == "web-02"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    page_text = client.get("/metrics").get_data(as_text=True)
    assert re.search(rf'email_build_info\{{commit="{commit}",node="web-02",version="[\d.]+"\}} 1.0', page_text)
    assert len(client.get("/genesys/1/admin/node/status", headers=ADMIN).headers["X-Options-Digest"]) == 12


def test_every_counter_an_alert_watches_exists_at_zero_from_the_start(admin, client):
    page_text = client.get("/metrics").get_data(as_text=True)
    for series in ('email_options_reloads_total{result="refused"}', 'email_scans_total{result="error"}',
                   'email_limited_total{quota="client"}', 'email_limited_total{quota="sender"}',
                   'email_spam_checks_total{action="error"}', 'email_spam_checks_total{action="reject"}',
                   'email_requests_total{outcome="retry",service="email"}',
                   'email_requests_total{outcome="limited",service="sales"}', "email_dedup_store_errors_total"):
        assert re.search(rf"^{re.escape(series)} \d", page_text, re.M), series
