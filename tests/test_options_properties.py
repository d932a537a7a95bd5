"""Property-based tests of the options loader: any text is either good options or a list of named problems."""
import re
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from support import examples

from app.options.load import load_options
from app.options.model import OptionsError
from app.options.schema import EMAIL_KEYS

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


@settings(max_examples=examples(300), deadline=None, derandomize=True)
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


BASE = (Path(__file__).parent.parent / "options.ini").read_text(encoding="utf-8").replace(
    'password = ""', 'password = "Sm,tp-S3cret"').replace('username = ""', 'username = "gms"', 1)
BASE_LINES = BASE.splitlines()
UNITS = st.builds(lambda n, space, unit: f"{n}{space}{unit}", st.integers(-5, 2**31), st.sampled_from(["", " "]),
                  st.sampled_from(["", "B", "k", "K", "KB", "kb", "M", "MB", "Mb", "g", "GB", "TB", "KiB", "X"]))
EDIT = st.one_of(
    st.tuples(st.just("delete"), st.integers(0, len(BASE_LINES) - 1)),
    st.tuples(st.just("swap"), st.integers(0, len(BASE_LINES) - 1), st.integers(0, len(BASE_LINES) - 1)),
    st.tuples(st.just("value"), st.integers(0, len(BASE_LINES) - 1), st.one_of(UNITS, VALUES)),
    st.tuples(st.just("bytes"), st.integers(0, len(BASE)), st.binary(min_size=1, max_size=6)),
    st.tuples(st.just("unquote"), st.integers(0, len(BASE_LINES) - 1)),
    st.tuples(st.just("size"), UNITS),
)


def apply(edits: list[tuple]) -> list[str]:
    lines = list(BASE_LINES)
    for edit in edits:
        if edit[0] == "delete" and edit[1] < len(lines):
            del lines[edit[1]]
        elif edit[0] == "swap" and max(edit[1:]) < len(lines):
            a, b = edit[1], edit[2]
            key_a, _, value_a = lines[a].partition("=")
            key_b, _, value_b = lines[b].partition("=")
            lines[a], lines[b] = f"{key_a}={value_b}", f"{key_b}={value_a}"
        elif edit[0] == "value" and edit[1] < len(lines) and "=" in lines[edit[1]]:
            lines[edit[1]] = lines[edit[1]].partition("=")[0] + "= " + edit[2]
        elif edit[0] == "unquote" and edit[1] < len(lines):
            lines[edit[1]] = lines[edit[1]].replace('"', "")
        elif edit[0] == "size":
            lines = [f"max_size = {edit[1]}" if line.startswith("max_size") else line for line in lines]
    return lines


@settings(max_examples=examples(300), deadline=None, derandomize=True)
@given(st.lists(EDIT, max_size=6), st.sampled_from(["utf-8", "latin-1", "utf-16", "utf-8-sig"]))
def test_any_edit_of_a_valid_file_loads_or_lists_its_problems_without_a_secret(edits, encoding):
    raw = "\n".join(apply(edits)).encode(encoding, errors="replace")
    for edit in edits:
        if edit[0] == "bytes":
            raw = raw[: edit[1]] + edit[2] + raw[edit[1]:]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "options.ini"
        path.write_bytes(raw)
        try:
            options = load_options(path)
        except OptionsError as error:
            assert error.problems
            assert all(problem.startswith(str(path)) for problem in error.problems)
            assert "S3cret" not in "\n".join(error.problems)
        else:
            assert options.catch_all.mailbox and options.catch_all.max_size > 0
