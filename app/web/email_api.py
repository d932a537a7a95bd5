"""The Email API v2 endpoint: read the request, run it through the stages, answer as GMS does."""
from __future__ import annotations

from importlib import resources

from flask import Blueprint, Response, request

from app.access import admit
from app.duplicates import claim, idempotency_key
from app.form import read_form
from app.mail.delivery import deliver
from app.mail.message import compose
from app.quotas import quotas_for
from app.scanning import scan_attachments
from app.spam import apply_verdict, check_spam
from app.submission import check_service_name, validate_submission
from app.web.request_log import note
from app.web.request_options import request_options
from app.web.responses import json_response

bp = Blueprint("email_api", __name__)
OPENAPI = resources.files("app.web").joinpath("openapi.yaml").read_text(encoding="utf-8")


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
    note(service=service_name, resolved_service=service.name)
    # The service's own origin is worked out only for a browser's post (Werkzeug builds it anew every time).
    admit(request.headers, request.host_url if "Origin" in request.headers else "", options)
    check_service_name(service_name)
    key = idempotency_key(request.headers.get("Idempotency-Key"))
    client = request.remote_addr or ""
    with read_form(request.stream, request.headers.get("Content-Type"), request.content_length, service) as form:
        submission = validate_submission(form, service_name, service, options)
        quotas = quotas_for(client, submission.from_address, options.limits)
        with claim(submission, service, options, key, quotas) as claimed:
            note(interaction_id=claimed.interaction_id, fingerprint=claimed.fingerprint[:12])
            if claimed.duplicate:
                note(outcome="duplicate", status_code=0, duplicate_of=claimed.interaction_id)
                return json_response({"statusCode": 0, "interactionId": claimed.interaction_id})
            scan_seconds = scan_attachments(submission.attachments, options.scan)
            if scan_seconds:
                note(scan_ms=round(scan_seconds * 1000, 1))
            email = compose(submission, claimed.interaction_id, service, options.smtp)
            verdict = check_spam(email, client, options.spam)
            quarantined = verdict is not None and apply_verdict(email, verdict, options.spam)
            if verdict is not None:
                note(spam_action=verdict.action, spam_score=verdict.score)
            claimed.announce()
            deliver(email, options.smtp)
    note(outcome="quarantined" if quarantined else "delivered", status_code=0, smtp_reply=250,
         attachments=len(submission.attachments), attachment_bytes=email.attachment_bytes, resend=claimed.resend)
    return json_response({"statusCode": 0, "interactionId": email.interaction_id})
