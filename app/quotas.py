"""Quotas for strangers (contract section 11): how many forms one client address and one sender may put into the
agents' queue in a moving window, counted in the node's store with the form's claim; over one, a 429 (610)."""
from __future__ import annotations

import ipaddress
import logging
import math

from app import metrics
from app.errors import TOO_MANY_REQUESTS, ApiError, Problem
from app.options.model import LimitsOptions
from app.store import OverQuota, Quota

log = logging.getLogger(__name__)
QUOTAS = ("client", "sender")
metrics.start_at_zero(metrics.LIMITED, QUOTAS)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


def client_key(address: str) -> str:
    """What one client is: its address, an IPv6 client's /64 (one customer's line holds a whole /64)."""
    return _key(_address(address), address)


def _key(ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None, address: str) -> str:
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip or address)


def quotas_for(client: str, sender: str, limits: LimitsOptions) -> list[Quota]:
    """The quotas a form from `client` (its address as [server] proxy_hops gives it) and `sender` counts against;
    none for a client of `[limits] exempt`, the service's own back ends."""
    if limits.per_client is None and limits.per_sender is None:
        return []
    ip = _address(client)
    if ip is not None and any(ip in network for network in limits.exempt):
        return []
    found = []
    if limits.per_client is not None:
        found.append(Quota("client", f"client:{_key(ip, client)}", limits.per_client.count,
                           limits.per_client.seconds))
    if limits.per_sender is not None:
        found.append(Quota("sender", f"sender:{sender.lower()}", limits.per_sender.count, limits.per_sender.seconds))
    return found


def refusal(over: OverQuota) -> ApiError:
    """The 429 for a form over a quota, with Retry-After in whole seconds; counted and logged."""
    metrics.labelled(metrics.LIMITED, over.quota.name).inc()
    log.warning("refused a form over the %s quota (%d in %g s)", over.quota.name, over.quota.limit, over.quota.period,
                extra={"fields": {"event": "limited", "quota": over.quota.name}})
    return ApiError([Problem(TOO_MANY_REQUESTS, "Too many messages from here; please try again later.")],
                    headers={"Retry-After": str(max(1, math.ceil(over.retry_after)))}, outcome="limited",
                    log_fields={"quota": over.quota.name})
