"""Load and validate options.ini, the stand-in for Config Server's Options tab; resolve it per service; and
re-read it live when it changes."""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from configobj import ConfigObj, ConfigObjError, flatten_errors, get_extra_values
from validate import ValidateError

from app.metrics import GENERATION, RELOADS
from app.options_schema import EMAIL_KEYS, SECTIONS, VALIDATOR, configspec, ini_lines

log = logging.getLogger(__name__)


class OptionsError(Exception):
    """options.ini cannot be used; `problems` lists every reason, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ServiceOptions:
    """The [email] options in force for one service, after its own section's overrides."""

    name: str
    mailbox: str
    tenant: str
    max_files: int
    max_size: int
    file_types: tuple[str, ...]
    allowed_mailboxes: tuple[str, ...]
    check_file_content: bool


@dataclass(frozen=True)
class SmtpOptions:
    host: str
    port: int
    security: str
    username: str
    password: str
    timeout: float
    helo_name: str
    envelope_from: str
    ca_file: str


@dataclass(frozen=True)
class Options:
    """One consistent, validated reading of options.ini."""

    catch_all: ServiceOptions
    services: dict[str, ServiceOptions]
    configured_mailboxes: frozenset[str]
    smtp: SmtpOptions
    allowed_origins: tuple[str, ...]
    api_keys: tuple[str, ...]
    admin_username: str
    admin_password: str
    reload_interval: float
    proxy_hops: int
    status_file: str

    def service(self, name: str) -> ServiceOptions:
        """The options of service `name`; unknown names are served by [email]."""
        return self.services.get(name, self.catch_all)

    def mailbox_allowed(self, service: ServiceOptions, mailbox: str) -> bool:
        """Whether a request to `service` may name `mailbox` (the open-relay guard)."""
        wanted = mailbox.lower()
        if wanted in self.configured_mailboxes:
            return True
        domain = wanted.rpartition("@")[2]
        return any(p == wanted or p == f"*@{domain}" for p in service.allowed_mailboxes)


def _parse(path: Path) -> ConfigObj:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionsError([f"{path}: cannot be read: {exc}"]) from None
    try:
        return ConfigObj(ini_lines(text), configspec=configspec(), interpolation=False, raise_errors=False)
    except ConfigObjError as exc:
        errors = getattr(exc, "errors", []) or [exc]
        raise OptionsError([f"{path}: {error}" for error in errors]) from None


def _check(path: Path, config: ConfigObj) -> list[str]:
    problems = []
    for name in config.sections:
        if name not in SECTIONS and not re.fullmatch(r"email\.[^\s\[\]]+", name):
            problems.append(f"{path}: [{name}]: unknown section")
    for sections, key, error in flatten_errors(config, config.validate(VALIDATOR, preserve_errors=True)):
        why = error if isinstance(error, ValidateError) else "missing section"
        problems.append(f"{path}: [{'.'.join(sections)}] {key}: {why}")
    for sections, name in get_extra_values(config):
        if sections and (sections[0] in SECTIONS or sections[0].startswith("email.")):
            problems.append(f"{path}: [{'.'.join(sections)}] {name}: unknown key")
    smtp = config.get("smtp", {})
    if smtp.get("username") and not smtp.get("password"):
        problems.append(f"{path}: [smtp] password: missing while username is set")
    return problems


def _service(name: str, base: dict, overrides: dict, default_mailbox: str) -> ServiceOptions:
    values = {**base, **{k: v for k, v in overrides.items() if v is not None and k in EMAIL_KEYS}}
    values["mailbox"] = overrides.get("mailbox") or base["mailbox"] or default_mailbox
    return ServiceOptions(name=name, **values)


def load_options(path: str | Path) -> Options:
    """Read and validate options.ini completely, or raise OptionsError listing every problem."""
    path = Path(path)
    config = _parse(path)
    problems = _check(path, config)
    if problems:
        raise OptionsError(problems)
    smtp = dict(config["smtp"])
    default_mailbox = smtp.pop("default_mailbox")
    email = dict(config["email"])
    services = {
        name.partition(".")[2]: _service(name.partition(".")[2], email, dict(config[name]), default_mailbox)
        for name in config.sections
        if name.startswith("email.")
    }
    catch_all = _service("email", email, {}, default_mailbox)
    if not catch_all.mailbox:
        raise OptionsError([f"{path}: [email] mailbox: no mailbox; set it or [smtp] default_mailbox"])
    unresolved = [f"{path}: [email.{s.name}] mailbox: no mailbox" for s in services.values() if not s.mailbox]
    if unresolved:
        raise OptionsError(unresolved)
    sections = [config[name] for name in config.sections if name.startswith("email")]
    mailboxes = [default_mailbox, *(section.get("mailbox") for section in sections)]
    return Options(
        catch_all=catch_all,
        services=services,
        configured_mailboxes=frozenset(m.lower() for m in mailboxes if m),
        smtp=SmtpOptions(**smtp),
        allowed_origins=config["cors"]["allowed_origins"],
        api_keys=config["security"]["api_keys"],
        admin_username=config["admin"]["username"],
        admin_password=config["admin"]["password"],
        reload_interval=config["server"]["reload_interval"],
        proxy_hops=config["server"]["proxy_hops"],
        status_file=config["server"]["status_file"],
    )


class OptionsStore:
    """The options in force in this worker, re-read when the file changes (checked by a throttled stat).

    An edit that does not validate is refused and logged; the last good options stay in force.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._signature = self._stat()
        self._options = load_options(self.path)
        self.generation = 1
        self._published_in = 0  # the process that last set the generation gauge
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def _stat(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def current(self) -> Options:
        """The options to serve one request with: one consistent set, never a half-applied edit."""
        if self._published_in != os.getpid():  # a worker forked from a master that loaded the options
            self._published_in = os.getpid()
            GENERATION.set(self.generation)
        if time.monotonic() - self._checked >= self._options.reload_interval:
            with self._lock:
                if time.monotonic() - self._checked >= self._options.reload_interval:
                    self._reload_if_changed()
                    self._checked = time.monotonic()
        return self._options

    def _reload_if_changed(self) -> None:
        signature = self._stat()
        if signature == self._signature or signature is None:
            return
        self._signature = signature
        try:
            options = load_options(self.path)
        except OptionsError as exc:
            RELOADS.labels("refused").inc()
            log.error("options reload refused, the last good options stay in force: %s", "; ".join(exc.problems),
                      extra={"fields": {"event": "options_reload", "result": "refused", "problems": exc.problems}})
            return
        self._options = options
        self.generation += 1
        RELOADS.labels("ok").inc()
        GENERATION.set(self.generation)
        log.info("options reloaded from %s (generation %d)", self.path, self.generation,
                 extra={"fields": {"event": "options_reload", "result": "ok", "generation": self.generation}})
