"""A drop-in replacement for the Email API v2 of Genesys Mobile Services."""
from __future__ import annotations

import os
from pathlib import Path

from flask import Flask

from app.logs import configure_logging


def create_app(options_path: str | Path | None = None, relay: tuple[str, int] | None = None,
               clamd: str | None = None) -> Flask:
    """Create and configure an instance of the Flask application; raises OptionsError for a bad file."""
    # `relay` (host, port) and `clamd` replace what [smtp] and [scan] name: the local run's --relay and --clamd.
    # Imported here, so that `python -m app check` loads neither metrics nor the request path.
    from app import metrics
    from app.build import log_start
    from app.metrics import DIGEST_LENGTH
    from app.options.store import OptionsStore
    from app.probes import PROBER
    from app.turns import InTurns
    from app.web import cors, email_api, node, request_log, responses, status_page
    from app.web.request_options import OptionsPerRequest

    configure_logging()
    app = Flask(__name__)
    # A service named "email" is served at its own URL, never redirected (an HTML 308) to the catch-all's.
    app.url_map.redirect_defaults = False
    store = OptionsStore(options_path or os.environ.get("OPTIONS_FILE", "options.ini"), relay, clamd)
    app.extensions["options"] = store
    log_start(store.in_force.options, store.in_force.digest[:DIGEST_LENGTH])

    def count_every_service() -> None:  # every series an alert watches exists from the start, at 0
        metrics.start_requests_at_zero(["email", *store.in_force.options.services])

    count_every_service()
    store.subscribe(count_every_service)
    PROBER.start(lambda: store.in_force.options)
    app.wsgi_app = OptionsPerRequest(InTurns(app.wsgi_app), store)  # type: ignore[method-assign]
    request_log.register(app)
    cors.register(app)
    responses.register(app)
    app.register_blueprint(email_api.bp)
    app.register_blueprint(node.bp)
    app.register_blueprint(status_page.bp)
    return app
