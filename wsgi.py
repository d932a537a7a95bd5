"""The WSGI entry point: gunicorn serves `wsgi:app`."""
import sys

from app import create_app
from app.options import OptionsError

# gunicorn's code for "worker failed to boot": the arbiter stops instead of respawning workers forever.
WORKER_BOOT_ERROR = 3

try:
    app = create_app()
except OptionsError as error:
    print("The service cannot start: options.ini has problems:", *error.problems, sep="\n  ", file=sys.stderr)
    sys.exit(WORKER_BOOT_ERROR)
