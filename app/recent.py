"""What the node did lately, for its status page: the outcomes of the last hour by minute, the relay's last
answer, and the newest failures with their reason. Each process keeps its own in memory and writes it to a
small file in the state folder at most once a second; the page merges the files of the node's live processes."""
from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter, deque
from typing import Any

from app.store.folder import StateFolderError, state_folder

HOUR = 3600
FAILURES_KEPT = 20
WRITE_EVERY = 1.0  # seconds
FILE = re.compile(r"recent-(\d+)\.json")


class Recent:
    """This process's recent outcomes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._minutes: dict[int, Counter[str]] = {}
        self._failures: deque[dict[str, Any]] = deque(maxlen=FAILURES_KEPT)
        self._relay: dict[str, Any] | None = None
        self._written = 0.0

    def outcome(self, outcome: str) -> None:
        """Count one request's outcome (delivered, retry, refused, duplicate, infected, ...)."""
        minute = int(time.time() // 60)
        with self._lock:
            self._minutes.setdefault(minute, Counter())[outcome] += 1
        self._write_if_due()

    def relay(self, outcome: str, reply: str) -> None:
        """The relay's answer to this process's last delivery attempt."""
        with self._lock:
            self._relay = {"at": time.time(), "outcome": outcome, "reply": reply}

    def failure(self, kind: str, interaction_id: str, reason: str) -> None:
        """One failed delivery or scan, with its reason (never customer content)."""
        with self._lock:
            self._failures.append({"at": time.time(), "kind": kind, "interaction_id": interaction_id,
                                   "reason": reason})

    def _write_if_due(self) -> None:
        if time.monotonic() - self._written >= WRITE_EVERY:
            self.write()

    def write(self) -> None:
        """Write this process's file now (a full or read-only folder only costs the page its figures)."""
        self._written = time.monotonic()
        oldest = int(time.time() // 60) - HOUR // 60
        with self._lock:
            for minute in [m for m in self._minutes if m < oldest]:
                del self._minutes[minute]
            content = json.dumps({"minutes": {str(m): dict(c) for m, c in self._minutes.items()},
                                  "failures": list(self._failures), "relay": self._relay}).encode()
        try:
            state_folder().write(f"recent-{os.getpid()}.json", content)
        except (OSError, StateFolderError):
            pass


RECENT = Recent()


def node_recent() -> dict[str, Any]:
    """The node's last hour: counts by outcome, the relay's most recent answer, the newest failures first."""
    RECENT.write()
    folder = state_folder()
    counts: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    relay: dict[str, Any] | None = None
    oldest = int(time.time() // 60) - HOUR // 60
    for name in os.listdir(folder.fd):
        match = FILE.fullmatch(name)
        if not match:
            continue
        try:
            os.kill(int(match[1]), 0)
        except ProcessLookupError:  # an ended process: its figures go with it
            try:
                os.unlink(name, dir_fd=folder.fd)
            except OSError:
                pass
            continue
        except OSError:
            pass
        try:
            record = json.loads(folder.read(name) or b"{}")
        except ValueError:
            continue
        for minute, by_outcome in record.get("minutes", {}).items():
            if int(minute) >= oldest:
                counts.update(by_outcome)
        failures += record.get("failures", [])
        if record.get("relay") and (relay is None or record["relay"]["at"] > relay["at"]):
            relay = record["relay"]
    failures.sort(key=lambda failure: failure["at"], reverse=True)
    return {"counts": counts, "relay": relay, "failures": failures[:FAILURES_KEPT]}
