"""The OpenAPI description is served, and property-based tests hold the app to it."""
from pathlib import Path

import schemathesis
import support
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support import examples, multipart

import app as app_package

DESCRIPTION = Path(app_package.__file__).parent / "web" / "openapi.yaml"
schema = schemathesis.openapi.from_path(str(DESCRIPTION))
if support.QUICK_LOOP:  # the quick loop: random examples only; the whole suite adds the coverage phase's edge cases
    schema.config.phases.coverage.enabled = False


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]


@schema.parametrize()
@settings(max_examples=examples(100), deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_answer_matches_the_description(case, app, smtp_server):
    """No 5xx, and every status, content type and body is one the description lists: the app in-process,
    with the real test SMTP server. (A schema-valid form may still be refused: the description cannot say
    which mailboxes are allowed.)"""
    case.call_and_validate(app=app, checks=CHECKS)


def test_the_api_serves_this_description(client):
    response = client.get("/genesys/2/email/openapi.yaml")
    assert response.status_code == 200 and response.mimetype == "application/yaml"
    assert response.data == DESCRIPTION.read_bytes()


def test_a_delivered_form_matches_the_description(client, smtp_server):
    body, content_type = multipart([("firstName", "Ana"), ("lastName", "Lee"), ("fromAddress", "ana@example.com"),
                                    ("subject", "Hi"), ("text", "Hello")])
    response = client.post("/genesys/2/email/support", data=body, content_type=content_type)
    assert response.get_json()["statusCode"] == 0
    operation = schema["/genesys/2/email/{serviceName}"]["POST"]
    operation.validate_response(response)
