"""The options of options.ini as values: one frozen dataclass per section, and the whole reading of the file."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, fields
from typing import Any

DELIVERY_TIMEOUTS = 3  # one delivery takes at most this many times [smtp] timeout (contract section 4)


class OptionsError(Exception):
    """options.ini cannot be used; `problems` lists every reason, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Rate:
    """`count` forms in any `seconds` (a moving window); `text` as the file wrote it."""

    count: int
    seconds: float
    text: str

    def __str__(self) -> str:
        return self.text


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
    details_in_body: bool
    from_header: str  # customer | service (contract section 6)
    duplicate_window: float  # seconds; 0: no duplicate check unless an Idempotency-Key asks


@dataclass(frozen=True)
class SmtpOptions:
    """The [smtp] options: the relay and how to reach it."""

    host: str
    port: int
    security: str
    username: str
    password: str
    timeout: float
    helo_name: str
    envelope_from: str
    ca_file: str

    @property
    def delivery_bound(self) -> float:
        """The seconds one delivery may take at most."""
        return DELIVERY_TIMEOUTS * self.timeout


@dataclass(frozen=True)
class CorsOptions:
    """The [cors] options: the origins whose pages may post from a browser."""

    allowed_origins: tuple[str, ...]


@dataclass(frozen=True)
class SecurityOptions:
    """The [security] options: the API keys a post needs, when there are any."""

    api_keys: tuple[str, ...]


@dataclass(frozen=True)
class AdminOptions:
    """The [admin] options: the credentials of the admin API ("" turns it off)."""

    username: str
    password: str


@dataclass(frozen=True)
class ServerOptions:
    """The [server] options: how this node runs."""

    reload_interval: float
    proxy_hops: int
    status_file: str
    dedup_store: str  # "" (SQLite in the state folder) or a redis:// URL that may hold a password
    probe_interval: float  # seconds between probes of the dependencies; 0: none
    node_name: str  # "": this host's name
    log_pings: bool  # the load balancer's pings and the scrapes of /metrics logged at INFO, like every request


@dataclass(frozen=True)
class ScanOptions:
    """The [scan] options: where clamd listens ("" for no scanning) and the seconds a request's scans may take."""

    clamd: str
    timeout: float


@dataclass(frozen=True)
class LimitsOptions:
    """The [limits] options: quotas per client address and per sender (None: off), and who has none."""

    per_client: Rate | None
    per_sender: Rate | None
    exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


@dataclass(frozen=True)
class SpamOptions:
    """The [spam] options: rspamd's normal worker ("" for no check), its timeout, and the quarantine mailbox."""

    rspamd: str
    timeout: float
    quarantine_mailbox: str


def changed_keys(old: Options, new: Options) -> list[str]:
    """The `section.key` names whose values differ between two readings of the file (names only, never values)."""
    names = []
    old_sections, new_sections = _sections(old), _sections(new)
    for section in sorted(old_sections.keys() | new_sections.keys()):
        before, after = old_sections.get(section), new_sections.get(section)
        for field in fields(after if after is not None else before):  # type: ignore[arg-type]
            if getattr(before, field.name, None) != getattr(after, field.name, None):
                names.append(f"{section}.{field.name}")
    return names


def _sections(options: Options) -> dict[str, Any]:
    return {"email": options.catch_all, **{f"email.{name}": s for name, s in options.services.items()},
            **{name: getattr(options, name) for name in ("smtp", "cors", "security", "admin", "server", "scan",
                                                          "limits", "spam")}}


@dataclass(frozen=True)
class Options:
    """One consistent, validated reading of options.ini."""

    catch_all: ServiceOptions
    services: dict[str, ServiceOptions]
    configured_mailboxes: frozenset[str]
    smtp: SmtpOptions
    cors: CorsOptions
    security: SecurityOptions
    admin: AdminOptions
    server: ServerOptions
    scan: ScanOptions
    limits: LimitsOptions
    spam: SpamOptions

    def service(self, name: str) -> ServiceOptions:
        """The options of service `name`; unknown names are served by [email]."""
        return self.services.get(name, self.catch_all)
