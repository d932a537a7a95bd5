"""The README's error-code table is the code → HTTP table of app/errors.py: every code, and its HTTP status."""
import re

from support import ROOT

from app import errors


def readme_table() -> dict[int, int]:
    section = (ROOT / "README.md").read_text().split("### Error codes", 1)[1]
    return {int(code): int(status) for code, status in re.findall(r"^\| (\d{3}) \| (\d{3})\b", section, re.M)}


def test_the_readme_lists_every_code_with_the_http_status_the_service_answers():
    codes = {value for name, value in vars(errors).items() if name.isupper() and isinstance(value, int)
             and 100 <= value < 1000}
    answered = {code: errors.HTTP_STATUS.get(code, 400) for code in codes}
    assert readme_table() == answered
