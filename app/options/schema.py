"""The layout of options.ini: its configspec, and the checks of the value types that are this service's own."""
from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from email_validator import EmailNotValidError
from validate import ValidateError, Validator

from app.options.model import Rate
from app.rules import CONTROL, mailbox_address

DEFAULT_FILE_TYPES = ("pdf", "doc", "txt", "jpg", "png", "gif", "bmp", "zip")
SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3}  # by the first letter: K and KB alike
SECTIONS = ("email", "smtp", "cors", "security", "admin", "server", "scan", "limits", "spam")
# What each check expects, in words, for problems that say what was expected.
EXPECTED_WORDS = {
    "integer": "a whole number",
    "float": "a number",
    "boolean": "true or false",
    "one_line": "one line of text",
    "mailbox": "an email address",
    "mailbox_patterns": "a list of email addresses or *@domain",
    "size": "a size: a number of bytes, or with B, K/KB, M/MB or G/GB (1024-based)",
    "extensions": "a list of file extensions such as pdf,txt",
    "origins": "a list of origins such as https://www.example.com or https://*.example.com, or *",
    "keys": "a list of keys, each one line",
    "duration": "seconds, or a number with s, m or h",
    "store_url": "empty, or redis://[:password@]host:port/db (or rediss://)",
    "clamd_address": "empty, an absolute path of clamd's Unix socket, or host:port",
    "host_port": "empty, or host:port",
    "rate": "0 (off), or a number of forms per period such as 30/h, 100/10m or 5/90s (s, m, h or d)",
    "networks": "a list of addresses or networks such as 10.0.0.0/8 or 2001:db8::/32",
}

# The keys of [email] as (configobj check, its arguments, default); [email.<service>] may override any.
EMAIL_KEYS = {
    "mailbox": ("mailbox", "", '""'),
    "tenant": ("one_line", "", '""'),
    "max_files": ("integer", "min=0, max=1000, ", "10"),
    "max_size": ("size", "min=1, max=1073741824, ", '"10MB"'),
    "file_types": ("extensions", "", "list({})".format(", ".join(f'"{t}"' for t in DEFAULT_FILE_TYPES))),
    "allowed_mailboxes": ("mailbox_patterns", "", "list()"),
    "check_file_content": ("boolean", "", "True"),
    "details_in_body": ("boolean", "", "False"),
    "from_header": ("option", '"customer", "service", ', '"customer"'),
    "duplicate_window": ("duration", "min=0, max=86400, ", "0"),
}
OTHER_SECTIONS_SPEC = """
[smtp]
host = one_line(min=1, default="127.0.0.1")
port = integer(min=1, max=65535, default=25)
security = option("none", "starttls", "ssl", default="none")
username = one_line(default="")
password = one_line(default="")
timeout = float(min=0.1, max=15, default=10)
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
dedup_store = store_url(default="")
probe_interval = float(min=0, max=3600, default=15)
node_name = one_line(default="")
log_pings = boolean(default=False)
[scan]
clamd = clamd_address(default="")
timeout = float(min=0.1, max=30, default=5)
[limits]
per_client = rate(default="0")
per_sender = rate(default="0")
exempt = networks(default=list())
[spam]
rspamd = host_port(default="")
timeout = float(min=0.1, max=10, default=2)
quarantine_mailbox = mailbox(default="")
"""


def configspec() -> list[str]:
    """The configspec of options.ini; every [email.<service>] key defaults to None, meaning [email]'s."""
    email = [f"{key} = {check}({args}default={default})" for key, (check, args, default) in EMAIL_KEYS.items()]
    service = [f"{key} = {check}({args}default=None)" for key, (check, args, _) in EMAIL_KEYS.items()]
    return ["[email]", *email, "[__many__]", *service, *OTHER_SECTIONS_SPEC.splitlines()]


class Invalid(ValidateError):
    """A value that a check of this service's own refuses; its message says why without showing the value."""


def expected(spec: str) -> str:
    """What a configspec entry such as `integer(min=1, max=65535, default=25)` expects, in words."""
    check, _, args = spec.partition("(")
    if check == "option":
        return "one of " + ", ".join(re.findall(r'"([^"]*)"', args.split("default=")[0]))
    words = EXPECTED_WORDS.get(check, check)
    bounds = dict(re.findall(r"(min|max)=([\d.]+)", args))
    if check in ("integer", "float", "size", "duration") and bounds:
        unit = {"size": " bytes", "duration": " seconds"}.get(check, "")
        words += f" from {bounds.get('min', '0')} to {bounds['max']}{unit}" if "max" in bounds else \
            f" of at least {bounds['min']}{unit}"
    return words


def _as_list(value: str | list[str]) -> list[str]:
    items = value if isinstance(value, list) else value.split(",")
    return [item.strip() for item in items if item.strip()]


def _one_line(value: str | list[str], min: str = "0") -> str:  # noqa: A002 - configobj's keyword
    if not isinstance(value, str):
        raise Invalid("it holds a comma: quote the value")
    if CONTROL.search(value):
        raise Invalid("a control character")
    if len(value) < int(min):
        raise Invalid("an empty value")
    return value


def _mailbox(value: str | list[str]) -> str:
    value = _one_line(value)
    if not value:
        return ""
    try:
        return mailbox_address(value)
    except EmailNotValidError as exc:
        raise Invalid(f"not an email address: {exc}") from None


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
        raise Invalid("not a size")
    size = int(match[1]) * SIZE_UNITS[match[2][:1].upper()]
    if size < int(min) or (max is not None and size > int(max)):
        raise Invalid("out of range")
    return size


DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def _duration(value: str | list[str], min: str = "0", max: str | None = None) -> float:  # noqa: A002
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", _one_line(value), re.IGNORECASE)
    if not match:
        raise Invalid("not a duration")
    seconds = float(match[1]) * DURATION_UNITS[match[2].lower()]
    if seconds < float(min) or (max is not None and seconds > float(max)):
        raise Invalid("out of range")
    return seconds


def _store_url(value: str | list[str]) -> str:
    """A Redis URL with a host, a port and a database number (the password, if any, is never shown)."""
    value = _one_line(value)
    if not value:
        return ""
    try:
        split = urlsplit(value)
        port = split.port
    except ValueError:
        raise Invalid("not a URL") from None
    database = split.path.removeprefix("/")
    if split.scheme not in ("redis", "rediss") or not split.hostname or port is None or not (
            database == "" or database.isdigit()) or split.query or split.fragment:
        raise Invalid("not a redis:// or rediss:// URL with a host and a port")
    return value


def clamd_address(value: str | list[str]) -> str:
    """A clamd address as [scan] clamd takes it: empty, an absolute socket path, or host:port; raises Invalid."""
    value = _one_line(value)
    if value.startswith("/"):
        return value
    return _host_port(value, "neither a socket path nor host:port")


def _host_port(value: str | list[str], why: str = "not host:port") -> str:
    value = _one_line(value)
    if not value:
        return value
    host, colon, port = value.rpartition(":")
    valid_host = re.fullmatch(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]", host)
    if not colon or not valid_host or not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        raise Invalid(why)
    return value


PERIOD_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _rate(value: str | list[str]) -> Rate | None:
    """N/PERIOD (`30/h`, `100/10m`, `5/90s`), or None for 0 (off)."""
    text = _one_line(value).strip()
    if text == "0":
        return None
    match = re.fullmatch(r"(\d{1,7})\s*/\s*(\d{0,6})\s*([smhd])", text, re.IGNORECASE)
    if not match or int(match[1]) == 0 or match[2] == "0":
        raise Invalid("not a rate")
    seconds = int(match[2] or 1) * PERIOD_UNITS[match[3].lower()]
    if seconds > 7 * 86400:
        raise Invalid("a period longer than 7 days")
    return Rate(int(match[1]), seconds, text)


def _networks(value: str | list[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(item, strict=False) for item in _as_list(value))
    except ValueError:
        raise Invalid("an entry that is neither an address nor a network") from None


def _extensions(value: str | list[str]) -> tuple[str, ...]:
    items = [item.lower().lstrip(".") for item in _as_list(value)]
    bad = [item for item in items if not re.fullmatch(r"[a-z0-9]{1,16}", item)]
    if bad or not items:
        raise Invalid("not a list of file extensions" if bad else "an empty list")
    return tuple(items)


def _origins(value: str | list[str]) -> tuple[str, ...]:
    items = _as_list(value)
    bad = [o for o in items if o != "*" and not re.fullmatch(r"https?://(\*\.)?[^/\s*]+", o)]
    if bad:
        raise Invalid(f"{len(bad)} of the entries are not origins")
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
        "duration": _duration,
        "store_url": _store_url,
        "clamd_address": clamd_address,
        "host_port": _host_port,
        "rate": _rate,
        "networks": _networks,
    }
)


def ini_lines(text: str) -> list[str]:
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
