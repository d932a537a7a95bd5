"""The WSGI entry point: gunicorn serves `wsgi:app`."""
import sys

from app import create_app
from app.options import OptionsError

try:
    app = create_app()
except OptionsError as error:
    print("The service cannot start: options.ini has problems:", *error.problems, sep="\n  ", file=sys.stderr)
    sys.exit(1)
