"""The node's SQLite store under load, without HTTP: a claim with its two quota counts and its settle for every form,
from processes of threads as gunicorn's workers make them.

`python -m bench.store` — for each layout (processes × threads): claims a second, the CPU time a claim costs in
every process (request threads and settlers together) and the store's files at the end, which must stay a few
megabytes however many claims went through.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

from app.store.base import Quota
from app.store.sqlite import SqliteStore

LAYOUTS = ((1, 1), (1, 8), (2, 8))  # processes, threads: one thread alone, one worker, the deploy config's two


def claim_for(store: SqliteStore, seconds: float, threads: int, tag: str) -> dict[str, float]:
    """Claim, count and settle distinct forms from `threads` threads for `seconds`; this process's figures."""
    claims = [0] * threads
    stop = time.monotonic() + seconds

    def run(thread: int) -> None:
        while time.monotonic() < stop:
            number = claims[thread] = claims[thread] + 1
            key = f"form:{tag}-{thread}-{number}"
            quotas = [Quota("client", f"client:{key}", 30, 3600), Quota("sender", f"sender:{key}", 10, 3600)]
            store.add(key, "pending", 600, quotas)
            store.settle(key, "pending", "delivered", 600)

    workers = [threading.Thread(target=run, args=(thread,)) for thread in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    store._settler.flush()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"claims": sum(claims), "cpu": usage.ru_utime + usage.ru_stime, "switches": usage.ru_nvcsw + usage.ru_nivcsw}


def measure(processes: int, threads: int, seconds: float) -> dict[str, float]:
    """One layout on a new store file: every process's figures added up, and the files' size at the end."""
    with tempfile.TemporaryDirectory(prefix="email-api-store-") as name:
        folder = Path(name)
        children = []
        for number in range(processes):
            reader, writer = os.pipe()
            pid = os.fork()
            if pid == 0:  # a worker: a store of its own on the shared file, as after gunicorn's fork
                os.close(reader)
                figures = claim_for(SqliteStore(folder / "duplicates.sqlite3"), seconds, threads, f"{number}")
                os.write(writer, json.dumps(figures).encode())
                os._exit(0)
            os.close(writer)
            children.append((pid, reader))
        total = {"claims": 0.0, "cpu": 0.0, "switches": 0.0}
        for pid, reader in children:
            with os.fdopen(reader) as pipe:
                for key, value in json.loads(pipe.read()).items():
                    total[key] += value
            os.waitpid(pid, 0)
        total["bytes"] = sum(file.stat().st_size for file in folder.glob("duplicates.sqlite3*"))
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3, help="length of each layout's run")
    args = parser.parse_args(argv)
    print("| processes × threads | claims/s | CPU µs a claim | context switches a claim | files at the end |")
    print("|---|---|---|---|---|")
    for processes, threads in LAYOUTS:
        figures = measure(processes, threads, args.seconds)
        claims = figures["claims"]
        print(f"| {processes} × {threads} | {claims / args.seconds:.0f} | {figures['cpu'] / claims * 1e6:.0f} | "
              f"{figures['switches'] / claims:.1f} | {figures['bytes'] / 2**20:.1f} MB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
