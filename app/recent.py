"""What the node did lately, for its status page: the outcomes of the last hour by minute, the relay's last answer,
and the newest failures with their reason, merged over every process of the node that ran in the last hour."""
from __future__ import annotations

import atexit
import json
import os
import re
import secrets
import threading
import time
from collections import Counter, deque
from typing import Any

from app.store.folder import StateFolderError, state_folder

HOUR = 3600
FAILURES_KEPT = 20
WRITE_EVERY = 1.0  # seconds: a process's file is at most this far behind its counts
FILE = re.compile(r"recent-(\d+)-([0-9a-f]+)\.json")


class Recent:
    """This process's recent outcomes, written to a file of its own in the state folder within a second of a change.

    The files stay after their process ends (a HUP, a restart, a crash) until the hour they cover has passed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._minutes: dict[int, Counter[str]] = {}
        self._failures: deque[dict[str, Any]] = deque(maxlen=FAILURES_KEPT)
        self._relay: dict[str, Any] | None = None
        self._pid = 0
        self._name = ""
        atexit.register(self.write)

    def _changed_now(self) -> None:
        if self._pid != os.getpid():  # the first change in this process: its file and its writer thread
            with self._lock:
                if self._pid != os.getpid():
                    # A name of its own, so that a later process with the same pid never overwrites this one's hour.
                    self._pid, self._name = os.getpid(), f"recent-{os.getpid()}-{secrets.token_hex(4)}.json"
                    if self._minutes or self._failures:  # what a forked child inherited is its parent's
                        self._minutes, self._failures, self._relay = {}, deque(maxlen=FAILURES_KEPT), None
                    threading.Thread(target=self._run, name="recent-writer", daemon=True).start()
        self._changed.set()

    def outcome(self, outcome: str) -> None:
        """Count one request's outcome (delivered, retry, refused, duplicate, limited, quarantined, ...)."""
        self._changed_now()
        minute = int(time.time() // 60)
        with self._lock:
            self._minutes.setdefault(minute, Counter())[outcome] += 1

    def relay(self, outcome: str, reply: str) -> None:
        """The relay's answer to this process's last delivery attempt."""
        self._changed_now()
        with self._lock:
            self._relay = {"at": time.time(), "outcome": outcome, "reply": reply}

    def failure(self, kind: str, interaction_id: str, reason: str) -> None:
        """One failed delivery, scan or spam check, with its reason (never customer content)."""
        self._changed_now()
        with self._lock:
            self._failures.append({"at": time.time(), "kind": kind, "interaction_id": interaction_id,
                                   "reason": reason})

    def _run(self) -> None:
        while True:
            self._changed.wait()
            self._changed.clear()
            self.write()
            time.sleep(WRITE_EVERY)

    def write(self) -> None:
        """Write this process's file now (a full or read-only folder only costs the page its figures)."""
        if self._pid != os.getpid():
            return
        oldest = int(time.time() // 60) - HOUR // 60
        with self._lock:
            for minute in [m for m in self._minutes if m < oldest]:
                del self._minutes[minute]
            content = json.dumps({"minutes": {str(m): dict(c) for m, c in self._minutes.items()},
                                  "failures": list(self._failures), "relay": self._relay}).encode()
        try:
            state_folder().write(self._name, content)
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
    for name in folder.names():
        if not FILE.fullmatch(name):
            continue
        try:
            record = json.loads(folder.read(name) or b"{}")
        except ValueError:
            continue
        minutes = {int(minute): by_outcome for minute, by_outcome in record.get("minutes", {}).items()}
        recent = [failure for failure in record.get("failures", []) if failure["at"] >= time.time() - HOUR]
        if not any(minute >= oldest for minute in minutes) and not recent:
            folder.remove(name)  # a process whose hour has passed
            continue
        for minute, by_outcome in minutes.items():
            if minute >= oldest:
                counts.update(by_outcome)
        failures += recent
        if record.get("relay") and (relay is None or record["relay"]["at"] > relay["at"]):
            relay = record["relay"]
    failures.sort(key=lambda failure: failure["at"], reverse=True)
    return {"counts": counts, "relay": relay, "failures": failures[:FAILURES_KEPT]}
