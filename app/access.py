"""Who may call the endpoint: CORS for browsers on other origins, and API keys."""
from __future__ import annotations

import hmac

from app.errors import BAD_CREDENTIALS, ApiError
from app.options import Options

PREFLIGHT_MAX_AGE = 600


def cors_headers(origin: str | None, options: Options, *, preflight: bool = False) -> dict[str, str]:
    """The CORS headers for a request from `origin`: none unless the origin is allowed."""
    if not origin or not ("*" in options.allowed_origins or origin in options.allowed_origins):
        return {}
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if preflight:
        headers.update({
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": "content-type, apikey, x-api-key",
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE),
        })
    return headers


def check_api_key(presented: list[str | None], options: Options) -> None:
    """Raise a 401 ApiError unless API keys are off or one presented key equals a configured one."""
    if not options.api_keys:
        return
    for candidate in filter(None, presented):
        # Compare with every key, in constant time, so timing tells nothing about them.
        if any([hmac.compare_digest(candidate.encode(), key.encode()) for key in options.api_keys]):
            return
    raise ApiError.single(BAD_CREDENTIALS, "A valid API key is required in the apikey or x-api-key header.",
                          http_status=401)
