"""The JSON answers of the contract, and the one place where every error becomes one."""
from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from app.errors import INTERNAL_ERROR, MALFORMED_BODY, METHOD_NOT_ALLOWED, NOT_FOUND, ApiError, Problem
from app.web.request_log import note

log = logging.getLogger("app.requests")
HTTP_ERROR_CODES = {400: MALFORMED_BODY, 404: NOT_FOUND, 405: METHOD_NOT_ALLOWED}


def json_response(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer as the contract gives it."""
    return Response(json.dumps(body, ensure_ascii=False), status, headers,
                    content_type="application/json;charset=utf-8")


def page_headers(response: Response, policy: str) -> Response:
    """The headers of an HTML page that shows what strangers sent: its Content-Security-Policy, no sniffing, no
    caching."""
    response.headers["Content-Security-Policy"] = policy
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


def render_error(error: Exception) -> Response:
    """Answer any error — the service's own, Werkzeug's HTTP errors, anything unexpected — in the contract's JSON."""
    if isinstance(error, HTTPException):
        status = error.code or 500
        allow = getattr(error, "valid_methods", None)
        error = ApiError.single(HTTP_ERROR_CODES.get(status, INTERNAL_ERROR), error.description or error.name,
                                headers={"Allow": ", ".join(allow)} if allow else None)
    elif not isinstance(error, ApiError):
        log.exception("unexpected error", extra={"fields": {"event": "unexpected_error"}})
        error = ApiError([Problem(INTERNAL_ERROR, "An unexpected error occurred.")], outcome="error")
    note(outcome=error.outcome, status_code=error.status_code, error_codes=[p.code for p in error.problems],
         **error.log_fields)
    if getattr(error, "reply_code", None) is not None:
        note(smtp_reply=error.reply_code)  # type: ignore[attr-defined]
    return json_response(error.body(), error.http_status, error.headers)


def register(app: Flask) -> None:
    """Render every error of `app` as the contract's JSON."""
    app.errorhandler(Exception)(render_error)
