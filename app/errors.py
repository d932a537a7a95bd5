"""The one error type of the request path, its codes, and the HTTP status each code is answered with."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# GMS codes (contract section 4).
FIRST_NAME_MISSING = 102
LAST_NAME_MISSING = 103
SUBJECT_MISSING = 104
FROM_ADDRESS_MISSING = 181
TEXT_MISSING = 182
TOO_MANY_FILES = 201
ATTACHMENTS_TOO_LARGE = 202
FILE_TYPE_NOT_ALLOWED = 203
INVALID_FROM_ADDRESS = 381
INVALID_MAILBOX = 383

# The service's own codes, listed in the README; none reuses a GMS number.
CONTROL_CHARACTER = 601
FIELD_TOO_LONG = 602
FORM_TOO_LARGE = 603
MALFORMED_BODY = 604
UNSUPPORTED_CONTENT_TYPE = 605
BAD_USER_DATA_KEY = 606
BAD_FILE_NAME = 607
INVALID_SERVICE_NAME = 608
BAD_CREDENTIALS = 609
TOO_MANY_REQUESTS = 610
NOT_FOUND = 611
METHOD_NOT_ALLOWED = 612
DELIVERY_REFUSED = 613
INTERNAL_ERROR = 614
TOO_MANY_USER_DATA = 616
FOREIGN_ORIGIN = 617
BAD_IDEMPOTENCY_KEY = 618
IDEMPOTENCY_KEY_REUSED = 619

# The HTTP status of an answer whose (first) error has this code; every other code is 400. The README's
# error-code table is this table.
HTTP_STATUS = {
    UNSUPPORTED_CONTENT_TYPE: 415,
    BAD_CREDENTIALS: 401,
    TOO_MANY_REQUESTS: 429,
    NOT_FOUND: 404,
    METHOD_NOT_ALLOWED: 405,
    DELIVERY_REFUSED: 200,
    INTERNAL_ERROR: 500,
    FOREIGN_ORIGIN: 403,
    IDEMPOTENCY_KEY_REUSED: 422,
}
RETRY_LATER = "The message could not be delivered now; please try again later."


@dataclass(frozen=True)
class Problem:
    """One entry of a response's `errors` list."""

    code: int
    message: str
    field: str | None = None
    advice: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry as the contract writes it."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.advice is not None:
            body["advice"] = self.advice
        if self.field is not None:
            body["field"] = self.field
        return body


def attachments_too_large(max_size: int) -> Problem:
    """The one 202 problem: for the request's Content-Length or body, the attachments, or the relay's SIZE and 552."""
    return Problem(ATTACHMENTS_TOO_LARGE, f"The attachments may take at most {max_size} bytes.", field="files",
                   advice=max_size)


class ApiError(Exception):
    """A request the service does not answer with statusCode 0: statusCode 2 with its problems (or, in RetryLater,
    statusCode 1 with a message). `outcome` names it in the log line, `log_fields` add to that line."""

    status_code = 2
    outcome = "rejected"

    def __init__(self, problems: list[Problem], *, headers: dict[str, str] | None = None,
                 outcome: str | None = None, log_fields: dict[str, Any] | None = None) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems
        self.headers = headers or {}
        self.log_fields = log_fields or {}
        if outcome is not None:
            self.outcome = outcome

    @classmethod
    def single(cls, code: int, message: str, *, headers: dict[str, str] | None = None, **extra: Any) -> ApiError:
        """An error with one problem."""
        return cls([Problem(code, message, **extra)], headers=headers)

    @property
    def http_status(self) -> int:
        """The answer's HTTP status, from the code → HTTP table."""
        return HTTP_STATUS.get(self.problems[0].code, 400) if self.problems else 200

    def body(self) -> dict[str, Any]:
        """The JSON body of the answer."""
        return {"statusCode": self.status_code, "errors": [p.to_json() for p in self.problems]}


class PermanentDeliveryError(ApiError):
    """Not delivered, and trying again will not help: the relay refused the message or the session. `stage` is the
    SMTP stage (connect, greeting, EHLO, ..., MAIL, RCPT, DATA, END), `reply_code` and `reason` the relay's reply."""

    outcome = "refused"

    def __init__(self, problems: list[Problem], *, reply_code: int | None = None, stage: str | None = None,
                 reason: str | None = None) -> None:
        super().__init__(problems)
        self.reply_code, self.stage, self.reason = reply_code, stage, reason


class RetryLater(ApiError):
    """Not delivered, and trying again later may help (statusCode 1, HTTP 200): the relay or the virus scanner
    could not be used now. `reason` says why, for the log."""

    status_code = 1

    def __init__(self, *, outcome: str = "retry", reason: str | None = None) -> None:
        super().__init__([], outcome=outcome)
        self.message = RETRY_LATER
        self.reason = reason

    def body(self) -> dict[str, Any]:
        """The JSON body: statusCode 1 and a message, no errors."""
        return {"statusCode": self.status_code, "message": self.message}


class TransientDeliveryError(RetryLater):
    """The relay did not take the message, and trying again later may help; `ambiguous` once the end of DATA was
    sent but no reply came (the relay may hold it)."""

    def __init__(self, reply_code: int | None = None, *, ambiguous: bool = False, stage: str | None = None,
                 reason: str | None = None) -> None:
        super().__init__(outcome="ambiguous" if ambiguous else "retry", reason=reason)
        self.reply_code, self.stage, self.ambiguous = reply_code, stage, ambiguous


DeliveryError = PermanentDeliveryError | TransientDeliveryError
