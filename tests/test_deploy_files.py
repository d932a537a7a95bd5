"""What the shipped deployment files and their documentation promise together, read from the files themselves."""
import re
import runpy
import subprocess
from datetime import timedelta

from gunicorn.config import Config
from gunicorn.glogging import Logger
from support import ROOT, free_port, system_program

from app.options.model import DELIVERY_TIMEOUTS
from app.options.schema import OTHER_SECTIONS_SPEC


def setting(path: str, pattern: str) -> float:
    return float(re.search(pattern, (ROOT / path).read_text(), re.M)[1])


def test_each_timeout_of_the_ladder_is_above_the_one_before():
    longest_reply = float(re.search(r"^timeout = float\(min=[\d.]+, max=([\d.]+)", OTHER_SECTIONS_SPEC, re.M)[1])
    delivery = DELIVERY_TIMEOUTS * longest_reply
    nginx = setting("deploy/nginx.conf", r"^\s*proxy_read_timeout (\d+)s;")
    graceful = setting("deploy/gunicorn.conf.py", r"^graceful_timeout = (\d+)")
    systemd = setting("deploy/email-api.service", r"^TimeoutStopSec=(\d+)")
    assert delivery < nginx and delivery < graceful < systemd


def test_systemd_does_not_restart_a_start_refused_for_a_broken_options_file():
    unit = (ROOT / "deploy" / "email-api.service").read_text()
    assert re.search(r"^Restart=on-failure$", unit, re.M)
    assert re.search(r"^RestartPreventExitStatus=.*\b3\b", unit, re.M)


def test_the_state_folder_of_the_unit_survives_a_restart():
    """The duplicate check's fingerprints live there: a resend after a restart must still be recognised."""
    unit = (ROOT / "deploy" / "email-api.service").read_text()
    folder = re.search(r"^Environment=EMAIL_API_STATE_DIR=(\S+)$", unit, re.M)[1]
    assert folder == "/var/lib/email-api" and re.search(r"^StateDirectory=email-api$", unit, re.M)
    assert re.search(r"^StateDirectoryMode=0700$", unit, re.M)


def test_the_deployment_steps_make_the_tls_pair_the_site_names_before_nginx_t():
    steps = (ROOT / "docs" / "deployment.md").read_text()
    assert steps.index("make-ssl-cert generate-default-snakeoil") < steps.index("nginx -t")


def test_every_check_command_in_the_docs_names_the_file_it_checks():
    """Without a path, `python -m app check` checks the options.ini of the working folder and says "valid"."""
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for command in re.findall(r"python -m app check[^\n`]*", page.read_text()):
            assert re.match(r"python -m app check (\S+)", command) and not command.startswith(
                "python -m app check)"), (page.name, command)


def test_the_upgrade_steps_name_no_tag_that_does_not_exist():
    tags = set(subprocess.run(["git", "tag"], cwd=ROOT, capture_output=True, text=True).stdout.split())
    named = set(re.findall(r"\bv\d+\.\d+\.\d+\b", (ROOT / "docs" / "operating.md").read_text()))
    assert named <= tags


def test_the_site_offers_real_ip_for_a_load_balancer_and_nginx_accepts_it(tmp_path):
    """Behind a balancer every customer would share one limit_req budget unless nginx takes real_ip."""
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    lines = ("# set_real_ip_from ", "# real_ip_header X-Forwarded-For;", "# real_ip_recursive on;")
    assert all(line in site for line in lines)
    nginx = system_program("nginx")
    if nginx is None:
        return
    for line in lines:
        site = site.replace(line, line[2:])
    site = site.replace("listen 80;", f"listen 127.0.0.1:{free_port()};").replace("listen 443 ssl;", "")
    site = "\n".join(line for line in site.splitlines() if "ssl_" not in line)
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
                                         f"events {{}}\nhttp {{ include {tmp_path}/site.conf; }}\n")
    result = subprocess.run([nginx, "-t", "-q", "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr



def test_the_alert_rules_pass_promtool():
    """deploy/alerts.yml, checked by Prometheus's own tool (Debian's prometheus package)."""
    import pytest

    promtool = system_program("promtool")
    if promtool is None:
        pytest.skip("needs promtool (Debian's prometheus; .ci/run installs it)")
    result = subprocess.run([promtool, "check", "rules", str(ROOT / "deploy" / "alerts.yml")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 12 rules found" in result.stdout


def test_each_alert_fires_at_the_first_failure_and_clears_when_fixed():
    """deploy/alerts.test.yml, run by `promtool test rules`: every alert of deploy/alerts.yml has its cases."""
    import pytest

    promtool = system_program("promtool")
    if promtool is None:
        pytest.skip("needs promtool (Debian's prometheus; .ci/run installs it)")
    result = subprocess.run([promtool, "test", "rules", str(ROOT / "deploy" / "alerts.test.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", (ROOT / "deploy" / "alerts.test.yml").read_text()))
    rules = set(re.findall(r"- alert: (\w+)", (ROOT / "deploy" / "alerts.yml").read_text()))
    assert rules - tested == {"EmailRefusalRateHigh", "EmailNodeOfflineTooLong", "EmailOptionsDrift",
                              "PostfixDeferredQueueGrowing"}  # rates and durations, not a first failure


def test_the_alert_rules_name_only_metrics_the_service_or_the_postfix_exporter_exports():
    from app.metrics import exposition, node_families

    page = exposition(extra=node_families("0", "0", "node", {"relay": {"up": True}}))[0].decode()
    families = set(re.findall(r"^# TYPE (\w+) ", page, re.M))
    exported = families | {f"{name}_total" for name in families}
    used = set(re.findall(r"\b(email_\w+|postfix_\w+)\b", (ROOT / "deploy" / "alerts.yml").read_text()))
    assert {name for name in used if name.startswith("email_")} <= exported


def test_gunicorn_builds_no_access_line_that_the_deploy_config_sends_nowhere(tmp_path, monkeypatch):
    """The service writes its own line per request, so the deploy config gives gunicorn's access log no handler;
    gunicorn would still build every line's fields (6 % of a worker's time on a small form) once logconfig_dict
    is set."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    deploy = runpy.run_path(str(ROOT / "deploy" / "gunicorn.conf.py"))
    config = Config()
    for name in ("logconfig_dict", "accesslog", "logger_class"):
        if name in deploy:
            config.set(name, deploy[name])
    # gunicorn's setup() would apply logconfig_dict to this process's logging: every later test would see it.
    monkeypatch.setattr(Logger, "setup", lambda logger, config: None)
    logger = config.logger_class(config)
    built = []
    monkeypatch.setattr(Logger, "atoms", lambda *arguments: built.append(arguments) or {})
    environ = {"REQUEST_METHOD": "POST", "RAW_URI": "/", "SERVER_PROTOCOL": "HTTP/1.1"}
    logger.access(type("Response", (), {"status": "200 OK"})(), {}, environ, timedelta(milliseconds=3))
    assert built == []
