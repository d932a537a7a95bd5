"""CORS headers on every answer, for the origins `[cors] allowed_origins` lets call the endpoint."""
from __future__ import annotations

from flask import Flask, Response, request

from app.access import cors_headers
from app.web.request_options import request_options


def _add_cors_headers(response: Response) -> Response:
    response.headers.update(cors_headers(request.headers.get("Origin"), request_options(),
                                         preflight=request.method == "OPTIONS" and response.status_code == 204))
    return response


def register(app: Flask) -> None:
    """Add the CORS headers of each answer."""
    app.after_request(_add_cors_headers)
