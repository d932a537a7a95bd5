"""The OpenAPI description is served, and property-based tests hold the app to it."""
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support import multipart


@pytest.fixture
def api_schema(app, smtp_server):
    """The description as the app serves it, bound to the app in-process and the real test SMTP server."""
    return schemathesis.openapi.from_wsgi("/genesys/2/email/openapi.yaml", app)


schema = schemathesis.pytest.from_fixture("api_schema")


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]


@schema.parametrize()
@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_answer_matches_the_description(case):
    """No 5xx, and every status, content type and body is one the description lists.

    (A schema-valid form may still be refused: the description cannot say which mailboxes are allowed.)
    """
    case.call_and_validate(checks=CHECKS)


def test_a_delivered_form_matches_the_description(app, api_schema, client, smtp_server):
    body, content_type = multipart([("firstName", "Ana"), ("lastName", "Lee"), ("fromAddress", "ana@example.com"),
                                    ("subject", "Hi"), ("text", "Hello")])
    response = client.post("/genesys/2/email/support", data=body, content_type=content_type)
    assert response.get_json()["statusCode"] == 0
    operation = api_schema["/genesys/2/email/{serviceName}"]["POST"]
    operation.validate_response(response)
