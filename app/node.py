"""The node API for load balancers and operators (ping, drain), and the metrics page."""
from __future__ import annotations

import functools
import hmac
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import NotFound

from app import metrics
from app.access import check_origin
from app.errors import BAD_CREDENTIALS, ApiError
from app.request_options import request_options

bp = Blueprint("node", __name__)
log = logging.getLogger(__name__)
P = ParamSpec("P")
STATUSES = ("ONLINE", "OFFLINE")


class NodeStatus:
    """ONLINE or OFFLINE, kept in a file so that every worker of the node shares it and restarts keep it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def get(self) -> str:
        """The status in the file; ONLINE when there is none."""
        try:
            status = self.path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return "ONLINE"
        return status if status in STATUSES else "ONLINE"

    def set(self, status: str) -> None:
        """Write the status under a name of its own, then rename it into place: concurrent drains never collide."""
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(handle, "w", encoding="ascii") as out:
            out.write(status + "\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, self.path)


def node_status() -> NodeStatus:
    """The node's status file named by the options in force."""
    return NodeStatus(request_options().status_file)


def admin_required(view: Callable[P, Response]) -> Callable[P, Response]:
    """Guard an admin route: [admin] credentials by HTTP basic auth, from the service's own origin or none;
    without credentials configured the route does not exist (404)."""

    @functools.wraps(view)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> Response:
        _check_admin()
        return view(*args, **kwargs)

    return guarded


def _check_admin() -> None:
    options = request_options()
    if not options.admin_username:
        raise NotFound()
    # Not even an allowed origin: a browser's cached credentials must not let another site drain the node.
    check_origin(request.headers.get("Origin"), request.host_url, None)
    auth = request.authorization
    if auth is None or auth.type != "basic" or not (
        hmac.compare_digest((auth.username or "").encode(), options.admin_username.encode())
        & hmac.compare_digest((auth.password or "").encode(), options.admin_password.encode())
    ):
        raise ApiError.single(BAD_CREDENTIALS, "Admin credentials are required.",
                              headers={"WWW-Authenticate": 'Basic realm="GMS admin", charset="UTF-8"'})


@bp.get("/genesys/1/node")
def ping() -> Response:
    """200 while the node takes traffic, 503 while it is drained (OFFLINE)."""
    return Response(status=200 if node_status().get() == "ONLINE" else 503)


@bp.get("/genesys/1/admin/node/status")
@admin_required
def status() -> Response:
    """This node's status, ONLINE or OFFLINE, with the options version the answering worker serves."""
    in_force = current_app.extensions["options"].in_force
    return Response(node_status().get(), content_type="text/plain;charset=utf-8",
                    headers={"X-Options-Version": str(in_force.version), "X-Options-Digest": in_force.digest[:16]})


@bp.post("/genesys/1/admin/node/changestatus/<any(ONLINE, OFFLINE):new_status>")
@admin_required
def change_status(new_status: str) -> Response:
    """Drain (OFFLINE) or undrain (ONLINE) this node."""
    set_node_status(new_status)
    return Response(new_status, content_type="text/plain;charset=utf-8")


def set_node_status(new_status: str) -> None:
    """Drain or undrain, with an event in the log: who, from where, the old and the new state."""
    status = node_status()
    old = status.get()
    status.set(new_status)
    metrics.NODE_ONLINE.set(1 if new_status == "ONLINE" else 0)
    user = request.authorization.username if request.authorization else None
    log.info("node status %s -> %s by %s from %s", old, new_status, user, request.remote_addr, extra={"fields": {
        "event": "node_status", "old": old, "new": new_status, "user": user, "client": request.remote_addr}})


@bp.get("/metrics")
def metrics_page() -> Response:
    """The Prometheus metrics of every worker."""
    metrics.NODE_ONLINE.set(1 if node_status().get() == "ONLINE" else 0)  # as the status file says now
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)
