"""Property-based tests of the options loader: any text is either good options or a list of named problems."""
import re
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from app.options import OptionsError, load_options
from app.options_schema import EMAIL_KEYS

SECTIONS = ["email", "email.sales", "email.x y", "smtp", "cors", "security", "admin", "server", "other", "Email"]
KEYS = [*EMAIL_KEYS, "host", "port", "security", "username", "password", "timeout", "helo_name", "envelope_from",
        "default_mailbox", "ca_file", "allowed_origins", "api_keys", "reload_interval", "proxy_hops", "status_file",
        "colour", "Port"]
VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["10MB", "0", "-1", "1e9", "true", "maybe", "a@example.com", "*@example.org", "a,b", '"a,b"',
                     "'", '"', '""', "%(x)s", "$x", "pdf,exe", "https://x.example", "*", "none", "ssl"]),
    st.integers(min_value=-10**12, max_value=10**12).map(str),
)
LINE = st.one_of(
    st.builds(lambda s: f"[{s}]", st.one_of(st.sampled_from(SECTIONS), st.text(max_size=12))),
    st.builds(lambda k, v: f"{k} = {v}", st.one_of(st.sampled_from(KEYS), st.text(max_size=12)), VALUES),
    st.builds(lambda v: f"; {v}", st.text(max_size=20)),
    st.text(max_size=30),
)
NAMED = re.compile(r"\[[^\]]*\]|line")


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.booleans(), st.lists(LINE, max_size=25))
def test_any_text_loads_or_is_refused_with_named_problems(start_valid, lines):
    if start_valid:  # so that valid files, and edits of valid files, are explored too
        lines = ["[email]", "mailbox = support@example.com", *lines]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "options.ini"
        path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
        try:
            options = load_options(path)
        except OptionsError as error:
            assert error.problems
            for problem in error.problems:
                assert problem.startswith(str(path))
                assert NAMED.search(problem) or "cannot be read" in problem, problem
        else:
            assert options.catch_all.mailbox
            assert options.catch_all.max_size > 0
