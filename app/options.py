"""Load, validate and resolve options.ini, the stand-in for Config Server's Options tab."""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from configobj import ConfigObj, ConfigObjError, flatten_errors, get_extra_values
from email_validator import EmailNotValidError, validate_email
from validate import ValidateError, Validator

from app.metrics import GENERATION, RELOADS

DEFAULT_FILE_TYPES = ("pdf", "doc", "txt", "jpg", "png", "gif", "bmp", "zip")
SIZE_UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
log = logging.getLogger(__name__)
SECTIONS = ("email", "smtp", "cors", "security", "admin", "server")

# The keys of [email] as (configobj check, its arguments, default); [email.<service>] may override any.
EMAIL_KEYS = {
    "mailbox": ("mailbox", "", '""'),
    "tenant": ("one_line", "", '""'),
    "max_files": ("integer", "min=0, max=1000, ", "10"),
    "max_size": ("size", "min=1, max=1073741824, ", '"10MB"'),
    "file_types": ("extensions", "", "list({})".format(", ".join(f'"{t}"' for t in DEFAULT_FILE_TYPES))),
    "allowed_mailboxes": ("mailbox_patterns", "", "list()"),
    "check_file_content": ("boolean", "", "True"),
}
OTHER_SECTIONS_SPEC = """
[smtp]
host = one_line(min=1, default="127.0.0.1")
port = integer(min=1, max=65535, default=25)
security = option("none", "starttls", "ssl", default="none")
username = one_line(default="")
password = one_line(default="")
timeout = float(min=0.1, max=600, default=10)
helo_name = one_line(default="")
envelope_from = mailbox(default="")
default_mailbox = mailbox(default="")
ca_file = one_line(default="")
[cors]
allowed_origins = origins(default=list())
[security]
api_keys = keys(default=list())
[admin]
username = one_line(default="")
password = one_line(default="")
[server]
reload_interval = float(min=0, max=3600, default=1)
proxy_hops = integer(min=0, max=10, default=0)
status_file = one_line(min=1, default="node.status")
"""


def _configspec() -> list[str]:
    email = [f"{key} = {check}({args}default={default})" for key, (check, args, default) in EMAIL_KEYS.items()]
    service = [f"{key} = {check}({args}default=None)" for key, (check, args, _) in EMAIL_KEYS.items()]
    return ["[email]", *email, "[__many__]", *service, *OTHER_SECTIONS_SPEC.splitlines()]


class Invalid(ValidateError):
    """A value that a check of this service's own refuses; its message says why."""


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


def _as_list(value: str | list[str]) -> list[str]:
    items = value if isinstance(value, list) else value.split(",")
    return [item.strip() for item in items if item.strip()]


def _one_line(value: str | list[str], min: str = "0") -> str:  # noqa: A002 - configobj's keyword
    if not isinstance(value, str):
        raise Invalid(f"{value!r} (quote a value that holds a comma)")
    if re.search(r"[\x00-\x1f\x7f]", value):
        raise Invalid("a control character")
    if len(value) < int(min):
        raise Invalid("an empty value")
    return value


def mailbox_address(value: str) -> str:
    """A mailbox's address in ASCII form; raises EmailNotValidError. Unlike a customer's, it may be internal."""
    address = validate_email(value, check_deliverability=False, allow_smtputf8=False, globally_deliverable=False)
    return address.ascii_email


def _mailbox(value: str | list[str]) -> str:
    value = _one_line(value)
    if not value:
        return ""
    try:
        return mailbox_address(value)
    except EmailNotValidError as exc:
        raise Invalid(f"{value!r} is not an email address: {exc}") from None


def _mailbox_patterns(value: str | list[str]) -> tuple[str, ...]:
    patterns = []
    for item in _as_list(value):
        domain = item[2:] if item.startswith("*@") else None
        _mailbox(f"x@{domain}" if domain is not None else item)
        patterns.append(item.lower())
    return tuple(patterns)


def _size(value: str | list[str], min: str = "0", max: str | None = None) -> int:  # noqa: A002
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?B?)\s*", _one_line(value), re.IGNORECASE)
    if not match:
        raise Invalid(f"{value!r} is not a size such as 10MB")
    size = int(match[1]) * SIZE_UNITS[match[2].upper()]
    if size < int(min) or (max is not None and size > int(max)):
        raise Invalid(f"{value!r} is outside {min}..{max} bytes")
    return size


def _extensions(value: str | list[str]) -> tuple[str, ...]:
    items = [item.lower().lstrip(".") for item in _as_list(value)]
    bad = [item for item in items if not re.fullmatch(r"[a-z0-9]{1,16}", item)]
    if bad or not items:
        raise Invalid(f"{bad or 'nothing'} is not a list of file extensions")
    return tuple(items)


def _origins(value: str | list[str]) -> tuple[str, ...]:
    items = _as_list(value)
    bad = [o for o in items if o != "*" and not re.fullmatch(r"https?://[^/\s]+", o)]
    if bad:
        raise Invalid(f"{bad} are not origins such as https://www.example.com")
    return tuple(items)


def _keys(value: str | list[str]) -> tuple[str, ...]:
    items = _as_list(value)
    for item in items:
        _one_line(item)
    return tuple(items)


VALIDATOR = Validator(
    {
        "one_line": _one_line,
        "mailbox": _mailbox,
        "mailbox_patterns": _mailbox_patterns,
        "size": _size,
        "extensions": _extensions,
        "origins": _origins,
        "keys": _keys,
    }
)


def _ini_lines(text: str) -> list[str]:
    """Turn INI-style `;` comments, as Config Server exports them, into configobj's `#`."""
    lines = []
    for line in text.splitlines():
        quote = None
        for i, ch in enumerate(line):
            if quote:
                quote = None if ch == quote else quote
            elif ch in "\"'":
                quote = ch
            elif ch == ";" and (i == 0 or line[i - 1].isspace()):
                line = line[:i] + "#" + line[i + 1 :]
                break
        lines.append(line)
    return lines


def _parse(path: Path) -> ConfigObj:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionsError([f"{path}: cannot be read: {exc}"]) from None
    try:
        return ConfigObj(_ini_lines(text), configspec=_configspec(), interpolation=False, raise_errors=False)
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
        GENERATION.set(self.generation)
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
