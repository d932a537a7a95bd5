"""The one guard of the admin routes: [admin] credentials by HTTP basic auth, from the service's own origin."""
from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import ParamSpec

from flask import Response, request
from werkzeug.exceptions import NotFound

from app.access import check_origin
from app.errors import BAD_CREDENTIALS, ApiError
from app.web.request_options import request_options

P = ParamSpec("P")


def admin_required(view: Callable[P, Response]) -> Callable[P, Response]:
    """Guard an admin route; without [admin] credentials configured the route does not exist (404)."""

    @functools.wraps(view)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> Response:
        _check_admin()
        return view(*args, **kwargs)

    return guarded


def _check_admin() -> None:
    admin = request_options().admin
    if not admin.username:
        raise NotFound()
    # Not even an allowed origin: a browser's cached credentials must not let another site drain the node.
    check_origin(request.headers.get("Origin"), request.host_url, None)
    auth = request.authorization
    if auth is None or auth.type != "basic" or not (
        hmac.compare_digest((auth.username or "").encode(), admin.username.encode())
        & hmac.compare_digest((auth.password or "").encode(), admin.password.encode())
    ):
        raise ApiError.single(BAD_CREDENTIALS, "Admin credentials are required.",
                              headers={"WWW-Authenticate": 'Basic realm="GMS admin", charset="UTF-8"'})
