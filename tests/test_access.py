"""Browsers on other origins (CORS) and API keys (contract section 8)."""
import pytest
from support import codes

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
    assert response.headers["Access-Control-Allow-Headers"] == "content-type, apikey, x-api-key"
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
    form = {"firstName": "Ana", "lastName": "Lee", "fromAddress": "ana@example.com", "subject": "Hi", "text": "Hello"}
    response = client.post("/genesys/2/email/support", data=form, headers={header: "k-456"})
    assert response.get_json()["statusCode"] == 0


def test_preflight_needs_no_key(api_keys, cors, client):
    response = client.options("/genesys/2/email/support", headers={"Origin": ORIGIN})
    assert response.status_code == 204 and response.headers["Access-Control-Allow-Origin"] == ORIGIN
