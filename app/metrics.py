"""Prometheus metrics, correct across gunicorn workers when PROMETHEUS_MULTIPROC_DIR is set."""
from __future__ import annotations

import contextlib
import functools
import glob
import os
import re
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

REQUESTS = Counter("email_requests", "Email API requests by service and outcome", ["service", "outcome"])
# Every outcome of a request's log line, and so of email_requests_total and the status page's last hour.
OUTCOMES = ("delivered", "duplicate", "retry", "ambiguous", "refused", "rejected", "limited", "quarantined", "infected",
            "scan_failed", "error")
ERRORS = Counter("email_errors", "Error codes answered", ["code"])
SMTP_SECONDS = Histogram("email_smtp_round_trip_seconds", "Time from connecting to the relay to its last reply",
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
DELIVERY_FAILURES = Counter("email_delivery_failures", "Deliveries that failed, by SMTP stage and outcome",
                            ["stage", "outcome"])
RELAY_UP = Gauge("email_relay_up", "1 when this node's last delivery attempt reached the relay, 0 when it could not "
                 "connect (0 before the first attempt)", multiprocess_mode="mostrecent")
NODE_ONLINE = Gauge("email_node_online", "1 while the node takes traffic (ONLINE), 0 while it is drained (OFFLINE)",
                    multiprocess_mode="mostrecent")
ATTACHMENT_BYTES = Counter("email_attachment_bytes", "Bytes of attachments delivered")
DUPLICATES = Counter("email_duplicates", "Forms answered with an earlier delivery's interactionId, not sent again",
                     ["service"])
DEDUP_STORE_ERRORS = Counter("email_dedup_store_errors", "Failures of the duplicate store (the form was delivered "
                             "without the duplicate check)")
SCANS = Counter("email_scans", "Virus scans of a request's attachments, by result", ["result"])
LIMITED = Counter("email_limited", "Forms refused over a quota (429), by quota", ["quota"])
SPAM_CHECKS = Counter("email_spam_checks", "rspamd's verdicts on the emails, by action (error: no verdict)", ["action"])
# Digests of options texts are shown by their first 12 hex digits everywhere: metrics, headers, the page, the log.
DIGEST_LENGTH = 12
# 0 while a process serves older options than the file on disk, whose edit was refused: a restart would fail.
FILE_VALID = Gauge("email_options_file_valid", "1 while options.ini on disk is the file in force, 0 while an edit "
                   "of it is refused (the newest good options are served; a restart would fail)",
                   multiprocess_mode="livemin")
RELOADS = Counter("email_options_reloads", "Reloads of options.ini by result", ["result"])
# One sample per live process (label pid in multiprocess mode), so that a worker serving older options shows.
OPTIONS_VERSION = Gauge("email_options_version", "Version of the options in force in this process (node-wide numbers)",
                        multiprocess_mode="liveall")
# 1 for the digest of the options text that some live process serves: two nodes (or two workers) whose digests
# differ run different options.
OPTIONS_INFO = Gauge("email_options_info", "1 for the options in force, by the first 12 hex digits of the SHA-256 "
                     "of their text", ["digest"], multiprocess_mode="livemax")


def start_at_zero(metric: Any, values: tuple[str, ...]) -> None:
    """Create `metric`'s series at 0 for each label value, so that an alert on its increase fires at the first."""
    for value in values:
        labelled(metric, value)


def start_requests_at_zero(services: list[str]) -> None:
    """email_requests_total at 0 for each service section and outcome."""
    for service in services:
        for outcome in OUTCOMES:
            labelled(REQUESTS, service, outcome)


@functools.lru_cache(maxsize=4096)
def labelled(metric: Any, *values: str) -> Any:
    """The child of `metric` for these label values, looked up once (label values here come from a small set)."""
    return metric.labels(*values)


class _SizedFilesCollector(multiprocess.MultiProcessCollector):
    """prometheus_client's multiprocess collector without the files still empty: a starting worker creates its
    file and sizes it a moment later, and the library fails on a file read in between."""

    def __init__(self, registry: CollectorRegistry, path: str) -> None:
        self.folder = path
        super().__init__(registry, path=path)

    def collect(self):  # untyped, as the library's
        files = []
        for name in glob.glob(os.path.join(self.folder, "*.db")):
            # The gauges of live processes only: a dead worker's count of them is gone with it, whether or not
            # gunicorn's child_exit hook told prometheus_client (without the deploy config, nothing does).
            live = re.fullmatch(r"gauge_live\w+_(\d+)\.db", os.path.basename(name))
            if live and not _running(int(live[1])):
                continue
            with contextlib.suppress(OSError):  # a dead process's file removed meanwhile
                if os.path.getsize(name) > 0:
                    files.append(name)
        return self.merge(files, accumulate=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass
    return True


class _Samples:
    """A collector of metric families made for one scrape (the node's build, its latest probes)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        """The families."""
        return self.families


def exposition(folder: str | None = None, extra: list[Metric] | None = None) -> tuple[bytes, str]:
    """The metrics page and its content type, merged over all workers in multiprocess mode (the files of
    `folder`, by default PROMETHEUS_MULTIPROC_DIR's), with the `extra` families."""
    folder = folder or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    page = generate_latest(REGISTRY)
    if folder:
        registry = CollectorRegistry()
        _SizedFilesCollector(registry, folder)
        page = generate_latest(registry)
    if extra:
        registry = CollectorRegistry()
        registry.register(_Samples(extra))
        page += generate_latest(registry)
    return page, CONTENT_TYPE_LATEST


def node_families(version: str, commit: str, node: str, probes: dict[str, dict[str, Any]]) -> list[Metric]:
    """email_build_info and email_dependency_up, as the node is now."""
    build = GaugeMetricFamily("email_build_info", "1, with the version, git commit and node name of what runs",
                              labels=["version", "commit", "node"])
    build.add_metric([version, commit, node], 1)
    up = GaugeMetricFamily("email_dependency_up", "1 when the node's last probe of a dependency in use reached it, "
                           "0 when not ([server] probe_interval)", labels=["dependency"])
    for name, result in probes.items():
        up.add_metric([name], 1 if result.get("up") else 0)
    return [build, up]


def options_versions() -> dict[str, float]:
    """The options version each live process serves, by pid (this process alone outside multiprocess mode)."""
    versions = {}
    for line in exposition()[0].decode().splitlines():
        match = re.fullmatch(r'email_options_version(?:\{pid="(\d+)"\})? (\S+)', line)
        if match:
            versions[match[1] or str(os.getpid())] = float(match[2])
    return versions
