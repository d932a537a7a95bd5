"""Browsers on other origins (CORS) and API keys (contract section 8)."""
import pytest
from support import GOOD_FORM, codes, post_form

ORIGIN = "https://www.example.com"


@pytest.fixture
def cors(options_file):
    options_file.write(cors={"allowed_origins": f'"{ORIGIN}, http://localhost:8080"'})
    return options_file


def test_preflight_from_an_allowed_origin(cors, client):
    response = client.options("/genesys/2/email/support", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "apikey"})
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert response.headers["Vary"] == "Origin"
    assert response.headers["Access-Control-Allow-Methods"] == "POST, OPTIONS"
    assert response.headers["Access-Control-Allow-Headers"] == \
        "content-type, apikey, x-api-key, contactcenterid, idempotency-key"
    assert int(response.headers["Access-Control-Max-Age"]) > 0


@pytest.mark.parametrize("origin", ("https://evil.example", "https://www.example.com:8443", "http://www.example.com"))
def test_other_origins_get_no_cors_headers(cors, client, submit, origin):
    preflight = client.options("/genesys/2/email", headers={"Origin": origin})
    assert preflight.status_code == 204
    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert "Access-Control-Allow-Origin" not in client.post("/genesys/2/email", headers={"Origin": origin}).headers


def test_responses_to_an_allowed_origin_carry_cors_headers(cors, client, submit):
    for response in (client.post("/genesys/2/email/support", data={}, headers={"Origin": "http://localhost:8080"}),
                     client.get("/nowhere", headers={"Origin": ORIGIN})):
        assert response.headers["Access-Control-Allow-Origin"] in (ORIGIN, "http://localhost:8080")
        assert response.headers["Vary"] == "Origin"


def test_star_allows_any_origin(options_file, client):
    options_file.write(cors={"allowed_origins": "*"})
    response = client.options("/genesys/2/email/support", headers={"Origin": "https://any.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "https://any.example"


def test_cors_change_is_in_force_without_restart(options_file, client):
    assert "Access-Control-Allow-Origin" not in client.options("/genesys/2/email", headers={"Origin": ORIGIN}).headers
    options_file.write(cors={"allowed_origins": ORIGIN})
    response = client.options("/genesys/2/email", headers={"Origin": ORIGIN})
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN


@pytest.fixture
def api_keys(options_file):
    options_file.write(security={"api_keys": '"k-123, k-456"'})


@pytest.mark.parametrize("headers", ({}, {"apikey": "wrong"}, {"x-api-key": "k-12"}, {"apikey": ""}))
def test_missing_or_wrong_api_key_is_401(api_keys, client, smtp_server, headers):
    response = client.post("/genesys/2/email/support", data={"firstName": "Ana"}, headers=headers)
    assert response.status_code == 401 and codes(response) == [609]
    assert smtp_server.messages == []


@pytest.mark.parametrize("header", ("apikey", "x-api-key"))
def test_a_configured_key_in_either_header_is_accepted(api_keys, client, smtp_server, header):
    response = client.post("/genesys/2/email/support", data=GOOD_FORM, headers={header: "k-456"})
    assert response.get_json()["statusCode"] == 0


@pytest.mark.parametrize("sent", ("clé-ü-1".encode(), "clé-ü-1".encode("latin-1")), ids=("utf-8", "latin-1"))
def test_a_non_ascii_api_key_is_accepted_as_utf_8_and_as_latin_1(options_file, client, smtp_server, sent):
    options_file.write(security={"api_keys": "clé-ü-1"})
    # What Werkzeug hands the app for these bytes on the wire: each byte as one Latin-1 character.
    response = client.post("/genesys/2/email/support", data=GOOD_FORM, headers={"apikey": sent.decode("latin-1")})
    assert response.get_json()["statusCode"] == 0


def test_preflight_needs_no_key(api_keys, cors, client):
    response = client.options("/genesys/2/email/support", headers={"Origin": ORIGIN})
    assert response.status_code == 204 and response.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_preflight_allows_the_contactcenterid_header_of_widgets_9(cors, client):
    response = client.options("/genesys/2/email/support", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "apikey,contactcenterid"})
    allowed = {h.strip() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "apikey", "x-api-key", "contactcenterid"} <= allowed


@pytest.mark.parametrize(("origin", "allowed"), (
    ("https://www.example.com", True), ("https://shop.example.com", True), ("https://a.b.example.com", True),
    ("https://example.com", False), ("https://example.com.evil.net", False), ("https://evilexample.com", False),
    ("http://shop.example.com", False), ("https://shop.example.com:8443", False),
))
def test_wildcard_subdomain_origins(options_file, client, origin, allowed):
    options_file.write(cors={"allowed_origins": "https://*.example.com"})
    response = client.options("/genesys/2/email/support", headers={"Origin": origin})
    assert (response.headers.get("Access-Control-Allow-Origin") == origin) == allowed


def test_a_wildcard_with_a_port_matches_that_port_only(options_file, client):
    options_file.write(cors={"allowed_origins": "https://*.example.com:8443"})
    for origin, allowed in (("https://a.example.com:8443", True), ("https://a.example.com", False)):
        response = client.options("/genesys/2/email", headers={"Origin": origin})
        assert (response.headers.get("Access-Control-Allow-Origin") == origin) == allowed


def test_a_post_from_a_foreign_origin_is_refused_before_delivery(cors, submit_from, smtp_server, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="app"):
        response = submit_from("https://evil.example")
    assert response.status_code == 403 and codes(response) == [617]
    assert smtp_server.messages == []
    assert any(r.levelname == "WARNING" and "https://evil.example" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("origin", (None, ORIGIN, "http://localhost"))  # none (a server), allowed, the service's own
def test_posts_without_origin_from_allowed_or_own_origin_are_delivered(cors, submit_from, smtp_server, origin):
    assert submit_from(origin).get_json()["statusCode"] == 0
    assert len(smtp_server.messages) == 1


@pytest.fixture
def submit_from(client):
    """Post the known-good form with an Origin header (None: without one)."""

    def post(origin: str | None):
        return post_form(client, headers={"Origin": origin} if origin else None)

    return post
