"""Files from strangers (contract section 10): every attachment streamed to ClamAV's daemon with INSTREAM before
anything goes to the relay, in one clamd session per request and within one deadline for all its files."""
# Hand-written: the maintained, permissively licensed client (clamdpy, MIT) opens a connection per file and bounds
# each read only, where a request needs one session and one deadline however slowly clamd answers.
from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from app import metrics
from app.attachments import Attachment, archive_problem
from app.deadlines import DEADLINES
from app.errors import FILE_TYPE_NOT_ALLOWED, ApiError, Problem, RetryLater
from app.options.model import ScanOptions
from app.recent import RECENT
from app.rules import host_and_port
from app.turns import TURNS

log = logging.getLogger(__name__)
INSTREAM_CHUNK = 64 * 1024  # bytes per INSTREAM chunk
MAX_REPLY = 4096  # bytes of one clamd reply
RESULTS = ("clean", "infected", "error")
metrics.start_at_zero(metrics.SCANS, RESULTS)


class ScanFailed(Exception):
    """clamd could not give a verdict: unreachable, too slow, or an error reply (its StreamMaxLength, say)."""


@contextmanager
def _session(address: str, deadline: float) -> Iterator[socket.socket]:
    """A clamd session (IDSESSION … END) on its Unix socket or host:port, cut off at `deadline`."""
    timeout = max(deadline - time.monotonic(), 0.001)
    try:
        if address.startswith("/"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(address)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection(host_and_port(address), timeout=timeout)
    except OSError as exc:
        raise ScanFailed(f"clamd at {address} cannot be reached: {exc.strerror or exc}") from None
    with sock, DEADLINES.cut_off(sock, deadline) as watch:
        try:
            sock.sendall(b"zIDSESSION\0")
            yield sock
            sock.sendall(b"zEND\0")
        except OSError as exc:
            if watch.expired or isinstance(exc, TimeoutError):
                raise ScanFailed(f"clamd at {address} did not answer within the scan timeout") from None
            raise ScanFailed(f"clamd at {address} broke the connection: {exc.strerror or exc}") from None


def ping(address: str, timeout: float) -> None:
    """clamd's PING, answered PONG; raises ScanFailed otherwise (the probes)."""
    with _session(address, time.monotonic() + timeout) as sock:
        sock.sendall(b"zPING\0")
        reply = _reply(sock)
    if reply != "PONG":
        raise ScanFailed(f"clamd at {address} answered {reply[:40]!r} to PING")


def _reply(sock: socket.socket) -> str:
    """One NUL-terminated reply, without its session number ("1: stream: OK" → "stream: OK")."""
    data = b""
    while not data.endswith(b"\0"):
        chunk = sock.recv(MAX_REPLY)
        if not chunk or len(data) > MAX_REPLY:
            raise ConnectionResetError("clamd closed the connection")
        data += chunk
    reply = data[:-1].decode("utf-8", "replace")
    return reply.partition(": ")[2] if ": " in reply else reply


def _scan_one(sock: socket.socket, attachment: Attachment) -> str:
    """The reply for one file, streamed from its spooled bytes in chunks."""
    sock.sendall(b"zINSTREAM\0")
    attachment.stream.seek(0)
    try:
        while block := attachment.stream.read(INSTREAM_CHUNK):
            sock.sendall(struct.pack(">I", len(block)) + block)
        sock.sendall(struct.pack(">I", 0))
    except (BrokenPipeError, ConnectionResetError):  # clamd stopped reading: its reply says why, if it came
        pass
    finally:
        attachment.stream.seek(0)
    return _reply(sock)


def infected(attachments: list[Attachment], address: str, timeout: float) -> list[tuple[int, str]]:
    """The 1-based positions of the attachments clamd reports infected, with the signature's name; ScanFailed when
    clamd cannot be reached, does not answer within `timeout`, or answers an error."""
    found = []
    with _session(address, time.monotonic() + timeout) as sock:
        for position, attachment in enumerate(attachments, 1):
            reply = _scan_one(sock, attachment)
            if reply.endswith(" FOUND"):
                found.append((position, reply.removeprefix("stream: ").removesuffix(" FOUND")))
            elif reply != "stream: OK":
                raise ScanFailed(f"clamd at {address} answered: {reply[:200]}")
    return found


def scan_attachments(attachments: list[Attachment], scan: ScanOptions) -> float:
    """Scan the attachments when `[scan] clamd` is set: refuse infected ones (400, 203), answer statusCode 1 when
    clamd gives no verdict; the seconds it took. A form without attachments never touches clamd."""
    if not attachments or not scan.clamd:
        return 0.0
    _refuse_unscannable(attachments)
    started = time.monotonic()
    try:
        with TURNS.given_away():  # from the connect on: clamd takes milliseconds a file, more when busy
            found = infected(attachments, scan.clamd, scan.timeout)
    except ScanFailed as exc:
        metrics.SCANS.labels("error").inc()
        RECENT.failure("virus scan", "", str(exc))
        log.warning("virus scan failed, nothing delivered: %s", exc, extra={"fields": {
            "event": "scan_failed", "clamd": scan.clamd, "reason": str(exc)}})
        raise RetryLater(outcome="scan_failed", reason=str(exc)) from None
    seconds = time.monotonic() - started
    if not found:
        metrics.SCANS.labels("clean").inc()
        return seconds
    _refuse(attachments, found, "infected", "signatures", "the virus scanner refused {count} of {total} files",
            "was refused by the virus scanner")


def _refuse_unscannable(attachments: list[Attachment]) -> None:
    """Refuse (400, 203) the archives clamd could not see into whole, before clamd is asked: it would pass them as
    clean."""
    found = [(position, why) for position, attachment in enumerate(attachments, 1)
             if (why := archive_problem(attachment.stream))]
    if not found:
        return
    _refuse(attachments, found, "unscannable", "reasons", "refused {count} of {total} files the virus scanner "
            "cannot see into", "cannot be scanned for viruses: {why}")


def _refuse(attachments: list[Attachment], found: list[tuple[int, str]], event: str, details: str, summary: str,
            problem: str) -> NoReturn:
    """Refuse the form (400, 203), each file named in its problem; the WARNING names why (the signature's name,
    never in the answer)."""
    metrics.SCANS.labels("infected").inc()
    log.warning("%s: %s", summary.format(count=len(found), total=len(attachments)),
                ", ".join(f"file {position}: {why}" for position, why in found), extra={"fields": {
                    "event": event, "files": [position for position, _ in found], details: [why for _, why in found]}})
    raise ApiError([Problem(FILE_TYPE_NOT_ALLOWED, f'The file "{attachments[position - 1].filename}" '
                            + problem.format(why=why) + ".", field="files") for position, why in found],
                   outcome="infected")
