"""Turn a form into a validated submission, or into the full list of what is wrong with it."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from email_validator import EmailNotValidError, validate_email

from app.attachments import Attachment, check_attachments
from app.errors import (
    BAD_USER_DATA_KEY,
    CONTROL_CHARACTER,
    FIELD_TOO_LONG,
    FIRST_NAME_MISSING,
    FROM_ADDRESS_MISSING,
    INVALID_FROM_ADDRESS,
    INVALID_MAILBOX,
    INVALID_SERVICE_NAME,
    LAST_NAME_MISSING,
    SUBJECT_MISSING,
    TEXT_MISSING,
    TOO_MANY_USER_DATA,
    ApiError,
    Problem,
)
from app.form import Form
from app.options.model import Options, ServiceOptions
from app.rules import CONTROL_BUT_TAB, CONTROL_IN_VALUE, ENCODED_WORD_START, mailbox_address, mailbox_allowed

_SPACE = r"(?:\t|[^\S\x00-\x1f\x7f-\x9f\u2028\u2029])"
TRIM = re.compile(rf"^{_SPACE}+|{_SPACE}+$")
SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
USER_DATA_FIELD = re.compile(r"userData\[(.*)\]", re.DOTALL)
MAX_TEXT = 256 * 1024  # characters
MAX_USER_DATA = 100  # pairs
MAX_USER_DATA_KEY, MAX_USER_DATA_VALUE = 256, 4096  # characters
# (field, code when missing, longest value allowed)
ONE_LINE_FIELDS = (
    ("firstName", FIRST_NAME_MISSING, 256),
    ("lastName", LAST_NAME_MISSING, 256),
    ("subject", SUBJECT_MISSING, 998),
)


@dataclass
class Submission:
    """A customer's form that passed every check: what the email will carry."""

    service: str
    first_name: str
    last_name: str
    subject: str
    from_address: str
    text: str
    mailbox: str
    user_data: list[tuple[str, str]] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)


def check_service_name(name: str) -> None:
    """Refuse a serviceName that no [email.<serviceName>] section could have (608)."""
    if not SERVICE_NAME.fullmatch(name):
        raise ApiError.single(INVALID_SERVICE_NAME, "The service name holds characters a service name cannot.")


def trim(value: str) -> str:
    """Strip spaces and tabs at both ends, never a line break: those are refused, not hidden."""
    return TRIM.sub("", value)


def _control_problem(name: str) -> Problem:
    return Problem(CONTROL_CHARACTER, f"{name} holds a line break or another control character.", field=name)


def _one_line_fields(values: dict[str, str], problems: list[Problem]) -> dict[str, str]:
    found = {}
    for name, missing_code, longest in ONE_LINE_FIELDS:
        value = values.get(name, "")
        if CONTROL_BUT_TAB.search(value):
            problems.append(_control_problem(name))
        elif not (value := trim(value)):
            problems.append(Problem(missing_code, f"{name} is missing.", field=name))
        elif len(value) > longest:
            problems.append(Problem(FIELD_TOO_LONG, f"{name} is longer than {longest} characters.", field=name))
        else:
            found[name] = value
    return found


def _from_address(value: str, problems: list[Problem]) -> str:
    if not value.strip():
        problems.append(Problem(FROM_ADDRESS_MISSING, "fromAddress is missing.", field="fromAddress"))
        return ""
    try:
        address = validate_email(trim(value), check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        problems.append(Problem(INVALID_FROM_ADDRESS, f"fromAddress is not a valid email address: {exc}",
                                field="fromAddress"))
        return ""
    if ENCODED_WORD_START in address.normalized:
        problems.append(Problem(INVALID_FROM_ADDRESS, "fromAddress holds '=?', which mail clients would decode as "
                                "an encoded word.", field="fromAddress"))
        return ""
    return address.ascii_email or address.normalized  # IDN domains as punycode


def _mailbox(value: str, service: ServiceOptions, options: Options, problems: list[Problem]) -> str:
    if not value.strip():
        return service.mailbox
    try:
        mailbox = mailbox_address(trim(value))
    except EmailNotValidError as exc:
        problems.append(Problem(INVALID_MAILBOX, f"mailbox is not a valid email address: {exc}", field="mailbox"))
        return ""
    if not mailbox_allowed(mailbox, trim(value), options.configured_mailboxes, service.allowed_mailboxes):
        problems.append(Problem(INVALID_MAILBOX, "mailbox is not one this service may deliver to.", field="mailbox"))
    return mailbox


def _text(value: str, problems: list[Problem]) -> str:
    if "\0" in value:
        problems.append(Problem(CONTROL_CHARACTER, "text holds a NUL character.", field="text"))
    elif not value.strip():
        problems.append(Problem(TEXT_MISSING, "text is missing.", field="text"))
    elif len(value.strip()) > MAX_TEXT:
        problems.append(Problem(FIELD_TOO_LONG, f"text is longer than {MAX_TEXT} characters.", field="text"))
    return value.strip()


def _user_data(fields: list[tuple[str, str]], problems: list[Problem]) -> list[tuple[str, str]]:
    pairs = []
    for name, value in fields:
        if name == "userData":
            if not value.strip():
                continue
            key, _, value = value.partition("=")
        elif match := USER_DATA_FIELD.fullmatch(name):
            key = match[1]
        else:
            continue
        if CONTROL_BUT_TAB.search(key) or CONTROL_IN_VALUE.search(value):
            problems.append(_control_problem("userData"))
        elif not trim(key) or "=" in key:
            problems.append(Problem(BAD_USER_DATA_KEY, "A userData key is empty or holds '='.", field="userData"))
        elif len(trim(key)) > MAX_USER_DATA_KEY or len(trim(value)) > MAX_USER_DATA_VALUE:
            problems.append(Problem(FIELD_TOO_LONG, f"A userData key is longer than {MAX_USER_DATA_KEY} or its value "
                                    f"longer than {MAX_USER_DATA_VALUE} characters.", field="userData"))
        else:
            pairs.append((trim(key), trim(value)))
    if len(pairs) > MAX_USER_DATA:
        problems.append(Problem(TOO_MANY_USER_DATA, f"At most {MAX_USER_DATA} userData pairs may be sent.",
                                field="userData", advice=MAX_USER_DATA))
    return pairs


def validate_submission(form: Form, service_name: str, service: ServiceOptions, options: Options) -> Submission:
    """Check every rule of the contract and return the submission, or raise ApiError with all problems."""
    values: dict[str, str] = {}
    for name, value in form.fields:
        values.setdefault(name, value)
    problems: list[Problem] = []
    one_line = _one_line_fields(values, problems)
    from_address = _from_address(values.get("fromAddress", ""), problems)
    text = _text(values.get("text", ""), problems)
    mailbox = _mailbox(values.get("mailbox", ""), service, options, problems)
    user_data = _user_data(form.fields, problems)
    attachments, file_problems = check_attachments(form.uploads, service)
    problems += file_problems
    if problems:
        raise ApiError(problems)
    return Submission(
        service=service_name,
        first_name=one_line["firstName"],
        last_name=one_line["lastName"],
        subject=one_line["subject"],
        from_address=from_address,
        text=text,
        mailbox=mailbox,
        user_data=user_data,
        attachments=attachments,
    )
