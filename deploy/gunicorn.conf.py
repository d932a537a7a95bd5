"""gunicorn settings for the Email API: `gunicorn -c deploy/gunicorn.conf.py wsgi:app`.

Timeout ladder: [smtp] timeout (10 s) < gunicorn `timeout` (30 s) < nginx proxy_read_timeout (60 s),
so a slow relay ends as a statusCode 1 answer, never as a killed worker or a proxy error page.
"""
import os
import shutil

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# SMTP calls block: threads keep a worker serving while one request waits for the relay.
worker_class = "gthread"
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
timeout = 30
graceful_timeout = 30
keepalive = 5
accesslog = "-"
errorlog = "-"
capture_output = True

# prometheus-client's multiprocess mode: every worker writes its samples here, /metrics merges them.
metrics_dir = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", "/run/email-api/metrics")


def on_starting(server):
    """Start with an empty metrics directory, as prometheus-client's multiprocess mode requires."""
    shutil.rmtree(metrics_dir, ignore_errors=True)
    os.makedirs(metrics_dir)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
