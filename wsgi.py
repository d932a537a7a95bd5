"""The WSGI entry point: gunicorn serves `wsgi:app`."""
import logging
import sys

from app.store.folder import StateFolderError, use_own_metrics_folder

try:  # before prometheus_client is imported: without PROMETHEUS_MULTIPROC_DIR, /metrics is still the node's
    use_own_metrics_folder()
except StateFolderError:
    pass  # reported by create_app(), which needs the folder too

from app import create_app  # noqa: E402
from app.options.model import OptionsError  # noqa: E402

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
