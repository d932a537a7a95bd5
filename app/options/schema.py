"""The layout of options.ini: its configspec, and what each check expects, in words."""
from __future__ import annotations

import re

DEFAULT_FILE_TYPES = ("pdf", "doc", "txt", "jpg", "png", "gif", "bmp", "zip")
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
