"""What operators watch: one JSON log line per request without customer content, and Prometheus metrics."""
import json
import logging
import os
import subprocess
import sys

from support import GOOD_FORM, PDF, ROOT, log_lines, metric, multipart

from app.logs import JsonFormatter
from app.metrics import exposition


def request_lines(caplog):
    return log_lines(caplog, "request")


def test_one_log_line_per_request_without_customer_content(submit, caplog):
    with caplog.at_level(logging.INFO, logger="app"):
        response = submit(service="sales", files=[("invoice.pdf", PDF)], extra=[("userData", "secret=token-123")])
    [line] = request_lines(caplog)
    assert line["interaction_id"] == response.get_json()["interactionId"]
    assert (line["service"], line["outcome"], line["status_code"]) == ("sales", "delivered", 0)
    assert line["http_status"] == 200
    assert line["smtp_reply"] == 250 and line["attachment_bytes"] == len(PDF)
    assert line["client"] == "127.0.0.1" and line["duration_ms"] >= 0 and line["time"]
    logged = caplog.text + json.dumps(line)
    for secret in ("Ana", "Lee", "ana@", "Invoice question", "invoice is wrong", "token-123", "invoice.pdf"):
        assert secret not in logged


def test_log_line_of_a_refused_request_names_its_codes(submit, smtp_server, caplog):
    smtp_server.faults["RCPT"] = "550 no such user"
    with caplog.at_level(logging.INFO, logger="app"):
        submit(firstName="")
        submit()
    invalid, refused = request_lines(caplog)
    assert (invalid["outcome"], invalid["error_codes"], invalid["http_status"]) == ("rejected", [102], 400)
    assert (refused["outcome"], refused["error_codes"], refused["smtp_reply"]) == ("refused", [383], 550)


def test_client_address_comes_from_x_forwarded_for_when_hops_are_trusted(options_file, submit, client, caplog):
    options_file.write(server={"proxy_hops": "1"})
    with caplog.at_level(logging.DEBUG, logger="app"):  # a ping's line is DEBUG
        client.get("/genesys/1/node", headers={"X-Forwarded-For": "203.0.113.7"})
    assert request_lines(caplog)[0]["client"] == "203.0.113.7"


def test_behind_a_balancer_and_nginx_two_hops_give_the_client_and_the_scheme(options_file, client, caplog,
                                                                             smtp_server):
    """proxy_hops = 2: a load balancer ending TLS appends the client, nginx appends the balancer and its scheme."""
    options_file.write(server={"proxy_hops": "2"})
    body, content_type = multipart(list(GOOD_FORM.items()))
    headers = {"Host": "mail-api.example.com", "Origin": "https://mail-api.example.com",
               "X-Forwarded-For": "198.51.100.9, 203.0.113.7, 10.0.0.5", "X-Forwarded-Proto": "https, http"}
    with caplog.at_level(logging.INFO, logger="app"):
        answer = client.post("/genesys/2/email/support", data=body, content_type=content_type, headers=headers)
    assert answer.get_json()["statusCode"] == 0  # its own https origin: same-origin
    assert request_lines(caplog)[0]["client"] == "203.0.113.7"  # not the address the client forged


def test_metrics_count_requests_outcomes_and_bytes(client, submit, options_file):
    def sample(name, **labels):
        return metric(client.get("/metrics").get_data(as_text=True), name, **labels)

    before = (sample("email_requests_total", service="sales", outcome="delivered"),
              sample("email_errors_total", code="102"), sample("email_attachment_bytes_total"),
              sample("email_options_reloads_total", result="ok"))
    submit(service="sales", files=[("invoice.pdf", PDF)])
    submit(firstName="")
    options_file.write(email={"tenant": "Other"})
    submit()
    after = (sample("email_requests_total", service="sales", outcome="delivered"),
             sample("email_errors_total", code="102"), sample("email_attachment_bytes_total"),
             sample("email_options_reloads_total", result="ok"))
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, len(PDF), 1]
    assert sample("email_smtp_round_trip_seconds_count") >= 2


def test_log_lines_escape_unicode_line_breaks():
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "x\u2028y\x85z", None, None)
    line = JsonFormatter().format(record)
    assert line.isascii() and "\n" not in line
    assert json.loads(line)["message"] == "x\u2028y\x85z"


def test_metrics_are_served_while_a_new_worker_is_creating_its_file(tmp_path):
    """A worker's metrics file exists empty for a moment at its start (prometheus_client creates it, then sizes
    it): a scrape at that moment gets every other process's metrics, not an error."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    subprocess.run([sys.executable, "-c", "from app import metrics; metrics.DUPLICATES.labels('support').inc()"],
                   cwd=ROOT, env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}, check=True)
    (folder / "counter_4242.db").write_bytes(b"")  # a starting worker's, not sized yet
    page = exposition(str(folder))[0].decode()
    assert metric(page, "email_duplicates_total", service="support") == 1
