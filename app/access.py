"""Who may call the endpoint: CORS for browsers on other origins, the origin check, and API keys."""
from __future__ import annotations

import hmac
import logging
from typing import Protocol
from urllib.parse import urlsplit

from app.errors import BAD_CREDENTIALS, FOREIGN_ORIGIN, ApiError
from app.options.model import Options

log = logging.getLogger(__name__)
PREFLIGHT_MAX_AGE = 600
# Widgets 9.x send ContactCenterId when `ccid` is configured; the others carry the content type, API keys and
# the key of a retried post (contract section 9).
ALLOWED_HEADERS = "content-type, apikey, x-api-key, contactcenterid, idempotency-key"
DEFAULT_PORTS = {"http": 80, "https": 443}


def _parts(origin: str) -> tuple[str, str, int] | None:
    """Scheme, host and port of an origin, or None when it is not one (such as "null")."""
    try:
        split = urlsplit(origin.lower())
        port = split.port or DEFAULT_PORTS.get(split.scheme)
    except ValueError:
        return None
    if not split.hostname or port is None or split.path or split.query or split.username is not None:
        return None
    return split.scheme, split.hostname, port


def _matches(origin: tuple[str, str, int], entry: str) -> bool:
    """Whether an origin matches an allowed_origins entry: exact, or `scheme://*.domain[:port]` for subdomains."""
    wildcard = "://*." in entry
    allowed = _parts(entry.replace("://*.", "://", 1))
    if allowed is None or origin[0] != allowed[0] or origin[2] != allowed[2]:
        return False
    return origin[1].endswith("." + allowed[1]) if wildcard else origin[1] == allowed[1]


def origin_allowed(origin: str, options: Options) -> bool:
    """Whether `[cors] allowed_origins` lets a page from `origin` call the endpoint."""
    if "*" in options.cors.allowed_origins:
        return True
    parts = _parts(origin)
    return parts is not None and any(_matches(parts, entry) for entry in options.cors.allowed_origins)


def same_origin(origin: str, own_url: str) -> bool:
    """Whether `origin` is the service's own (the scheme and host it was reached at)."""
    parts = _parts(origin)
    return parts is not None and parts == _parts(own_url.rstrip("/"))


def cors_headers(origin: str | None, options: Options, *, preflight: bool = False) -> dict[str, str]:
    """The CORS headers for a request from `origin`: none unless the origin is allowed."""
    if not origin or not origin_allowed(origin, options):
        return {}
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if preflight:
        headers.update({
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE),
        })
    return headers


def check_origin(origin: str | None, own_url: str, options: Options | None) -> None:
    """Raise a 403 ApiError for a browser request from a foreign origin: one neither the service's own nor,
    when `options` are given, allowed by them. A request without Origin (a server-side caller) passes."""
    if origin is None or same_origin(origin, own_url) or (options is not None and origin_allowed(origin, options)):
        return
    raise ApiError.single(FOREIGN_ORIGIN, "Requests from this origin are not allowed.")


def _header_bytes(value: str) -> bytes:
    """A header's value as the client sent it (HTTP servers hand it on decoded as Latin-1)."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def _key_bytes(key: str) -> list[bytes]:
    """The bytes a client may send for a configured key: UTF-8 (browsers, curl), or Latin-1 where it can be."""
    forms = [key.encode("utf-8")]
    try:
        forms.append(key.encode("latin-1"))
    except UnicodeEncodeError:
        pass
    return forms


def check_api_key(presented: list[str | None], options: Options) -> None:
    """Raise a 401 ApiError unless API keys are off or one presented key equals a configured one."""
    if not options.security.api_keys:
        return
    for candidate in filter(None, presented):
        sent = _header_bytes(candidate)
        # Compare with every key, as UTF-8 and as Latin-1 bytes, in constant time, so timing tells nothing.
        if any([hmac.compare_digest(sent, form) for key in options.security.api_keys for form in _key_bytes(key)]):
            return
    raise ApiError.single(BAD_CREDENTIALS, "A valid API key is required in the apikey or x-api-key header.")


class Headers(Protocol):
    """What admit() reads of a request's headers (Werkzeug's Headers has it)."""

    def get(self, key: str) -> str | None: ...


def admit(headers: Headers, own_url: str, options: Options) -> None:
    """Let a post in only from an allowed or the service's own origin (or none), with a valid API key if any."""
    origin = headers.get("Origin")
    # A foreign origin is refused before anything is delivered: the browser could not read the answer, and the
    # customer would retry.
    try:
        check_origin(origin, own_url, options)
    except ApiError:
        log.warning("refused a post from the foreign origin %r", origin,
                    extra={"fields": {"event": "foreign_origin", "origin": origin}})
        raise
    check_api_key([headers.get("apikey"), headers.get("x-api-key")], options)
