"""A real rspamd (Debian's package) for the tests and the benchmark: in the foreground on a free port, with a local
configuration that makes no network lookups (no DNS lists, SPF/DKIM/DMARC, fuzzy servers, map downloads or Redis
modules), so that a check takes milliseconds and needs no internet. Stopped by PID."""
from __future__ import annotations

import http.client
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.ports import ForegroundServer, free_port, system_program

# Modules that ask the network (DNS lists and DNS look-ups, SPF, DKIM, DMARC, ARC, fuzzy servers, remote maps) or
# Redis; a closed network turns them off, as docs/operating.md ("Spam") says.
NETWORK_MODULES = ("antivirus", "arc", "asn", "aws_s3", "bimi", "clickhouse", "dcc", "dkim", "dkim_signing", "dmarc",
                   "elastic", "emails", "external_services", "fuzzy_check", "greylist", "hfilter", "history_redis",
                   "metadata_exporter", "metric_exporter", "multimap", "mx_check", "neural", "p0f", "phishing",
                   "ratelimit", "rbl", "replies", "reputation", "rspamd_update", "spamassassin", "spf", "surbl",
                   "url_redirector", "whitelist")
# The Settings-ID the service sends (app/spam.py): a web form's email was composed by the service, not sent by the
# customer's mail server, so checks of the sending host say nothing about it.
SETTINGS = """web-form {
  id = "web-form";
  apply {
    # The envelope sender is the service's own address by design (contract section 6), never the customer's; the
    # client is a browser, not a mail server, and the email has no Received: line before the relay adds one.
    symbols_disabled = ["FORGED_SENDER", "FROM_NEQ_ENVFROM", "RDNS_NONE", "RDNS_DNSFAIL", "RCVD_COUNT_ZERO",
                        "ONCE_RECEIVED"];
  }
}
"""
WORKERS_OFF = "enabled = false;\n"
TEST_SUFFIXES = ("com", "net", "org", "example", "test", "invalid", "de", "fr", "uk", "co.uk")


def rspamd_executable() -> str | None:
    """Where Debian's rspamd is, if it is installed."""
    return system_program("rspamd")


class Rspamd(ForegroundServer):
    """rspamd's normal worker on a free port of 127.0.0.1 (`address`), with a configuration of its own."""

    def __init__(self) -> None:
        executable = rspamd_executable()
        if executable is None:
            raise FileNotFoundError("rspamd (Debian's rspamd) is not installed")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.folder = Path(tempfile.mkdtemp(prefix="rspamd-"))
        self.folder.chmod(0o755)  # its workers may run as another user
        local, override = self.folder / "local.d", self.folder / "override.d"
        local.mkdir()
        override.mkdir()
        for module in NETWORK_MODULES:
            (local / f"{module}.conf").write_text("enabled = false;\n")
        (local / "settings.conf").write_text(SETTINGS)
        # No DNS server: a look-up fails at once. The public suffixes of the test domains only: compiling the whole
        # list (9,600 of them) takes rspamd 10 s or more at every start.
        (self.folder / "tlds.dat").write_text("\n".join(TEST_SUFFIXES) + "\n")
        (local / "options.inc").write_text(
            'dns { nameserver = ["127.0.0.1:1"]; timeout = 0.1s; retransmits = 0; }\n'
            f'url_tld = "{self.folder / "tlds.dat"}";\ndisable_hyperscan = true;\n')
        (local / "logging.inc").write_text('type = "console"; level = "warning";\n')
        (override / "worker-normal.inc").write_text(f'bind_socket = "{self.address}";\ncount = 1;\n')
        (override / "worker-controller.inc").write_text(WORKERS_OFF)
        (override / "worker-proxy.inc").write_text(WORKERS_OFF)
        (override / "classifier-bayes.conf").write_text("enabled = false;\n")
        variables = [f"--var={name}={self.folder}" for name in ("LOCAL_CONFDIR", "RUNDIR", "DBDIR", "LOGDIR")]
        as_root = ["-u", "root", "-g", "root", "--insecure"] if os.geteuid() == 0 else []
        self.process = subprocess.Popen([executable, "-f", *as_root, *variables],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError("rspamd did not start: " + self.process.communicate()[1].decode(errors="replace"))
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            connection.request("GET", "/ping")
            return connection.getresponse().read().strip() == b"pong"
        except OSError:
            return False
