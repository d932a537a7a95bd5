"""What runs, and where: the service's version, the git commit its code came from, and the node's name."""
from __future__ import annotations

import functools
import logging
import re
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

from app.options.model import Options, ServerOptions
from app.rules import HOST_NAMES

log = logging.getLogger("app")


def version() -> str:
    """The installed version of this service, as its package metadata says."""
    try:
        return metadata.version("gms-email-api")
    except metadata.PackageNotFoundError:
        return "unknown"


@functools.cache
def commit() -> str:
    """The git commit of the checkout the code runs from (or the working folder's), "unknown" outside one."""
    for folder in (Path(__file__).resolve().parent.parent, Path.cwd()):
        found = _checkout_commit(folder / ".git")
        if found:
            return found
    return "unknown"


def _checkout_commit(git: Path) -> str:
    # Read as git writes them, without running git (the service's user may not own the checkout): HEAD names a
    # commit or a branch, whose commit is in its own file or in packed-refs. A worktree's .git is a file naming
    # its folder.
    try:
        if git.is_file():
            git = (git.parent / git.read_text().removeprefix("gitdir:").strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head if re.fullmatch(r"[0-9a-f]{40}", head) else ""
        ref = head.removeprefix("ref: ")
        common = Path(git / (git / "commondir").read_text().strip()) if (git / "commondir").is_file() else git
        for root in (git, common):
            if (root / ref).is_file():
                return (root / ref).read_text().strip()
        for line in (common / "packed-refs").read_text().splitlines():
            if line.endswith(f" {ref}"):
                return line.split()[0]
    except OSError:
        pass
    return ""


def node_name(server: ServerOptions) -> str:
    """The node's name: `[server] node_name`, else this host's name."""
    return server.node_name or HOST_NAMES[0]


def log_start(options: Options, digest: str) -> None:
    """One line at a process's start: what runs, where, with which options, store and scanner."""
    url = urlsplit(options.server.dedup_store)
    store = f"{url.scheme}://{url.hostname}:{url.port}{url.path}" if url.scheme else "SQLite (state folder)"
    fields = {"event": "start", "version": version(), "commit": commit(), "node": node_name(options.server),
              "options_digest": digest, "store": store, "scanner": options.scan.clamd or "off",
              "spam_check": options.spam.rspamd or "off"}
    log.info("starting version %s (commit %s) on node %s, options %s", fields["version"], fields["commit"][:12],
             fields["node"], digest, extra={"fields": fields})
