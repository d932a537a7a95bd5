"""The Email API v2 endpoint: read the request, run it through the stages, answer as GMS does."""
from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from app.access import check_api_key, cors_headers
from app.delivery import Envelope, deliver
from app.errors import (
    INTERNAL_ERROR,
    INVALID_SERVICE_NAME,
    MALFORMED_BODY,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    ApiError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from app.form import ALLOWANCE, read_form, too_large
from app.message import compose, helo_name, new_interaction_id
from app.options import OptionsStore
from app.submission import validate_submission

bp = Blueprint("email_api", __name__)
log = logging.getLogger(__name__)
SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
HTTP_ERROR_CODES = {404: NOT_FOUND, 405: METHOD_NOT_ALLOWED}


def json_response(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status, headers,
                    content_type="application/json;charset=utf-8")


def options_store() -> OptionsStore:
    return current_app.extensions["options"]


@bp.route("/genesys/2/email", methods=["OPTIONS"], defaults={"service_name": "email"})
@bp.route("/genesys/2/email/<service_name>", methods=["OPTIONS"])
def preflight(service_name: str) -> Response:
    """Answer a browser's CORS preflight; an origin not allowed gets no CORS headers and is blocked."""
    return Response(status=204)


@bp.post("/genesys/2/email", defaults={"service_name": "email"}, provide_automatic_options=False)
@bp.post("/genesys/2/email/<service_name>", provide_automatic_options=False)
def submit(service_name: str) -> Response:
    """Accept one customer email; statusCode 0 only once the relay accepted it."""
    started = time.monotonic()
    options = options_store().current()
    check_api_key([request.headers.get("apikey"), request.headers.get("x-api-key")], options)
    if not SERVICE_NAME.fullmatch(service_name):
        raise ApiError.single(INVALID_SERVICE_NAME, "The service name holds characters a service name cannot.")
    service = options.service(service_name)
    if (request.content_length or 0) > service.max_size + ALLOWANCE:
        error = too_large(service.max_size)
        error.headers["Connection"] = "close"  # the body is left unread
        raise error
    form = read_form(request.stream, request.headers.get("Content-Type"), service.max_size)
    try:
        submission = validate_submission(form, service_name, service, options)
        interaction_id = new_interaction_id()
        message = compose(submission, interaction_id, service, options.smtp)
        envelope = Envelope(
            mail_from=options.smtp.envelope_from or submission.from_address,
            rcpt_to=submission.mailbox,
            customer_sender=not options.smtp.envelope_from,
            max_size=service.max_size,
        )
        try:
            deliver(message.as_bytes(), envelope, options.smtp, helo_name(options.smtp))
        except TransientDeliveryError as exc:
            if exc.ambiguous:
                log.warning("ambiguous delivery of %s: the end of DATA was sent but no reply came",
                            interaction_id, extra={"interaction_id": interaction_id})
            raise
    finally:
        form.close()
    log.info("delivered %s for service %s in %.3f s", interaction_id, service_name, time.monotonic() - started,
             extra={"interaction_id": interaction_id})
    return json_response({"statusCode": 0, "interactionId": interaction_id})


@bp.after_app_request
def add_cors_headers(response: Response) -> Response:
    options = options_store().current()
    response.headers.update(cors_headers(request.headers.get("Origin"), options,
                                         preflight=request.method == "OPTIONS" and response.status_code == 204))
    return response


@bp.app_errorhandler(ApiError)
def api_error(error: ApiError) -> Response:
    return json_response(error.body(), error.http_status, error.headers)


@bp.app_errorhandler(TransientDeliveryError)
def transient_delivery_error(error: TransientDeliveryError) -> Response:
    return json_response(error.body())


@bp.app_errorhandler(PermanentDeliveryError)
def permanent_delivery_error(error: PermanentDeliveryError) -> Response:
    return json_response(error.body(), error.http_status)


@bp.app_errorhandler(HTTPException)
def http_error(error: HTTPException) -> Response:
    status = error.code or 500
    code = HTTP_ERROR_CODES.get(status, MALFORMED_BODY if status == 400 else INTERNAL_ERROR)
    body = {"statusCode": 2, "errors": [{"code": code, "message": error.description or error.name}]}
    headers = {"Allow": ", ".join(error.valid_methods)} if getattr(error, "valid_methods", None) else None
    return json_response(body, status, headers)


@bp.app_errorhandler(Exception)
def unexpected_error(error: Exception) -> Response:
    log.exception("unexpected error")
    body = {"statusCode": 2, "errors": [{"code": INTERNAL_ERROR, "message": "An unexpected error occurred."}]}
    return json_response(body, 500)
