"""The Email API v2 endpoint: read the request, run it through the stages, answer as GMS does."""
from __future__ import annotations

import json
import logging
import re
import time
from importlib import resources
from typing import Any

from flask import Blueprint, Response, g, request
from werkzeug.exceptions import HTTPException

from app import OPTIONS_KEY, metrics
from app.access import check_api_key, check_origin, cors_headers
from app.delivery import Envelope, deliver
from app.errors import (
    INTERNAL_ERROR,
    INVALID_SERVICE_NAME,
    MALFORMED_BODY,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    ApiError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from app.form import ALLOWANCE, read_form, too_large
from app.message import compose, helo_name, new_interaction_id
from app.options import Options, ServiceOptions
from app.submission import Submission, validate_submission

bp = Blueprint("email_api", __name__)
log = logging.getLogger(__name__)
SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
HTTP_ERROR_CODES = {404: NOT_FOUND, 405: METHOD_NOT_ALLOWED}
OPENAPI = resources.files("app").joinpath("openapi.yaml").read_text(encoding="utf-8")


def json_response(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status, headers,
                    content_type="application/json;charset=utf-8")


def request_options() -> Options:
    """The options this request is served with, taken once as it arrived."""
    return request.environ[OPTIONS_KEY]


def note(**fields: Any) -> None:
    """Add to this request's log line (never customer content: no text, names or addresses)."""
    g.setdefault("log_fields", {}).update(fields)


@bp.get("/genesys/2/email/openapi.yaml")
def openapi() -> Response:
    """The OpenAPI 3.1 description of this API."""
    return Response(OPENAPI, content_type="application/yaml;charset=utf-8")


@bp.route("/genesys/2/email", methods=["OPTIONS"], defaults={"service_name": "email"})
@bp.route("/genesys/2/email/<service_name>", methods=["OPTIONS"])
def preflight(service_name: str) -> Response:
    """Answer a browser's CORS preflight; an origin not allowed gets no CORS headers and is blocked."""
    return Response(status=204)


@bp.post("/genesys/2/email", defaults={"service_name": "email"}, provide_automatic_options=False)
@bp.post("/genesys/2/email/<service_name>", provide_automatic_options=False)
def submit(service_name: str) -> Response:
    """Accept one customer email; statusCode 0 only once the relay accepted it."""
    options = request_options()
    service = options.service(service_name)
    note(service=service.name)
    _check_origin(options)
    check_api_key([request.headers.get("apikey"), request.headers.get("x-api-key")], options)
    if not SERVICE_NAME.fullmatch(service_name):
        raise ApiError.single(INVALID_SERVICE_NAME, "The service name holds characters a service name cannot.")
    if (request.content_length or 0) > service.max_size + ALLOWANCE:
        error = too_large(service.max_size)
        error.headers["Connection"] = "close"  # the body is left unread
        raise error
    form = read_form(request.stream, request.headers.get("Content-Type"), service.max_size)
    try:
        submission = validate_submission(form, service_name, service, options)
        interaction_id = new_interaction_id()
        note(interaction_id=interaction_id)
        _send(submission, interaction_id, service, options)
    finally:
        form.close()
    attachment_bytes = sum(a.size for a in submission.attachments)
    metrics.ATTACHMENT_BYTES.inc(attachment_bytes)
    note(outcome="delivered", status_code=0, smtp_reply=250, attachments=len(submission.attachments),
         attachment_bytes=attachment_bytes)
    return json_response({"statusCode": 0, "interactionId": interaction_id})


def _check_origin(options: Options) -> None:
    """Refuse a post whose answer the browser could not read: delivering it would only make the customer retry."""
    origin = request.headers.get("Origin")
    try:
        check_origin(origin, request.host_url, options)
    except ApiError:
        log.warning("refused a post from the foreign origin %r", origin,
                    extra={"fields": {"event": "foreign_origin", "origin": origin}})
        raise


def _send(submission: Submission, interaction_id: str, service: ServiceOptions, options: Options) -> None:
    message = compose(submission, interaction_id, service, options.smtp)
    envelope = Envelope(
        mail_from=options.smtp.envelope_from or submission.mailbox,
        rcpt_to=submission.mailbox,
        max_size=service.max_size,
        size=message.size(),
    )
    started = time.monotonic()
    try:
        deliver(message.chunks(), envelope, options.smtp, helo_name(options.smtp))
    except DeliveryError as exc:
        note(smtp_reply=exc.reply_code)
        if isinstance(exc, TransientDeliveryError) and exc.ambiguous:
            log.warning("ambiguous delivery of %s: the end of DATA was sent but no reply came; the relay may have it",
                        interaction_id, extra={"fields": {"event": "ambiguous", "interaction_id": interaction_id}})
        raise
    finally:
        metrics.SMTP_SECONDS.observe(time.monotonic() - started)


@bp.before_app_request
def start_clock() -> None:
    g.started = time.monotonic()


@bp.after_app_request
def finish(response: Response) -> Response:
    """Add CORS headers, then write the request's log line and count it."""
    response.headers.update(cors_headers(request.headers.get("Origin"), request_options(),
                                         preflight=request.method == "OPTIONS" and response.status_code == 204))
    fields = g.get("log_fields", {})
    if request.endpoint == "email_api.submit":
        metrics.REQUESTS.labels(fields.get("service", "email"), fields.get("outcome", "error")).inc()
        for code in fields.get("error_codes", ()):
            metrics.ERRORS.labels(str(code)).inc()
    log.info("%s %s %d", request.method, request.path, response.status_code, extra={"fields": {
        "event": "request", "method": request.method, "path": request.path, "http_status": response.status_code,
        "client": request.remote_addr, "duration_ms": round((time.monotonic() - g.get("started", 0)) * 1000, 1),
        **fields}})
    return response


@bp.app_errorhandler(ApiError)
def api_error(error: ApiError) -> Response:
    body = error.body()
    note(outcome="rejected", status_code=2, error_codes=[p.code for p in error.problems])
    return json_response(body, error.http_status, error.headers)


@bp.app_errorhandler(TransientDeliveryError)
def transient_delivery_error(error: TransientDeliveryError) -> Response:
    note(outcome="ambiguous" if error.ambiguous else "retry", status_code=1)
    return json_response(error.body())


@bp.app_errorhandler(PermanentDeliveryError)
def permanent_delivery_error(error: PermanentDeliveryError) -> Response:
    note(outcome="refused", status_code=2, error_codes=[error.problem.code])
    return json_response(error.body(), error.http_status)


@bp.app_errorhandler(HTTPException)
def http_error(error: HTTPException) -> Response:
    status = error.code or 500
    code = HTTP_ERROR_CODES.get(status, MALFORMED_BODY if status == 400 else INTERNAL_ERROR)
    rendered = ApiError.single(code, error.description or error.name, http_status=status)
    if getattr(error, "valid_methods", None):
        rendered.headers["Allow"] = ", ".join(error.valid_methods)
    return api_error(rendered)


@bp.app_errorhandler(Exception)
def unexpected_error(error: Exception) -> Response:
    log.exception("unexpected error", extra={"fields": {"event": "unexpected_error"}})
    note(outcome="error", status_code=2, error_codes=[INTERNAL_ERROR])
    rendered = ApiError.single(INTERNAL_ERROR, "An unexpected error occurred.", http_status=500)
    return json_response(rendered.body(), rendered.http_status)
