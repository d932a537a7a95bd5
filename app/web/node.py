"""The node API for load balancers and operators (ping, drain), and the metrics page."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from flask import Blueprint, Response, current_app, request

from app import metrics
from app.build import commit, node_name, version
from app.probes import read_probes
from app.web.admin import admin_required
from app.web.request_options import request_options

bp = Blueprint("node", __name__)
log = logging.getLogger(__name__)
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
    return NodeStatus(request_options().server.status_file)


@bp.get("/genesys/1/node")
def ping() -> Response:
    """200 while the node takes traffic, 503 while it is drained (OFFLINE)."""
    return Response(status=200 if node_status().get() == "ONLINE" else 503)


@bp.get("/genesys/1/admin/node/status")
@admin_required
def node_status_text() -> Response:
    """This node's status, ONLINE or OFFLINE, with the options version the answering worker serves."""
    in_force = current_app.extensions["options"].in_force
    return Response(node_status().get(), content_type="text/plain;charset=utf-8", headers={
        "X-Options-Version": str(in_force.version), "X-Options-Digest": in_force.digest[:metrics.DIGEST_LENGTH],
        **node_header()})


@bp.post("/genesys/1/admin/node/changestatus/<any(ONLINE, OFFLINE):new_status>")
@admin_required
def change_status(new_status: str) -> Response:
    """Drain (OFFLINE) or undrain (ONLINE) this node."""
    set_node_status(new_status)
    return Response(new_status, content_type="text/plain;charset=utf-8", headers=node_header())


def node_header() -> dict[str, str]:
    """The header that names the node in every admin answer, so that a drain is seen to reach the right one."""
    return {"X-Node-Name": node_name(request_options().server)}


def set_node_status(new_status: str) -> None:
    """Drain or undrain, with an event in the log: who, from where, the old and the new state."""
    current = node_status()
    old = current.get()
    current.set(new_status)
    metrics.NODE_ONLINE.set(1 if new_status == "ONLINE" else 0)
    user = request.authorization.username if request.authorization else None
    node = node_name(request_options().server)
    log.info("node %s status %s -> %s by %s from %s", node, old, new_status, user, request.remote_addr,
             extra={"fields": {"event": "node_status", "node": node, "old": old, "new": new_status, "user": user,
                               "client": request.remote_addr}})


@bp.get("/metrics")
def metrics_page() -> Response:
    """The Prometheus metrics of every worker."""
    metrics.NODE_ONLINE.set(1 if node_status().get() == "ONLINE" else 0)  # as the status file says now
    node = node_name(request_options().server)
    body, content_type = metrics.exposition(extra=metrics.node_families(version(), commit(), node, read_probes()))
    return Response(body, content_type=content_type)
