"""Each request's one log line, and the request metrics counted from it."""
from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask, Response, g, request

from app import metrics
from app.recent import RECENT
from app.web.request_options import STARTED, request_options

log = logging.getLogger("app.requests")
QUIET = ("node.ping", "node.metrics_page")


def note(**fields: Any) -> None:
    """Add to this request's log line (never customer content: no text, names or addresses)."""
    g.setdefault("log_fields", {}).update(fields)


def _log_request(response: Response) -> Response:
    fields = g.get("log_fields", {})
    if request.endpoint == "email_api.submit":
        metrics.labelled(metrics.REQUESTS, fields.get("resolved_service", "email"),
                         fields.get("outcome", "error")).inc()
        RECENT.outcome(fields.get("outcome", "error"))
        for code in fields.get("error_codes", ()):
            metrics.labelled(metrics.ERRORS, str(code)).inc()
    # The balancer's pings and the scrapes of /metrics come every few seconds: DEBUG, unless [server] log_pings.
    level = logging.INFO if request.endpoint not in QUIET or request_options().server.log_pings else logging.DEBUG
    log.log(level, "%s %s %d", request.method, request.path, response.status_code, extra={"fields": {
        "event": "request", "method": request.method, "path": request.path, "http_status": response.status_code,
        "client": request.remote_addr, "duration_ms": round((time.monotonic() - request.environ[STARTED]) * 1000, 1),
        **fields}})
    return response


def register(app: Flask) -> None:
    """Write one line per request, with what the stages noted, and count it."""
    app.after_request(_log_request)
