"""Read and validate options.ini, the stand-in for Config Server's Options tab, and resolve it per service."""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from configobj import ConfigObj, ConfigObjError, DuplicateError, flatten_errors, get_extra_values
from validate import (
    ValidateError,
    VdtTypeError,
    VdtValueTooBigError,
    VdtValueTooLongError,
    VdtValueTooShortError,
    VdtValueTooSmallError,
)

from app.options.checks import VALIDATOR, Invalid
from app.options.model import (
    AdminOptions,
    CorsOptions,
    LimitsOptions,
    Options,
    OptionsError,
    ScanOptions,
    SecurityOptions,
    ServerOptions,
    ServiceOptions,
    SmtpOptions,
    SpamOptions,
)
from app.options.schema import EMAIL_KEYS, SECTIONS, configspec, expected, ini_lines

MAX_FILE = 1024 * 1024  # bytes an options file may take: ample for any Options tab


def _parse_ini(path: Path, text: str) -> ConfigObj:
    try:
        return ConfigObj(ini_lines(text), configspec=configspec(), interpolation=False, raise_errors=False)
    except ConfigObjError as exc:
        errors = getattr(exc, "errors", []) or [exc]
        raise OptionsError([f"{path}: {_parse_problem(error)}" for error in errors]) from None


def _parse_problem(error: Exception) -> str:
    """A parse error without the line's text, which may hold a secret."""
    if isinstance(error, DuplicateError):
        return str(error)
    line = getattr(error, "line_number", None)
    return (f"line {line}: cannot be read: expected [section], key = value or a comment, with closed quotes "
            "(the line is not shown: it may hold a secret)")


def _spec(config: ConfigObj, sections: list[str], key: str) -> str:
    spec = config.configspec
    for name in sections:
        spec = spec[name] if name in spec else spec["__many__"]
    return spec.get(key, "")


# Why configobj's own checks refused a value, in words that never show the value (it may be a secret).
REASONS = {VdtTypeError: "not valid", VdtValueTooSmallError: "too small", VdtValueTooBigError: "too large",
           VdtValueTooShortError: "too short", VdtValueTooLongError: "too long"}


def _value_problem(config: ConfigObj, sections: list[str], key: str, error: Exception | bool) -> str:
    if not isinstance(error, ValidateError):
        return "missing section"
    why = str(error) if isinstance(error, Invalid) else REASONS.get(type(error), "not one of the allowed values")
    return f"{why}; expected {expected(_spec(config, sections, key))}"


def _check(path: Path, config: ConfigObj) -> list[str]:
    problems = []
    for name in config.sections:
        if name not in SECTIONS and not re.fullmatch(r"email\.[^\s\[\]]+", name):
            problems.append(f"{path}: [{name}]: unknown section")
    for sections, key, error in flatten_errors(config, config.validate(VALIDATOR, preserve_errors=True)):
        problems.append(f"{path}: [{'.'.join(sections)}] {key}: {_value_problem(config, sections, key, error)}")
    for sections, name in get_extra_values(config):
        if sections and (sections[0] in SECTIONS or sections[0].startswith("email.")):
            problems.append(f"{path}: [{'.'.join(sections)}] {name}: unknown key")
    for section in ("smtp", "admin"):
        values = config.get(section, {})
        if values.get("username") and not values.get("password"):
            problems.append(f"{path}: [{section}] password: missing while username is set")
    status_file = config.get("server", {}).get("status_file")
    if isinstance(status_file, str) and status_file:
        folder = Path(status_file).parent
        if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
            problems.append(f"{path}: [server] status_file: its folder {folder} does not exist or cannot be written")
    return problems


def _service(name: str, base: dict, overrides: dict, default_mailbox: str) -> ServiceOptions:
    values = {**base, **{k: v for k, v in overrides.items() if v is not None and k in EMAIL_KEYS}}
    values["mailbox"] = overrides.get("mailbox") or base["mailbox"] or default_mailbox
    return ServiceOptions(name=name, **values)


def read_file(path: str | Path) -> bytes:
    """The bytes of options.ini, or OptionsError when it is not a readable regular file of at most MAX_FILE bytes."""
    path = Path(path)
    try:  # never blocks: a FIFO or a device in its place is refused, not read
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise OptionsError([f"{path}: cannot be read: not a regular file"])
            raw = file.read(MAX_FILE + 1)
    except OSError as exc:
        raise OptionsError([f"{path}: cannot be read: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_FILE:
        raise OptionsError([f"{path}: cannot be read: larger than {MAX_FILE // 1024} KiB"])
    return raw


def load_options(path: str | Path) -> Options:
    """Read and validate options.ini completely, or raise OptionsError listing every problem."""
    return options_from_bytes(read_file(path), path)


def options_from_bytes(raw: bytes, path: str | Path) -> Options:
    """Validate the bytes of an options file named `path`; whatever they hold, only OptionsError is raised."""
    path = Path(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OptionsError([f"{path}: cannot be read: not UTF-8 text (byte {exc.start})"]) from None
    try:
        return _options(path, text)
    except OptionsError:
        raise
    except Exception as exc:  # noqa: BLE001 - no edit may take a node down, whatever the parser meets
        raise OptionsError([f"{path}: cannot be used: {type(exc).__name__}"]) from None


def _options(path: Path, text: str) -> Options:
    config = _parse_ini(path, text)
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
    # The quarantine mailbox is one of the file's mailboxes too (contract section 5).
    quarantine = config["spam"]["quarantine_mailbox"]
    mailboxes = [default_mailbox, quarantine, *(section.get("mailbox") for section in sections)]
    return Options(
        catch_all=catch_all,
        services=services,
        configured_mailboxes=frozenset(m.lower() for m in mailboxes if m),
        smtp=SmtpOptions(**smtp),
        cors=CorsOptions(**config["cors"]),
        security=SecurityOptions(**config["security"]),
        admin=AdminOptions(**config["admin"]),
        server=ServerOptions(**config["server"]),
        scan=ScanOptions(**config["scan"]),
        limits=LimitsOptions(**config["limits"]),
        spam=SpamOptions(**config["spam"]),
    )
