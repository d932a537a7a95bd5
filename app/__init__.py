"""A drop-in replacement for the Email API v2 of Genesys Mobile Services."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from app.logs import configure_logging

if TYPE_CHECKING:
    from app.options_store import OptionsStore

OPTIONS_KEY = "email_api.options"


class OptionsPerRequest:
    """Take the options in force once per request, so that a request sees one consistent set, and trust as many
    proxy hops (Werkzeug's ProxyFix) as `[server] proxy_hops` of that set says."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]], store: OptionsStore) -> None:
        self.wsgi_app, self.store = wsgi_app, store
        self.fixers = {hops: ProxyFix(wsgi_app, x_for=hops, x_proto=hops, x_host=hops) for hops in range(1, 11)}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        options = environ[OPTIONS_KEY] = self.store.current()
        hops = options.proxy_hops
        return (self.fixers[hops] if hops else self.wsgi_app)(environ, start_response)


def create_app(options_path: str | Path | None = None) -> Flask:
    """Create and configure an instance of the Flask application; raises OptionsError for a bad file."""
    from app.options_store import OptionsStore  # here, so that `python -m app check` loads no metrics

    configure_logging()
    app = Flask(__name__)
    # A service named "email" is served at its own URL, never redirected (an HTML 308) to the catch-all's.
    app.url_map.redirect_defaults = False
    store = OptionsStore(options_path or os.environ.get("OPTIONS_FILE", "options.ini"))
    app.extensions["options"] = store
    app.wsgi_app = OptionsPerRequest(app.wsgi_app, store)

    from app import email_api, node

    app.register_blueprint(email_api.bp)
    app.register_blueprint(node.bp)
    return app
