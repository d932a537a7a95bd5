"""The node's status page for operators, GET /genesys/1/admin/: the node at a glance, with a drain/undrain button
that is CSRF-safe (same origin and a token of the page)."""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import time
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from flask import Blueprint, Response, current_app, redirect, render_template, request, url_for

from app.build import node_name
from app.errors import FOREIGN_ORIGIN, ApiError
from app.metrics import DIGEST_LENGTH, OUTCOMES, options_versions
from app.options.model import Options
from app.probes import read_probes
from app.recent import node_recent
from app.web.admin import admin_required
from app.web.node import node_status, set_node_status
from app.web.request_options import request_options
from app.web.responses import json_response, page_headers

bp = Blueprint("status_page", __name__, template_folder="templates")
SECRET = "••••"
TOKEN_LIFETIME = 3600  # seconds a page's drain button stays valid


def _token_key(options: Options) -> bytes:
    # Shared by every worker without any state: derived from the admin password, which only operators know.
    return hashlib.sha256(b"email-api status page\0" + options.admin.password.encode()).digest()


def page_token(options: Options, issued: int | None = None) -> str:
    """A token for one page's button: when it was issued, and a MAC of that time."""
    issued = int(time.time()) if issued is None else issued
    return f"{issued}.{hmac.new(_token_key(options), str(issued).encode(), 'sha256').hexdigest()}"


def _token_valid(options: Options, token: str) -> bool:
    issued, _, _ = token.partition(".")
    if not issued.isdigit() or not 0 <= time.time() - int(issued) <= TOKEN_LIFETIME:
        return False
    return hmac.compare_digest(token.encode(), page_token(options, int(issued)).encode())


def _shown(key: str, value: Any) -> str:
    """A value as the page shows it: secrets as ••••, lists joined, a Redis URL without its password."""
    if key in ("password", "api_keys") and value:
        return SECRET if key == "password" else f"{SECRET} ({len(value)} keys)"
    if key == "dedup_store" and value:
        split = urlsplit(value)
        if split.password:
            value = urlunsplit(split._replace(netloc=f":{SECRET}@{split.hostname}:{split.port}"))
    if isinstance(value, tuple):
        return ", ".join(map(str, value)) or '""'
    if value is None:  # a quota that is off
        return "0"
    return str(value) if value != "" else '""'


def sections(options: Options) -> list[tuple[str, list[tuple[str, str]]]]:
    """Every key of the options in force, per section, as the page shows them."""
    services = [("email", options.catch_all), *((f"email.{name}", s) for name, s in options.services.items())]
    others = [(name, getattr(options, name)) for name in ("smtp", "cors", "security", "admin", "server", "scan")]
    return [(name, [(field.name, _shown(field.name, getattr(section, field.name)))
                    for field in dataclasses.fields(section) if field.name != "name"])
            for name, section in [*services, *others]]


@bp.after_request
def strict(response: Response) -> Response:
    """The page runs no script, loads nothing from elsewhere, posts only to itself and is never framed."""
    return page_headers(response, "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                  "frame-ancestors 'none'; base-uri 'none'")


@bp.get("/genesys/1/admin/")
@admin_required
def status_page() -> Response:
    """The node at a glance: HTML, or the same facts as JSON for `Accept: application/json`."""
    options = request_options()
    store = current_app.extensions["options"]
    in_force = store.in_force
    recent = node_recent()
    facts = {"node": node_name(options.server), "status": node_status().get(),
             "options_file_valid": store.file_valid, "options_problems": store.file_problems,
             "options": {"version": in_force.version, "digest": in_force.digest[:DIGEST_LENGTH]},
             "dependencies": read_probes(), "last_hour": {outcome: recent["counts"][outcome] for outcome in OUTCOMES},
             "failures": recent["failures"], "relay": recent["relay"]}
    if request.accept_mimetypes.best_match(["text/html", "application/json"]) == "application/json":
        return json_response(facts)
    versions = options_versions()
    return Response(render_template(
        "admin/status.html", token=page_token(options), sections=sections(options), versions=versions,
        agree=len(set(versions.values()) | {in_force.version}) == 1, recent=recent, outcomes=OUTCOMES,
        file_problems=facts["options_problems"], node=facts["node"], status=facts["status"],
        dependencies=facts["dependencies"], digest=facts["options"]["digest"], version=in_force.version,
        when=lambda at: datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S"), pid=os.getpid()),
        content_type="text/html;charset=utf-8")


@bp.post("/genesys/1/admin/")
@admin_required
def change_from_page() -> Response:
    """The page's drain or undrain button: only with the token of a page this node served."""
    new_status = request.form.get("status", "")
    if new_status not in ("ONLINE", "OFFLINE") or not _token_valid(request_options(), request.form.get("token", "")):
        raise ApiError.single(FOREIGN_ORIGIN, "The status page's form is stale or did not come from this node: "
                              "reload the page.")
    set_node_status(new_status)
    return redirect(url_for("status_page.status_page"), code=303)  # type: ignore[return-value]
