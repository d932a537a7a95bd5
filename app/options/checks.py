"""The checks of the value types that are this service's own (sizes, durations, rates, mailboxes, addresses...),
for configobj's validator; a refused value is an Invalid whose message never shows the value."""
from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from email_validator import EmailNotValidError
from validate import ValidateError, Validator

from app.options.model import Rate
from app.rules import CONTROL, mailbox_address

SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3}  # by the first letter: K and KB alike


class Invalid(ValidateError):
    """A value that a check of this service's own refuses; its message says why without showing the value."""


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


PERIOD_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}  # a quota's period; a duration takes s, m, h or none
DURATION_UNITS = {"": 1, **PERIOD_UNITS}


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


