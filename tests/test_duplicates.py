"""One form, one email (contract section 9): resends, double clicks and Idempotency-Keys, in one process."""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from support import GOOD_FORM, PDF, PNG, codes, log_lines, metric, multipart, post_form

from app.attachments import Attachment
from app.duplicates import fingerprint
from app.metrics import exposition
from app.submission import Submission


@pytest.fixture(autouse=True)
def own_claims(own_state_folder):
    """Each test's claims in a SQLite file of its own, so that no test sees another's forms."""
    return own_state_folder


@pytest.fixture
def window(options_file):
    """The shipped window of 10 minutes, and a relay that takes its time (timeout 5 s)."""
    options_file.write(email={"duplicate_window": "10m"}, smtp={"timeout": "5"})


def interaction_ids(smtp_server) -> list[str]:
    return [message.email["X-Genesys-Interaction-Id"] for message in smtp_server.messages]


def test_two_identical_posts_at_once_are_one_email_with_one_id(window, submit, smtp_server):
    smtp_server.delays["END"] = 0.5  # the double click lands while the first is still being delivered
    with ThreadPoolExecutor(2) as pool:
        answers = [future.result().get_json() for future in [pool.submit(submit) for _ in range(2)]]
    assert [answer["statusCode"] for answer in answers] == [0, 0]
    assert answers[0]["interactionId"] == answers[1]["interactionId"]
    assert interaction_ids(smtp_server) == [answers[0]["interactionId"]]


def test_a_resend_of_a_delivered_form_gets_the_first_id_and_sends_nothing(window, submit, smtp_server, caplog):
    first = submit().get_json()
    before = metric(exposition()[0].decode(), "email_duplicates_total", service="email")
    with caplog.at_level(logging.INFO, logger="app"):
        again = submit()
    assert again.status_code == 200
    assert again.get_json() == {"statusCode": 0, "interactionId": first["interactionId"]}
    assert len(smtp_server.messages) == 1
    [line] = log_lines(caplog, "request")
    assert (line["outcome"], line["duplicate_of"], line["interaction_id"]) == (
        "duplicate", first["interactionId"], first["interactionId"])
    assert log_lines(caplog, "sending") == []
    assert metric(exposition()[0].decode(), "email_duplicates_total", service="email") == before + 1


def test_without_a_window_every_post_is_delivered_as_gms_does(submit, smtp_server):
    answers = [submit().get_json() for _ in range(2)]
    assert len({answer["interactionId"] for answer in answers}) == 2
    assert len(smtp_server.messages) == 2


def test_a_service_section_sets_its_own_window(options_file, submit, smtp_server):
    options_file.write(email__sales={"duplicate_window": "1h"})
    submit(service="sales"), submit(service="sales"), submit(service="support"), submit(service="support")
    assert len(smtp_server.messages) == 3


@pytest.mark.parametrize("change", (
    {"subject": "Another question"}, {"text": "Hello,\nmy invoice is right."}, {"firstName": "Anna"},
    {"fromAddress": "ana@example.org"}, {"mailbox": "sales@example.com"},
))
def test_a_form_that_differs_in_one_field_is_a_new_message(window, submit, smtp_server, change):
    submit(), submit(**change)
    assert len(smtp_server.messages) == 2


@pytest.mark.parametrize(("first", "second"), (
    ([("userData", "order=A-17")], [("userData", "order=A-18")]),
    ([("userData", "a=1"), ("userData", "b=2")], [("userData", "b=2"), ("userData", "a=1")]),
))
def test_userdata_pairs_and_their_order_belong_to_the_form(window, submit, smtp_server, first, second):
    submit(extra=first), submit(extra=second)
    assert len(smtp_server.messages) == 2


def test_an_attachment_with_other_bytes_or_another_name_is_a_new_message(window, submit, smtp_server):
    submit(files=[("invoice.pdf", PDF)])
    submit(files=[("invoice.pdf", PDF + b"%")])
    submit(files=[("bill.pdf", PDF)])
    submit(files=[("invoice.pdf", PDF)])
    assert len(smtp_server.messages) == 3


def _submission(**changes) -> Submission:
    values = dict(service="support", first_name="Ana", last_name="Lee", subject="Hi", from_address="ana@example.com",
                  text="Hello\nthere", mailbox="support@example.com", user_data=[("order", "A-17")],
                  attachments=[Attachment("pixel.png", "image/png", None, len(PNG), "ab" * 32)])
    return Submission(**{**values, **changes})


def test_the_fingerprint_ignores_the_case_of_addresses_and_the_kind_of_line_end():
    same = fingerprint(_submission())
    assert fingerprint(_submission(from_address="Ana@Example.com", mailbox="SUPPORT@example.com")) == same
    assert fingerprint(_submission(text="Hello\r\nthere")) == same
    assert fingerprint(_submission(text="Hello\rthere")) == same
    assert fingerprint(_submission(first_name="ana")) != same
    assert len(same) == 64 and int(same, 16) >= 0


def test_the_fingerprint_names_the_service_of_the_url_not_the_section_in_force():
    # Two unknown service names are both served by [email], yet their emails carry other X-Genesys-Service values.
    assert fingerprint(_submission(service="billing")) != \
        fingerprint(_submission(service="returns"))


def test_the_same_form_to_two_unconfigured_services_is_two_emails(window, submit, smtp_server):
    first = submit(service="billing").get_json()
    second = submit(service="returns").get_json()
    assert first["interactionId"] != second["interactionId"]
    assert [m.email["X-Genesys-Service"] for m in smtp_server.messages] == ["billing", "returns"]


@pytest.mark.parametrize("fault", ("451 4.3.0 try later", "554 5.7.1 refused"))
def test_a_form_that_was_not_delivered_is_delivered_when_it_comes_again(window, submit, smtp_server, fault):
    smtp_server.faults["MAIL"] = fault
    assert submit().get_json()["statusCode"] in (1, 2)
    del smtp_server.faults["MAIL"]
    answer = submit().get_json()
    assert answer["statusCode"] == 0 and interaction_ids(smtp_server) == [answer["interactionId"]]


def test_after_an_ambiguous_end_the_resend_is_delivered_with_the_same_id_and_message_id(
        options_file, submit, smtp_server, caplog):
    options_file.write(email={"duplicate_window": "10m"}, smtp={"timeout": "0.3"})  # silent at END: ambiguous
    smtp_server.faults["END"] = "stall"
    with caplog.at_level(logging.INFO, logger="app"):
        first = submit()
    assert first.get_json()["statusCode"] == 1
    [ambiguous] = [line for line in log_lines(caplog, "request") if line["outcome"] == "ambiguous"]
    del smtp_server.faults["END"]
    options_file.write(smtp={"timeout": "10"})
    with caplog.at_level(logging.INFO, logger="app"):
        again = submit().get_json()
    assert again == {"statusCode": 0, "interactionId": ambiguous["interaction_id"]}
    [message] = smtp_server.messages  # the stalled copy was never recorded by this relay; a real one may hold it
    assert message.email["Message-ID"] == f"<{again['interactionId']}@gms.test>"
    assert [line["resend"] for line in log_lines(caplog, "sending")] == [False, True]
    # And the next copy is a plain duplicate of the delivered one.
    assert submit().get_json() == again and len(smtp_server.messages) == 1


def test_the_log_names_the_interaction_id_and_fingerprint_before_the_message_goes_out(window, submit, caplog):
    with caplog.at_level(logging.INFO, logger="app"):
        answer = submit().get_json()
    sending, request = log_lines(caplog, "sending"), log_lines(caplog, "request")
    assert [line["interaction_id"] for line in sending] == [answer["interactionId"]]
    assert sending[0]["fingerprint"] == request[0]["fingerprint"] and len(sending[0]["fingerprint"]) == 12
    assert caplog.records.index(next(r for r in caplog.records if r.fields.get("event") == "sending")) < \
        caplog.records.index(next(r for r in caplog.records if r.fields.get("event") == "request"))


def test_a_resend_waits_for_a_first_copy_still_in_flight_and_gets_its_id(window, submit, smtp_server):
    smtp_server.delays["END"] = 1.5  # the relay answers the end of DATA after 1.5 s; the customer resent
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(submit)
        assert smtp_server.reached["END"].wait(10)
        resend = pool.submit(submit)
        answers = [first.result().get_json(), resend.result().get_json()]
    assert answers[0] == answers[1] and answers[0]["statusCode"] == 0
    assert interaction_ids(smtp_server) == [answers[0]["interactionId"]]


# Idempotency-Key (draft-ietf-httpapi-idempotency-key-header)

def post_with_key(client, key: str, service: str = "support", **changes):
    return post_form(client, service, headers={"Idempotency-Key": key}, **changes)


def test_an_idempotency_key_makes_a_resend_a_duplicate_even_without_a_window(client, smtp_server):
    first = post_with_key(client, "order-17-attempt").get_json()
    again = post_with_key(client, '"order-17-attempt"')  # the same key as a structured-field string
    assert again.get_json() == first and len(smtp_server.messages) == 1


def test_an_idempotency_key_reused_for_another_form_is_422(client, smtp_server):
    post_with_key(client, "k-1")
    answer = post_with_key(client, "k-1", subject="Something else")
    assert answer.status_code == 422 and codes(answer) == [619] and answer.get_json()["statusCode"] == 2
    assert len(smtp_server.messages) == 1


def test_an_idempotency_key_belongs_to_one_service(client, smtp_server):
    post_with_key(client, "k-2", service="support"), post_with_key(client, "k-2", service="sales")
    assert len(smtp_server.messages) == 2


def test_an_idempotency_key_belongs_to_the_service_of_the_url(client, smtp_server):
    """billing and returns are both served by [email]: still two services, two emails."""
    post_with_key(client, "k-3", service="billing"), post_with_key(client, "k-3", service="returns")
    assert [m.email["X-Genesys-Service"] for m in smtp_server.messages] == ["billing", "returns"]


@pytest.mark.parametrize("key", ("", "  ", "a" * 256, '"unclosed', 'a b', "caf\u00e9", '"tab\there"', '"a"b"'))
def test_a_malformed_idempotency_key_is_400_and_nothing_is_sent(client, smtp_server, key):
    answer = post_with_key(client, key)
    assert answer.status_code == 400 and codes(answer) == [618]
    assert smtp_server.messages == []


def test_the_preflight_allows_the_idempotency_key_header(options_file, client):
    options_file.write(cors={"allowed_origins": "https://www.example.com"})
    answer = client.options("/genesys/2/email/support", headers={
        "Origin": "https://www.example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "idempotency-key"})
    assert "idempotency-key" in answer.headers["Access-Control-Allow-Headers"].split(", ")


def test_the_openapi_description_lists_the_idempotency_key_header(client):
    assert "Idempotency-Key" in client.get("/genesys/2/email/openapi.yaml").get_data(as_text=True)


# The store failing never stops a delivery.

@pytest.mark.parametrize("damage", ("not a database", "a folder in its place"))
def test_an_unusable_sqlite_store_delivers_every_form_with_a_warning(window, own_state_folder, submit, smtp_server,
                                                                    caplog, damage):
    store = own_state_folder / "duplicates.sqlite3"
    if damage == "not a database":
        store.write_bytes(os.urandom(4096))
    else:
        store.mkdir()
    before = metric(exposition()[0].decode(), "email_dedup_store_errors_total")
    with caplog.at_level(logging.INFO, logger="app"):
        answers = [submit().get_json() for _ in range(2)]
    assert [answer["statusCode"] for answer in answers] == [0, 0] and len(smtp_server.messages) == 2
    warnings = log_lines(caplog, "dedup_store_error")
    assert len(warnings) == 2 and all(line["level"] == "WARNING" and line["reason"] for line in warnings)
    assert metric(exposition()[0].decode(), "email_dedup_store_errors_total") == before + 2


def test_the_sqlite_store_is_one_file_in_the_state_folder_shared_by_every_app(window, own_state_folder, options_file,
                                                                             submit, smtp_server):
    from app import create_app

    first = submit().get_json()
    other_process = create_app(options_file.path).test_client()  # a worker started later reads the same file
    body, content_type = multipart(list(GOOD_FORM.items()))
    again = other_process.post("/genesys/2/email/support", data=body, content_type=content_type).get_json()
    assert again == first and len(smtp_server.messages) == 1
    assert (own_state_folder / "duplicates.sqlite3").is_file()
