"""The options of each request: taken once as it arrives, so that a request sees one consistent set, and the
proxy hops it trusts."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import request
from werkzeug.middleware.proxy_fix import ProxyFix

from app.options.model import Options
from app.options.store import OptionsStore

OPTIONS_KEY = "email_api.options"
STARTED = "email_api.started"  # the time.monotonic() a request arrived at, for its log line


class OptionsPerRequest:
    """WSGI middleware: take the options in force once per request, and trust as many proxy hops (Werkzeug's
    ProxyFix) as `[server] proxy_hops` of that set says."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]], store: OptionsStore) -> None:
        self.wsgi_app, self.store = wsgi_app, store
        self.fixers = {hops: ProxyFix(wsgi_app, x_for=hops, x_proto=hops, x_host=hops) for hops in range(1, 11)}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ[STARTED] = time.monotonic()
        options = environ[OPTIONS_KEY] = self.store.current()
        hops = options.server.proxy_hops
        return (self.fixers[hops] if hops else self.wsgi_app)(environ, start_response)


def request_options() -> Options:
    """The options this request is served with, taken once as it arrived."""
    options: Options = request.environ[OPTIONS_KEY]
    return options
