"""The WSGI entry point: gunicorn serves `wsgi:app`."""
import logging
import sys

from app import create_app
from app.options.model import OptionsError
from app.store.folder import StateFolderError

# gunicorn's code for "worker failed to boot": the arbiter stops instead of respawning workers forever.
WORKER_BOOT_ERROR = 3

try:
    app = create_app()
except OptionsError as error:
    logging.getLogger("app.options").critical(
        "the service cannot start: options.ini has problems: %s", "; ".join(error.problems),
        extra={"fields": {"event": "startup_refused", "problems": error.problems}})
    sys.exit(WORKER_BOOT_ERROR)
except StateFolderError as error:
    logging.getLogger("app.options").critical("the service cannot start: %s", error,
                                              extra={"fields": {"event": "startup_refused", "problems": [str(error)]}})
    sys.exit(WORKER_BOOT_ERROR)
