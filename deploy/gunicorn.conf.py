"""gunicorn settings for the Email API: `gunicorn -c deploy/gunicorn.conf.py wsgi:app`.

Timeout ladder: one delivery takes at most [smtp] timeout × 3 (30 s by default, 45 s at most) < nginx
proxy_read_timeout (60 s), so a slow relay ends as a statusCode 1 answer, never as a proxy error page.
gthread workers keep beating while a request waits, so gunicorn's `timeout` never cuts a delivery short.
"""
import os
import re
from pathlib import Path

from gunicorn.glogging import Logger

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# SMTP calls block: threads keep a worker serving while one request waits for the relay.
worker_class = "gthread"
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
timeout = 60
# The app, and so options.ini, is loaded once in the master: an invalid file stops the start, and a worker
# started later (after a HUP or a crash) inherits the options in force even if the file is broken just then.
# Code changes therefore need a restart, not a HUP.
preload_app = True
graceful_timeout = 60
keepalive = 5
# No access log: the service writes one JSON line per request itself (with its outcome), and gunicorn's line in
# another format would follow each one in the same stream.
accesslog = None
errorlog = "-"
capture_output = True
# gunicorn's own lines (start, workers booting and exiting, errors) as JSON too, like the service's: one stream of
# one format for the journal and any log shipper. The service's own loggers propagate to the root's handler.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "app.logs.JsonFormatter"}},
    "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "root": {"level": "INFO", "handlers": ["json"]},
    "loggers": {"gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
                "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False}},
}


class ServiceLogger(Logger):
    """gunicorn's logger without its access line, which logconfig_dict above sends nowhere: gunicorn would still
    build every line's fields once logconfig_dict is set (6 % of a worker's time on a small form)."""

    def access(self, resp, req, environ, request_time):
        pass


logger_class = ServiceLogger

# gunicorn 25.1+ opens a control socket for gunicornc under $HOME, which the service user may not have.
control_socket_disable = True

# prometheus-client's multiprocess mode: every process writes its samples here, /metrics merges them.
# This file is also read by `gunicorn --check-config` and on every HUP: it only makes sure the folder exists.
metrics_dir = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", "/run/email-api/metrics")
os.makedirs(metrics_dir, exist_ok=True)


def on_starting(server):
    """Only a master that really starts forgets the samples of processes of an earlier run."""
    for path in Path(metrics_dir).glob("*.db"):
        pid = re.search(r"_(\d+)\.db$", path.name)
        if not pid or int(pid[1]) != os.getpid():
            path.unlink(missing_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
