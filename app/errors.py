"""Error types of the request path and the JSON the contract gives each of them."""
from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Problem:
    """One entry of a response's `errors` list."""

    code: int
    message: str
    field: str | None = None
    advice: int | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.advice is not None:
            body["advice"] = self.advice
        if self.field is not None:
            body["field"] = self.field
        return body


@dataclass
class ApiError(Exception):
    """A request the service answers with `statusCode` 2 and a list of problems."""

    problems: list[Problem]
    http_status: int = 400
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__("; ".join(p.message for p in self.problems))

    @classmethod
    def single(cls, code: int, message: str, http_status: int = 400, **extra: Any) -> ApiError:
        return cls([Problem(code, message, **extra)], http_status)

    def body(self) -> dict[str, Any]:
        return {"statusCode": 2, "errors": [p.to_json() for p in self.problems]}


class DeliveryError(Exception):
    """The SMTP server did not accept the message; `reply_code` is its last reply, if any."""

    def __init__(self, message: str, reply_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reply_code = reply_code


class TransientDeliveryError(DeliveryError):
    """Not delivered, and trying again later may help (`statusCode` 1).

    `ambiguous` is set when the end of DATA was sent but no reply came: the relay
    may have accepted the message, so it is logged for an operator to check.
    """

    def __init__(self, message: str, reply_code: int | None = None, *, ambiguous: bool = False) -> None:
        super().__init__(message, reply_code)
        self.ambiguous = ambiguous

    def body(self) -> dict[str, Any]:
        return {"statusCode": 1, "message": self.message}


class PermanentDeliveryError(DeliveryError):
    """Not delivered, and trying again will not help: rendered as the problem it names."""

    def __init__(self, problem: Problem, reply_code: int | None, http_status: int) -> None:
        super().__init__(problem.message, reply_code)
        self.problem = problem
        self.http_status = http_status

    def body(self) -> dict[str, Any]:
        return {"statusCode": 2, "errors": [self.problem.to_json()]}
