"""The header writer (app/mail/headers.py) refuses what could end a header line, whatever its caller checked."""
import pytest

from app.mail.headers import POLICY, HeaderInjection, header


@pytest.mark.parametrize(("name", "text", "address"), (
    ("From", "Ana\r\nBcc: victim@example.org", "ana@example.com"),
    ("From", "Ana\nLee", "ana@example.com"),
    ("From", "Ana\u2028Lee", "ana@example.com"),
    ("From", "Ana", "ana@example.com\r\nBcc: victim@example.org"),
    ("From", "Ana", "ana @example.com"),
    ("Reply-To", "Ana\x00", "ana@example.com"),
    ("Subject", "Hi\x00there", None),
))
def test_a_line_break_or_nul_is_refused_by_the_writer_itself(name, text, address):
    with pytest.raises(HeaderInjection):
        header(name, text, address)


@pytest.mark.parametrize("text", ("line one\r\nBcc: victim@example.org", "a\nb", "a\rb", "a\u2029b"))
def test_an_unstructured_value_with_line_breaks_never_goes_out_raw(text):
    wire = header("X-Genesys-User-Data", text).fold(policy=POLICY)
    assert wire.count("\r\n") == wire.count("\r\n ") + 1  # only folds, and the header's own end
    assert "Bcc:" not in wire
