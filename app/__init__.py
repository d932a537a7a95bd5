"""A drop-in replacement for the Email API v2 of Genesys Mobile Services."""
from __future__ import annotations

import os
from pathlib import Path

from flask import Flask

from app.options import OptionsStore


def create_app(options_path: str | Path | None = None) -> Flask:
    """Create and configure an instance of the Flask application; raises OptionsError for a bad file."""
    app = Flask(__name__)
    path = options_path or os.environ.get("OPTIONS_FILE", "options.ini")
    app.extensions["options"] = OptionsStore(path)

    from app import email_api

    app.register_blueprint(email_api.bp)
    return app
