"""options.ini (contract section 7): validation that lists every problem, and hot reload."""
import pytest

from app.options.load import load_options
from app.options.model import OptionsError


def test_example_of_the_contract_loads(tmp_path):
    path = tmp_path / "options.ini"
    path.write_text(
        "[email]\nmailbox = support@example.com      ; where mail goes\nmax_size = 10MB\n"
        "file_types = pdf,doc,txt,jpg,png,gif,bmp,zip\nallowed_mailboxes = \"\"\n"
        "[email.sales]\nmailbox = sales@example.com\nmax_files = 3\n"
        "[smtp]\npassword = \"50%$off;\"\nhelo_name = \"\"\n"
    )
    options = load_options(path)
    assert options.catch_all.mailbox == "support@example.com"
    assert options.catch_all.max_size == 10 * 1024 * 1024
    assert options.smtp.password == "50%$off;"
    sales = options.service("sales")
    assert (sales.mailbox, sales.max_files, sales.max_size) == ("sales@example.com", 3, 10 * 1024 * 1024)
    assert options.service("anything-else") is options.catch_all


@pytest.mark.parametrize(("text", "size"), (
    ("512", 512), ("2KB", 2048), ("1 MB", 1048576), ("1gb", 1073741824), ("7b", 7),
    ("10M", 10 * 1024**2), ("512K", 512 * 1024), ("1G", 1024**3), ("3 k", 3072), ("2 Mb", 2 * 1024**2),
))
def test_sizes_take_units(tmp_path, text, size):
    path = tmp_path / "options.ini"
    path.write_text(f"[email]\nmailbox = a@example.com\nmax_size = {text}\n")
    assert load_options(path).catch_all.max_size == size


def test_every_problem_is_listed_with_section_and_key(tmp_path):
    path = tmp_path / "options.ini"
    path.write_text(
        "[email]\nmailbox = support@\nmax_size = 10XB\ncolour = blue\n"
        "[email.sales]\nmax_files = -3\n[smtp]\nport = abc\nsecurity = tls\n[bogus]\nx = 1\n"
    )
    with pytest.raises(OptionsError) as caught:
        load_options(path)
    problems = "\n".join(caught.value.problems)
    for expected in ("[email] mailbox", "[email] max_size", "[email] colour: unknown key", "[email.sales] max_files",
                     "[smtp] port", "[smtp] security", "[bogus]: unknown section"):
        assert expected in problems
    assert len(caught.value.problems) == 7
    assert all(problem.startswith(str(path)) for problem in caught.value.problems)


def test_duplicate_keys_are_refused(tmp_path):
    path = tmp_path / "options.ini"
    path.write_text("[email]\nmailbox = a@example.com\nmailbox = b@example.com\n")
    with pytest.raises(OptionsError, match="Duplicate keyword"):
        load_options(path)


def test_a_mailbox_must_resolve(tmp_path):
    path = tmp_path / "options.ini"
    path.write_text("[email]\ntenant = x\n")
    with pytest.raises(OptionsError, match=r"\[email\] mailbox"):
        load_options(path)


def test_edit_is_in_force_for_the_next_request(options_file, submit, smtp_server):
    assert submit(service="sales", files=[(f"{i}.txt", b"x") for i in range(4)]).status_code == 400
    options_file.write(email__sales={"max_files": "5"})
    assert submit(service="sales", files=[(f"{i}.txt", b"x") for i in range(4)]).get_json()["statusCode"] == 0
    assert smtp_server.messages[0].rcpt_tos == ["sales@example.com"]


def test_broken_edit_is_refused_and_the_last_good_options_stay(options_file, app, submit, smtp_server, caplog):
    options_file.write(email__sales={"mailbox": "sales-team@example.com"})
    assert submit(service="sales").get_json()["statusCode"] == 0
    options_file.write(email__sales={"max_files": "many", "mailbox": "nobody@"})
    response = submit(service="sales")
    assert response.get_json()["statusCode"] == 0
    assert smtp_server.messages[-1].rcpt_tos == ["sales-team@example.com"]
    refusal = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(refusal) == 1
    assert "[email.sales] max_files" in refusal[0].getMessage() and "[email.sales] mailbox" in refusal[0].getMessage()
    options_file.write(email__sales={"max_files": "3", "mailbox": "sales@example.com"})
    submit(service="sales")
    assert smtp_server.messages[-1].rcpt_tos == ["sales@example.com"]


def test_deleted_file_keeps_the_last_good_options(options_file, submit, smtp_server):
    options_file.path.unlink()
    assert submit().get_json()["statusCode"] == 0


def test_reload_is_throttled_by_reload_interval(options_file, app, submit, smtp_server):
    options_file.write(server={"reload_interval": "3600"})
    submit()  # picks up the long interval
    options_file.write(email={"max_files": "0"})
    assert submit(files=[("a.txt", b"x")]).get_json()["statusCode"] == 0  # not re-read within the interval


def test_admin_username_without_password_is_refused(tmp_path):
    path = tmp_path / "options.ini"
    path.write_text("[email]\nmailbox = a@example.com\n[admin]\nusername = ops\n")
    with pytest.raises(OptionsError, match=r"\[admin\] password"):
        load_options(path)


@pytest.mark.parametrize("lines", (
    "[smtp]\nusername = gms\npassword = Smtp,S3cret\n",
    "[admin]\nusername = ops\npassword = Adm,S3cret\n",
    "[security]\napi_keys = \"k1, S3cret\x01\"\n",
    "[smtp]\nusername = gms\npassword = \"S3cret\n",
    "[smtp]\nusername = gms\npassword = 'S3cret\" x\n",
))
def test_problems_never_print_a_secret(tmp_path, lines):
    path = tmp_path / "options.ini"
    path.write_text("[email]\nmailbox = a@example.com\n" + lines)
    with pytest.raises(OptionsError) as caught:
        load_options(path)
    assert caught.value.problems
    assert "S3cret" not in "\n".join(caught.value.problems)


@pytest.mark.parametrize(("line", "expected"), (
    ("[smtp]\nport = abc", "a whole number from 1 to 65535"),
    ("[smtp]\nport = 70000", "a whole number from 1 to 65535"),
    ("[smtp]\nsecurity = tls", "one of none, starttls, ssl"),
    ("[smtp]\ntimeout = soon", "a number from 0.1 to 15"),
    ("[email]\ncheck_file_content = maybe", "true or false"),
    ("[email]\nmax_size = lots", "a size"),
))
def test_problems_say_what_was_expected(tmp_path, line, expected):
    path = tmp_path / "options.ini"
    path.write_text("[email]\nmailbox = a@example.com\n" + line.replace("[email]\n", "") + "\n")
    with pytest.raises(OptionsError) as caught:
        load_options(path)
    assert expected in "\n".join(caught.value.problems)


@pytest.mark.parametrize("status_file", ("missing-folder/node.status", "a-file/node.status"))
def test_a_status_file_in_a_folder_that_cannot_be_written_is_refused(tmp_path, status_file):
    (tmp_path / "a-file").write_text("")
    path = tmp_path / "options.ini"
    path.write_text(f"[email]\nmailbox = a@example.com\n[server]\nstatus_file = {tmp_path / status_file}\n")
    with pytest.raises(OptionsError, match=r"\[server\] status_file"):
        load_options(path)
