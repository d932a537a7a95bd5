"""The node API (contract section 1): load-balancer ping, drain and undrain with admin credentials."""
import base64

import pytest
from support import codes

ADMIN = {"Authorization": "Basic " + base64.b64encode(b"ops:s3cr%t").decode()}


@pytest.fixture
def admin(options_file):
    options_file.write(admin={"username": "ops", "password": "s3cr%t"})


def test_ping_answers_200_with_an_empty_body(client):
    response = client.get("/genesys/1/node")
    assert response.status_code == 200 and response.data == b""


def test_admin_routes_do_not_exist_without_admin_credentials(client):
    response = client.get("/genesys/1/admin/node/status", headers=ADMIN)
    assert response.status_code == 404 and codes(response) == [611]
    assert client.post("/genesys/1/admin/node/changestatus/OFFLINE", headers=ADMIN).status_code == 404


@pytest.mark.parametrize("headers", ({}, {"Authorization": "Basic " + base64.b64encode(b"ops:wrong").decode()},
                                     {"Authorization": "Bearer s3cr%t"}))
def test_admin_routes_need_the_credentials(admin, client, headers):
    response = client.post("/genesys/1/admin/node/changestatus/OFFLINE", headers=headers)
    assert response.status_code == 401 and codes(response) == [609]
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert client.get("/genesys/1/node").status_code == 200


def test_drain_and_undrain(admin, client, app, submit):
    assert client.get("/genesys/1/admin/node/status", headers=ADMIN).data == b"ONLINE"
    assert client.post("/genesys/1/admin/node/changestatus/OFFLINE", headers=ADMIN).status_code == 200
    status = client.get("/genesys/1/admin/node/status", headers=ADMIN)
    assert (status.data, status.mimetype) == (b"OFFLINE", "text/plain")
    assert client.get("/genesys/1/node").status_code == 503
    assert app.test_client().get("/genesys/1/node").status_code == 503  # every client of the node sees it
    assert submit().get_json()["statusCode"] == 0  # requests already routed here are still served
    client.post("/genesys/1/admin/node/changestatus/ONLINE", headers=ADMIN)
    assert client.get("/genesys/1/node").status_code == 200


def test_status_survives_a_restart(admin, client, options_file):
    from app import create_app

    client.post("/genesys/1/admin/node/changestatus/OFFLINE", headers=ADMIN)
    assert create_app(options_file.path).test_client().get("/genesys/1/node").status_code == 503


def test_unknown_status_is_404(admin, client):
    assert client.post("/genesys/1/admin/node/changestatus/MAYBE", headers=ADMIN).status_code == 404


def test_concurrent_drains_in_one_worker_all_succeed(admin, app):
    from concurrent.futures import ThreadPoolExecutor

    def change(i: int) -> int:
        status = ("ONLINE", "OFFLINE")[i % 2]
        return app.test_client().post(f"/genesys/1/admin/node/changestatus/{status}", headers=ADMIN).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(change, range(400))) == {200}
    assert app.test_client().get("/genesys/1/admin/node/status", headers=ADMIN).data in (b"ONLINE", b"OFFLINE")


def test_admin_status_shows_the_options_in_force(admin, client, options_file):
    first = client.get("/genesys/1/admin/node/status", headers=ADMIN)
    options_file.write(email={"tenant": "Edited"})
    second = client.get("/genesys/1/admin/node/status", headers=ADMIN)
    assert int(second.headers["X-Options-Version"]) == int(first.headers["X-Options-Version"]) + 1
    assert second.headers["X-Options-Digest"] != first.headers["X-Options-Digest"]


@pytest.mark.parametrize("origin", ("https://evil.example", "https://www.example.com"))
def test_the_admin_api_refuses_a_foreign_origin_even_with_credentials(admin, client, options_file, origin):
    options_file.write(cors={"allowed_origins": "https://www.example.com"})
    response = client.post("/genesys/1/admin/node/changestatus/OFFLINE", headers={**ADMIN, "Origin": origin})
    assert response.status_code == 403 and codes(response) == [617]
    assert client.get("/genesys/1/node").status_code == 200


def test_the_admin_api_serves_its_own_origin(admin, client):
    response = client.post("/genesys/1/admin/node/changestatus/OFFLINE", headers={**ADMIN, "Origin": "http://localhost"})
    assert response.status_code == 200


def test_a_drain_and_an_undrain_are_events_in_the_log_and_a_metric(admin, client, caplog):
    import logging

    from support import metric

    with caplog.at_level(logging.INFO, logger="app"):
        client.post("/genesys/1/admin/node/changestatus/OFFLINE", headers=ADMIN)
        offline = metric(client.get("/metrics").get_data(as_text=True), "email_node_online")
        client.post("/genesys/1/admin/node/changestatus/ONLINE", headers=ADMIN)
        online = metric(client.get("/metrics").get_data(as_text=True), "email_node_online")
    events = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("event") == "node_status"]
    assert [(e["old"], e["new"], e["user"], e["client"]) for e in events] == [
        ("ONLINE", "OFFLINE", "ops", "127.0.0.1"), ("OFFLINE", "ONLINE", "ops", "127.0.0.1")]
    assert (offline, online) == (0, 1)
