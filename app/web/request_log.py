"""Each request's one log line, and the request metrics counted from it."""
from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask, Response, g, request

from app import metrics
from app.recent import RECENT

log = logging.getLogger("app.requests")


def note(**fields: Any) -> None:
    """Add to this request's log line (never customer content: no text, names or addresses)."""
    g.setdefault("log_fields", {}).update(fields)


def _start_clock() -> None:
    g.started = time.monotonic()


def _log_request(response: Response) -> Response:
    fields = g.get("log_fields", {})
    if request.endpoint == "email_api.submit":
        metrics.REQUESTS.labels(fields.get("service", "email"), fields.get("outcome", "error")).inc()
        RECENT.outcome(fields.get("outcome", "error"))
        for code in fields.get("error_codes", ()):
            metrics.ERRORS.labels(str(code)).inc()
    log.info("%s %s %d", request.method, request.path, response.status_code, extra={"fields": {
        "event": "request", "method": request.method, "path": request.path, "http_status": response.status_code,
        "client": request.remote_addr, "duration_ms": round((time.monotonic() - g.get("started", 0)) * 1000, 1),
        **fields}})
    return response


def register(app: Flask) -> None:
    """Write one line per request, with what the stages noted, and count it."""
    app.before_request(_start_clock)
    app.after_request(_log_request)
