"""The contract's rules on a read form (`validate_submission`) on their own, without Flask: what a valid form
becomes, and that a form breaking several rules gets every problem in one answer."""
from __future__ import annotations

import io

import pytest
from support import GOOD_FORM, PDF, multipart

from app.errors import ApiError
from app.form import Form, read_form
from app.options.load import load_options
from app.submission import validate_submission


@pytest.fixture
def validate(options_file):
    """Validate a form of these parts for a service, as the view does after reading it."""
    options = load_options(options_file.path)
    forms: list[Form] = []

    def run(parts, service_name: str = "support"):
        service = options.service(service_name)
        body, content_type = multipart(parts)
        forms.append(read_form(io.BytesIO(body), content_type, len(body), service))
        return validate_submission(forms[-1], service_name, service, options)

    yield run
    for form in forms:
        form.close()


def test_a_valid_form_becomes_what_the_email_carries(validate):
    submission = validate([*{**GOOD_FORM, "firstName": "  Ana\t", "subject": " Invoice question "}.items(),
                           ("userData", "order=A-17"), ("userData[note]", "a=b"), ("files", ("invoice.pdf", PDF))])
    assert (submission.service, submission.first_name, submission.last_name, submission.subject) == (
        "support", "Ana", "Lee", "Invoice question")
    assert (submission.from_address, submission.mailbox) == ("ana@example.com", "support@example.com")
    assert submission.text == GOOD_FORM["text"]
    assert submission.user_data == [("order", "A-17"), ("note", "a=b")]
    [attachment] = submission.attachments
    assert (attachment.filename, attachment.content_type) == ("invoice.pdf", "application/pdf")


def test_the_first_of_a_repeated_field_counts(validate):
    submission = validate([*GOOD_FORM.items(), ("subject", "Another subject")])
    assert submission.subject == GOOD_FORM["subject"]


def test_a_service_section_sets_the_mailbox(validate):
    assert validate(list(GOOD_FORM.items()), "sales").mailbox == "sales@example.com"


def test_every_broken_rule_is_listed_in_one_error(validate):
    parts = [*{**GOOD_FORM, "firstName": "", "fromAddress": "not-an-address", "subject": "a\r\nBcc: x@y.z",
               "text": ""}.items(), ("userData", "=no key"),
             *[("files", (f"{n}.pdf", PDF)) for n in range(4)]]
    with pytest.raises(ApiError) as raised:
        validate(parts, "sales")  # at most 3 files there
    assert sorted(problem.code for problem in raised.value.problems) == [102, 182, 201, 381, 601, 606]
    assert all(problem.message for problem in raised.value.problems)
