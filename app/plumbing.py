"""App-wide plumbing, registered by create_app: the options of each request, its log line and metrics, CORS
headers, and the one place where every error becomes the JSON of the contract."""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from app import metrics
from app.access import cors_headers
from app.errors import INTERNAL_ERROR, MALFORMED_BODY, METHOD_NOT_ALLOWED, NOT_FOUND, ApiError
from app.options import Options
from app.options_store import OptionsStore

log = logging.getLogger("app.requests")
OPTIONS_KEY = "email_api.options"
HTTP_ERROR_CODES = {400: MALFORMED_BODY, 404: NOT_FOUND, 405: METHOD_NOT_ALLOWED}


class OptionsPerRequest:
    """Take the options in force once per request, so that a request sees one consistent set, and trust as many
    proxy hops (Werkzeug's ProxyFix) as `[server] proxy_hops` of that set says."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]], store: OptionsStore) -> None:
        self.wsgi_app, self.store = wsgi_app, store
        self.fixers = {hops: ProxyFix(wsgi_app, x_for=hops, x_proto=hops, x_host=hops) for hops in range(1, 11)}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        options = environ[OPTIONS_KEY] = self.store.current()
        hops = options.proxy_hops
        return (self.fixers[hops] if hops else self.wsgi_app)(environ, start_response)


def request_options() -> Options:
    """The options this request is served with, taken once as it arrived."""
    options: Options = request.environ[OPTIONS_KEY]
    return options


def note(**fields: Any) -> None:
    """Add to this request's log line (never customer content: no text, names or addresses)."""
    g.setdefault("log_fields", {}).update(fields)


def json_response(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer as the contract gives it."""
    return Response(json.dumps(body, ensure_ascii=False), status, headers,
                    content_type="application/json;charset=utf-8")


def render_error(error: Exception) -> Response:
    """Answer any error — the service's own, Werkzeug's HTTP errors, anything unexpected — in the contract's JSON."""
    if isinstance(error, HTTPException):
        status = error.code or 500
        allow = getattr(error, "valid_methods", None)
        error = ApiError.single(HTTP_ERROR_CODES.get(status, INTERNAL_ERROR), error.description or error.name,
                                headers={"Allow": ", ".join(allow)} if allow else None)
    elif not isinstance(error, ApiError):
        log.exception("unexpected error", extra={"fields": {"event": "unexpected_error"}})
        error = ApiError.single(INTERNAL_ERROR, "An unexpected error occurred.")
        error.outcome = "error"
    note(outcome=error.outcome, status_code=error.status_code, error_codes=[p.code for p in error.problems])
    if error.reply_code is not None:
        note(smtp_reply=error.reply_code)
    return json_response(error.body(), error.http_status, error.headers)


def _start_clock() -> None:
    g.started = time.monotonic()


def _finish(response: Response) -> Response:
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


def register(app: Flask, store: OptionsStore) -> None:
    """Install the plumbing on `app`: options per request, CORS, the log line, metrics, the error renderer."""
    app.wsgi_app = OptionsPerRequest(app.wsgi_app, store)  # type: ignore[method-assign]
    app.before_request(_start_clock)
    app.after_request(_finish)
    app.errorhandler(Exception)(render_error)
